"""Small LightningModules that more than one test file trains."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class VAEModule(pl.LightningModule):
    """A VAE-shaped module: self.vae.encoder / self.vae.decoder, fed batch[0]."""

    def __init__(self):
        super().__init__()
        self.vae = nn.Module()
        self.vae.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.vae.decoder = nn.Conv2d(4, 3, 3, padding=1)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return nn.functional.mse_loss(self.vae.decoder(self.vae.encoder(x)), x)

    def validation_step(self, batch, batch_idx):
        self.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_net(third_scale: float) -> nn.Sequential:
    """Linear -> ReLU -> Linear (the third layer, ``net.2``) -> ReLU -> Linear.

    The first layer is the identity, so for inputs in [0.5, 1.5] the third layer's outputs are
    ``sum_j x_j * third_scale`` over 8 inputs: >= 4 * third_scale.
    """
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(8))
        net[0].bias.zero_()
        net[2].weight.fill_(third_scale)
        net[2].bias.zero_()
        net[4].weight.fill_(1e-3)
        net[4].bias.zero_()
    return net


class OverflowModule(pl.LightningModule):
    """``make_net(third_scale)`` fed ``batch[0]``; the output dtypes of its training steps are kept."""

    def __init__(self, third_scale: float, lr: float = 1e-3):
        super().__init__()
        self.net = make_net(third_scale)
        self.lr = lr
        self.out_dtypes: list[torch.dtype] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        y = self(batch[0])
        self.out_dtypes.append(y.dtype)
        return y.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
