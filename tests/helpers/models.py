"""Small LightningModules that more than one test file trains."""

from __future__ import annotations

from typing import Callable

import lightning.pytorch as pl
import torch
from torch import nn


class ConvAutoEncoder(pl.LightningModule):
    """A conv encoder (3 -> ``latent_channels``) and decoder trained to reconstruct ``batch[key]`` (MSE, SGD
    at ``lr``): VAE-shaped as ``self.vae.encoder`` / ``self.vae.decoder`` (taps ``vae.encoder:input`` ...), or
    with ``nested=False`` as ``self.encoder`` / ``self.decoder``. No validation step."""

    def __init__(self, latent_channels: int = 4, key: int | str = 0, nested: bool = True, lr: float = 0.01):
        super().__init__()
        encoder, decoder = nn.Conv2d(3, latent_channels, 3, padding=1), nn.Conv2d(latent_channels, 3, 3, padding=1)
        if nested:
            self.vae = nn.Module()
            self.vae.encoder, self.vae.decoder = encoder, decoder
        else:
            self.encoder, self.decoder = encoder, decoder
        self.key, self.nested, self.lr = key, nested, lr

    def training_step(self, batch, batch_idx):
        x = batch[self.key]
        ae = self.vae if self.nested else self
        return nn.functional.mse_loss(ae.decoder(ae.encoder(x)), x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class VAEModule(ConvAutoEncoder):
    """The VAE-shaped ``ConvAutoEncoder`` (``self.vae.encoder`` / ``self.vae.decoder``, fed ``batch[0]``) whose
    validation step runs the same forward."""

    def __init__(self, lr: float = 0.01):
        super().__init__(lr=lr)

    def validation_step(self, batch, batch_idx):
        self.training_step(batch, batch_idx)


class ConvNet(pl.LightningModule):
    """One 3x3 conv, ``self.net`` (3 -> 3 channels), trained to restore ``batch[key]``: L1 to ``batch[target]``
    (default: the input itself), SGD at ``lr`` (default 0: the weights stay). Validation runs the forward."""

    def __init__(self, key: int | str = 0, target: int | str | None = None, lr: float = 0.0):
        super().__init__()
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        self.key, self.target, self.lr = key, target, lr

    def training_step(self, batch, batch_idx):
        x = batch[self.key]
        return nn.functional.l1_loss(self.net(x), x if self.target is None else batch[self.target])

    def validation_step(self, batch, batch_idx):
        self.net(batch[self.key])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LibraryModules(pl.LightningModule):
    """Real library modules (a diffusers VAE, a transformers vision model, timm / torchvision backbones) fed
    the batch image the way published training code feeds each: ``vae.encode(x).latent_dist.mean``,
    ``image_encoder(pixel_values=x).last_hidden_state``, any other module called on the tensor. ``key`` picks
    the image in the batch (``None``: the batch is the image), ``prep(name, x)`` what each module gets
    (default: the image as it comes). The loss sums the mean outputs; learning rate 0, so the weights stay."""

    def __init__(self, mods: dict[str, nn.Module], key: int | str | None = "image",
                 prep: Callable[[str, torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.names = list(mods)
        for k, m in mods.items():
            setattr(self, k, m)
        self.key, self.prep = key, prep

    def training_step(self, batch, batch_idx):
        x = batch if self.key is None else batch[self.key]
        loss = torch.zeros(())
        for k in self.names:
            m = getattr(self, k)
            y = self.prep(k, x) if self.prep is not None else x
            if k == "vae":
                out = m.encode(y).latent_dist.mean
            elif k == "image_encoder":
                out = m(pixel_values=y).last_hidden_state
            else:
                out = m(y)
            loss = loss + out.float().mean()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class LatentDenoiser(pl.LightningModule):
    """A denoiser, ``self.unet`` (a 4-channel conv), fed the latents ``batch[key]``, multiplied by ``scale`` first
    when given (the VAE scaling factor, where the training code applies it); learning rate 0. ``seen`` keeps the
    latents of every training step, in order."""

    def __init__(self, key: int | str = 0, scale: float | None = None):
        super().__init__()
        self.unet = nn.Conv2d(4, 4, 3, padding=1)
        self.key, self.scale = key, scale
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        z = batch[self.key] if self.scale is None else batch[self.key] * self.scale
        self.seen.append(z.detach().clone())
        return (self.unet(z) - z).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


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


class EncodeBypassAE(nn.Module):
    """An autoencoder whose ``encode()`` calls its submodules directly, so its ``forward`` never runs while it encodes
    (BFL Flux's ``AutoEncoder.encode``, sd-scripts' ``SDVAE.encode`` do)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.quant_conv = nn.Conv2d(4, 4, 1)
        self.decoder = nn.Conv2d(4, 3, 3, padding=1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def forward(self, x):
        return self.decoder(self.encode(x))
