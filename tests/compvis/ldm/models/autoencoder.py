"""Tiny copy of latent-diffusion's ``ldm/models/autoencoder.py`` (AutoencoderKL, VQModel): same
attribute names, same ``get_input`` / ``encode`` / ``decode`` / ``log_images`` code paths."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    def __init__(self, *, ch=8, in_channels=3, z_channels=2, double_z=True, **ignore_kwargs):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.norm_out = nn.GroupNorm(4, ch)
        self.conv_out = nn.Conv2d(ch, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        h = self.down(F.silu(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch=8, out_ch=3, z_channels=2, **ignore_kwargs):
        super().__init__()
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1)
        self.up = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm_out = nn.GroupNorm(4, ch)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest")
        h = self.up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussianDistribution:
    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self):
        return self.mean + self.std * torch.randn(self.mean.shape).to(device=self.parameters.device)

    def kl(self):
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def mode(self):
        return self.mean


class AutoencoderKL(pl.LightningModule):
    def __init__(self, ddconfig=None, embed_dim=2, image_key="image", learning_rate=1e-3, kl_weight=1e-6, monitor=None):
        super().__init__()
        ddconfig = ddconfig or {"ch": 8, "z_channels": 2, "double_z": True}
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        assert ddconfig["double_z"]
        self.quant_conv = torch.nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        self.learning_rate = learning_rate
        self.kl_weight = kl_weight
        if monitor is not None:
            self.monitor = monitor

    def encode(self, x):
        h = self.encoder(x)
        moments = self.quant_conv(h)
        posterior = DiagonalGaussianDistribution(moments)
        return posterior

    def decode(self, z):
        z = self.post_quant_conv(z)
        dec = self.decoder(z)
        return dec

    def forward(self, input, sample_posterior=True):
        posterior = self.encode(input)
        if sample_posterior:
            z = posterior.sample()
        else:
            z = posterior.mode()
        dec = self.decode(z)
        return dec, posterior

    def get_input(self, batch, k):
        x = batch[k]
        if len(x.shape) == 3:
            x = x[..., None]
        x = x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()
        return x

    def training_step(self, batch, batch_idx):
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous()).mean()
        kl_loss = posterior.kl().mean()
        aeloss = rec_loss + self.kl_weight * kl_loss
        self.log("aeloss", aeloss, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return aeloss

    def validation_step(self, batch, batch_idx):
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous()).mean()
        self.log("val/rec_loss", rec_loss)
        return rec_loss

    def configure_optimizers(self):
        lr = self.learning_rate
        params = list(self.encoder.parameters()) + list(self.decoder.parameters()) + \
            list(self.quant_conv.parameters()) + list(self.post_quant_conv.parameters())
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))

    @torch.no_grad()
    def log_images(self, batch, only_inputs=False, **kwargs):
        log = dict()
        x = self.get_input(batch, self.image_key)
        x = x.to(self.device)
        if not only_inputs:
            xrec, posterior = self(x)
            log["samples"] = self.decode(torch.randn_like(posterior.sample()))
            log["reconstructions"] = xrec
        log["inputs"] = x
        return log


class VQModel(pl.LightningModule):
    """latent-diffusion's VQModel: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder."""

    def __init__(self, ddconfig=None, n_embed=16, embed_dim=2, image_key="image"):
        super().__init__()
        ddconfig = ddconfig or {"ch": 8, "z_channels": 2, "double_z": False}
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = nn.Embedding(n_embed, embed_dim)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
