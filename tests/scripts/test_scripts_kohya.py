"""kohya-ss/sd-scripts' Flux LoRA training (flux_train_network.py), reproduced with tiny random-init models whose
classes carry sd-scripts' names and module (``library.flux_models.AutoEncoder``, a copy of black-forest-labs/flux
``src/flux/modules/autoencoder.py``), written from their public structure in a module created here: the dataset's
``IMAGE_TRANSFORMS`` (``ToTensor()`` then ``Normalize([0.5], [0.5])``, ``library/train_util.py``), the frozen
autoencoder whose ``encode()`` calls ``encoder`` / ``reg`` and returns ``scale_factor * (z - shift_factor)`` (never
its ``forward``), the packed latents the transformer sees, the flow-matching loss. Also sd-scripts' SD3 ``SDVAE``
(``library.sd3_models``) and an autoencoder rangewatch does not know. The README's lines:
``rangewatch.watch(ae=ae, flux=flux)``, ``watch.batch``, ``watch.tensor("latents", latents)``, ``watch.step()``.

- correct script: no warning, losses identical to the unwatched run, the latents judged as ``flux_latent`` from the
  autoencoder's own ``scale_factor`` / ``shift_factor``, nothing declared;
- ``ToTensor()`` only (the seed write-up's washed-out Flux images): a mismatch at ``ae.encoder:input`` at step 0.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import rangewatch
from helpers.scripts_models import PhotoDataset, calibrate_latents, sd_transforms
from helpers.script_runs import problems, trains_identically

from helpers.photos import photo_batch

SIZE = 16


def _module(name: str) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    sys.modules[name] = mod
    return mod


# ------------------------------------------------------------------ library.flux_models, tiny, from its structure
flux_models = _module("library.flux_models")


@dataclass
class AutoEncoderParams:
    resolution: int
    in_channels: int
    ch: int
    out_ch: int
    ch_mult: list
    num_res_blocks: int
    z_channels: int
    scale_factor: float
    shift_factor: float


class Encoder(nn.Module):
    def __init__(self, in_channels: int, ch: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.norm_out = nn.GroupNorm(4, ch)
        self.conv_out = nn.Conv2d(ch, 2 * z_channels, 3, padding=1)

    def features(self, x):
        return torch.nn.functional.silu(self.norm_out(self.conv_in(x)))

    def forward(self, x):
        return self.conv_out(self.features(x))


class Decoder(nn.Module):
    def __init__(self, ch: int, out_ch: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z):
        return self.conv_out(torch.nn.functional.silu(self.conv_in(z)))


class DiagonalGaussian(nn.Module):
    def forward(self, z):
        mean, logvar = torch.chunk(z, 2, dim=1)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


class AutoEncoder(nn.Module):
    def __init__(self, params: AutoEncoderParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(params.in_channels, params.ch, params.z_channels)
        self.decoder = Decoder(params.ch, params.out_ch, params.z_channels)
        self.reg = DiagonalGaussian()
        self.scale_factor = params.scale_factor
        self.shift_factor = params.shift_factor

    def encode(self, x):
        z = self.reg(self.encoder(x))
        return self.scale_factor * (z - self.shift_factor)

    def decode(self, z):
        return self.decoder(z / self.scale_factor + self.shift_factor)

    def forward(self, x):
        return self.decode(self.encode(x))


class Flux(nn.Module):
    """The transformer's place in the loop: packed latent tokens (N, H/2*W/2, 64) in, velocity out."""

    def __init__(self):
        super().__init__()
        self.img_in = nn.Linear(64, 32)
        self.final_layer = nn.Linear(32, 64)

    def forward(self, img, timesteps):
        return self.final_layer(torch.nn.functional.silu(self.img_in(img) + timesteps[:, None, None]))


for _cls in (AutoEncoderParams, Encoder, Decoder, DiagonalGaussian, AutoEncoder, Flux):
    _cls.__module__ = flux_models.__name__
    setattr(flux_models, _cls.__name__, _cls)


def tiny_ae() -> AutoEncoder:
    """flux-dev's AutoEncoderParams (16 channels, scale 0.3611, shift 0.1159), tiny widths; its moments conv is
    rescaled so that the raw latents have the mean and spread the scale and shift undo (model-space latents ~ N(0, 1))."""
    torch.manual_seed(0)
    ae = AutoEncoder(AutoEncoderParams(resolution=SIZE, in_channels=3, ch=8, out_ch=3, ch_mult=[1], num_res_blocks=1,
                                       z_channels=16, scale_factor=0.3611, shift_factor=0.1159))
    x = photo_batch(8, SIZE).float() / 127.5 - 1
    with torch.no_grad():
        calibrate_latents(ae.encoder.conv_out, ae.encoder.features(x), 16, 1 / 0.3611, 0.1159)
    return ae


