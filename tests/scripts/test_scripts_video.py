"""A video LoRA trainer: kohya-ss/musubi-tuner's HunyuanVideo training (hv_train_network.py, latents cached by
cache_latents.py), reproduced with tiny random-init models whose classes carry musubi-tuner's names and module
(``musubi_tuner.hunyuan_model.autoencoder_kl_causal_3d.AutoencoderKLCausal3D``, a diffusers-style ``ModelMixin`` /
``ConfigMixin`` with ``scaling_factor`` 0.476986 and 16 latent channels, ``src/musubi_tuner/hunyuan_model/vae.py``),
written from their public structure in a module created here: video clips ``(N, C, F, H, W)`` normalised with
``contents / 127.5 - 1.0``, ``latents = vae.encode(contents).latent_dist.sample() * vae.config.scaling_factor``, a
frozen VAE beside the trained transformer, the flow-matching loss. The README's lines:
``rangewatch.watch(vae=vae, transformer=transformer)``, ``watch.batch``, ``watch.tensor("latents", latents)``,
``watch.step()``.

- correct: no warning, losses identical to the unwatched run, the latents judged against the VAE's own config;
- clips in [0, 1] (``contents / 255``): a mismatch at ``vae.encoder:input`` at step 0;
- the scaling factor left out: a ``latent_scale`` finding at ``latents:input`` at step 0.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

import rangewatch
from helpers.scripts_models import calibrate_latents
from helpers.script_runs import problems, trains_identically

from helpers.photos import photo_batch

SIZE = 16
FRAMES = 3
SCALE = 0.476986


def _module(name: str) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    sys.modules[name] = mod
    return mod


def _make_classes():
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    mod = _module("musubi_tuner.hunyuan_model.autoencoder_kl_causal_3d")
    if hasattr(mod, "AutoencoderKLCausal3D"):
        return mod.AutoencoderKLCausal3D

    class EncoderCausal3D(nn.Module):
        def __init__(self, in_channels, ch, latent_channels):
            super().__init__()
            self.conv_in = nn.Conv3d(in_channels, ch, 3, padding=1)
            self.conv_out = nn.Conv3d(ch, 2 * latent_channels, 3, padding=1)

        def features(self, x):
            return torch.nn.functional.silu(self.conv_in(x))

        def forward(self, x):
            return self.conv_out(self.features(x))

    class DecoderCausal3D(nn.Module):
        def __init__(self, out_channels, ch, latent_channels):
            super().__init__()
            self.conv_in = nn.Conv3d(latent_channels, ch, 3, padding=1)
            self.conv_out = nn.Conv3d(ch, out_channels, 3, padding=1)

        def forward(self, z):
            return self.conv_out(torch.nn.functional.silu(self.conv_in(z)))

    class _Out:
        def __init__(self, latent_dist):
            self.latent_dist = latent_dist

    class AutoencoderKLCausal3D(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, in_channels: int = 3, out_channels: int = 3, ch: int = 8, latent_channels: int = 16,
                     scaling_factor: float = 0.18215):
            super().__init__()
            self.encoder = EncoderCausal3D(in_channels, ch, latent_channels)
            self.decoder = DecoderCausal3D(out_channels, ch, latent_channels)

        def encode(self, x):
            return _Out(DiagonalGaussianDistribution(self.encoder(x)))

        def decode(self, z):
            return self.decoder(z)

    for c in (EncoderCausal3D, DecoderCausal3D, AutoencoderKLCausal3D):
        c.__module__ = mod.__name__
        setattr(mod, c.__name__, c)
    return AutoencoderKLCausal3D


class Transformer(nn.Module):
    """The video transformer's place in the loop (latent video in, velocity out)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(16, 16, 1)

    def forward(self, x, t):
        return self.proj(x) * (1 + t[:, None, None, None, None])


def clips(n: int = 4) -> torch.Tensor:
    """(n, 3, F, H, W) uint8-valued clips made of photos panned one pixel per frame."""
    p = photo_batch(n, SIZE + FRAMES).float()
    return torch.stack([p[:, :, f:f + SIZE, f:f + SIZE] for f in range(FRAMES)], dim=2)


def tiny_vae():
    cls = _make_classes()
    torch.manual_seed(0)
    vae = cls(scaling_factor=SCALE)
    x = clips(8) / 127.5 - 1
    with torch.no_grad():
        calibrate_latents(vae.encoder.conv_out, vae.encoder.features(x), 16, 1 / SCALE)
    return vae


def hv_train_network(watch_it: bool, unit: bool = False, scale: bool = True, steps: int = 3):
    torch.manual_seed(0)
    vae, transformer = tiny_vae(), Transformer()
    vae.requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    data = clips(8)
    watch = rangewatch.watch(vae=vae, transformer=transformer, policy="log") if watch_it else None
    losses = []
    for step in range(steps):
        contents = data[torch.randperm(8)[:8]]
        contents = contents / 255.0 if unit else contents / 127.5 - 1.0  # cache_latents.py: normalize to [-1, 1]
        if watch is not None:
            watch.batch({"contents": contents})
        with torch.no_grad():
            latents = vae.encode(contents).latent_dist.sample()
            if scale:
                latents = latents * vae.config.scaling_factor
        if watch is not None:
            watch.tensor("latents", latents)
        noise = torch.randn_like(latents)
        t = torch.rand(latents.shape[0])
        noisy = (1 - t[:, None, None, None, None]) * latents + t[:, None, None, None, None] * noise
        loss = torch.nn.functional.mse_loss(transformer(noisy, t), noise - latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if watch is not None:
            watch.step()
    if watch is not None:
        watch.close()
    return losses, watch


def test_correct_video_script_is_silent_and_trains_identically():
    watch = trains_identically(hv_train_network)
    assert [str(f) for f in problems(watch)] == []
    assert watch.expectation_for("vae.encoder:input").convention == "symmetric"
    assert watch.expectation_for("latents:input").conv.scale == SCALE  # from vae.config, nothing declared
    assert watch.taps["latents:input"].channels == 16


def test_unit_clips_into_the_vae_are_caught_at_the_first_check():
    _, watch = hv_train_network(True, unit=True)
    hits = [f for f in watch.findings if f.kind == "mismatch" and f.where == "vae.encoder:input"]
    assert hits and hits[0].step == 0 and hits[0].observed == "unit", [str(f) for f in watch.findings]


def test_missing_scaling_factor_is_caught_at_the_first_check():
    _, watch = hv_train_network(True, scale=False)
    hits = [f for f in watch.findings if f.kind == "latent_scale" and f.where == "latents:input"]
    assert hits and hits[0].step == 0, [str(f) for f in watch.findings]