def pack_latents(x):
    """sd-scripts library/flux_utils.py pack_latents: (N, C, H, W) -> (N, H/2*W/2, C*4)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def flux_train_network(watch_it: bool, normalize: bool = True, steps: int = 3, batch_size: int = 8):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    ae, flux = tiny_ae(), Flux()
    ae.requires_grad_(False)
    optimizer = torch.optim.AdamW(flux.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PhotoDataset(sd_transforms(normalize)), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    flux, optimizer, loader = accelerator.prepare(flux, optimizer, loader)
    watch = rangewatch.watch(ae=ae, flux=flux, policy="log") if watch_it else None
    losses = []
    while len(losses) < steps:
        for batch in loader:
            if watch is not None:
                watch.batch(batch)
            with torch.no_grad():
                latents = ae.encode(batch["pixel_values"])  # already scale_factor * (z - shift_factor)
            if watch is not None:
                watch.tensor("latents", latents)
            noise = torch.randn_like(latents)
            t = torch.rand(latents.shape[0])
            noisy = (1 - t[:, None, None, None]) * latents + t[:, None, None, None] * noise
            pred = flux(pack_latents(noisy), t)
            loss = torch.nn.functional.mse_loss(pred, pack_latents(noise - latents))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if watch is not None:
                watch.step()
            if len(losses) >= steps:
                break
    if watch is not None:
        watch.close()
    return losses, watch


def test_flux_autoencoder_is_recognised_by_class_and_module():
    exp = rangewatch.watch(ae=tiny_ae(), watch_visualization=False).expectations
    assert exp["ae.encoder:input"].convention == "symmetric" and "sd-scripts library/flux_models.py" in exp["ae.encoder:input"].source
    assert exp["ae.decoder:output"].convention == "symmetric"


def test_correct_flux_script_is_silent_and_trains_identically():
    watch = trains_identically(flux_train_network)
    assert [str(f) for f in problems(watch)] == []
    latent = watch.expectation_for("latents:input")
    assert latent.convention == "flux_latent"  # from ae.scale_factor / shift_factor / params.z_channels
    assert watch.taps["latents:input"].latent is not None


def test_correct_flux_script_on_small_batches_is_silent():
    """Batches of 4 of the 8 photos the latents were calibrated on: each window's channel means differ from 0 by the
    images' own content (+0.03 here, near Flux's shift*scale 0.0419), but the 4 images' common means spread by about
    0.15, so the window's common mean has a standard error of about 0.07: content, not a shift factor left in."""
    _, watch = flux_train_network(True, batch_size=4)
    assert [str(f) for f in watch.findings if f.kind == "latent_shift"] == []


def test_to_tensor_only_is_caught_at_the_first_check():
    _, watch = flux_train_network(True, normalize=False)
    hits = [f for f in watch.findings if f.kind == "mismatch" and f.where == "ae.encoder:input"]
    assert hits and hits[0].step == 0 and hits[0].observed == "unit", [str(f) for f in watch.findings]


# ------------------------------------------------------------------ sd-scripts SD3 SDVAE, and an unknown autoencoder
def test_sd3_sdvae_gets_sd3_latents():
    sd3 = _module("library.sd3_models")
    sd3.VAE_SCALE_FACTOR, sd3.VAE_SHIFT_FACTOR = 1.5305, 0.0609

    class SDVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Conv2d(3, 32, 3, padding=1)
            self.decoder = nn.Conv2d(16, 3, 3, padding=1)

    SDVAE.__module__ = sd3.__name__
    watch = rangewatch.watch(vae=SDVAE(), watch_visualization=False)
    assert watch.expectations["vae.encoder:input"].convention == "symmetric"
    watch.tensor("latents", torch.randn(2, 16, 8, 8))
    assert watch.expectation_for("latents:input").convention == "sd3_latent"
    watch.close()


def test_an_unknown_autoencoder_is_said_once_with_how_to_declare_it():
    class MyVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Conv2d(3, 8, 3)
            self.decoder = nn.Conv2d(4, 3, 3)

    watch = rangewatch.watch(vae=MyVAE(), watch_visualization=False)
    said = [n for n in watch.notes if "MyVAE" in n]
    assert len(said) == 1 and "does not know" in said[0] and "expect={'vae.encoder': 'symmetric'}" in said[0]
    watch.close()


@pytest.mark.parametrize("module,cls,family", [
    ("comfy.ldm.models.autoencoder", "AutoencodingEngine", "ComfyUI"),
    ("flux.modules.autoencoder", "AutoEncoder", "Flux"),
    ("musubi_tuner.flux.flux_models", "AutoEncoder", "Flux"),
])
def test_other_autoencoder_families_by_class_and_module(module, cls, family):
    mod = _module(module)

    def init(self):
        nn.Module.__init__(self)
        self.encoder = nn.Conv2d(3, 8, 3)
        self.decoder = nn.Conv2d(4, 3, 3)

    klass = type(cls, (nn.Module,), {"__init__": init, "__module__": mod.__name__})
    watch = rangewatch.watch(vae=klass(), watch_visualization=False)
    exp = watch.expectations["vae.encoder:input"]
    assert exp.convention == "symmetric" and exp.source.startswith(family)
    watch.close()


def test_a_wrapper_around_a_known_vae_is_read_inside():
    from helpers.scripts_models import tiny_vae

    class VAEWrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_vae = tiny_vae()

    watch = rangewatch.watch(vae=VAEWrapper(), watch_visualization=False)
    assert watch.expectations["vae.encoder_vae.encoder:input"].convention == "symmetric"
    assert not [n for n in watch.notes if "does not know" in n]
    watch.close()
