"""Issue 25, item 1: no latent false alarms on correct latents of colourful content.

* latent scale: a scaling factor is defined on the std of the whole flattened latent tensor
  (``1 / z.flatten().std()``); correctly scaled latents whose channel means sit at about +-0.75 (per-channel
  std about 0.7, global std about 1.03) must not read as "scaled with another VAE's factor".
* colour cast: one window's mean colour is content; at most an ``info`` finding without a fix.

The latents come from a real random-init ``diffusers.AutoencoderKL`` whose moment convolution
(``quant_conv``) is set, from hand-computed statistics of its own output, so that the latents have the
channel means and spreads of the issue's report; every statistic asserted is computed with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

import rangewatch  # noqa: E402
from rangewatch.checks.latents import LatentMonitor  # noqa: E402

from helpers.photos import as_tensor  # noqa: E402

SD_SCALE = 0.18215  # the SD 1.x VAE's config.scaling_factor
MEANS = (0.75, -0.75, 0.75, -0.75)  # the channel means (model space)
CHANNEL_STD = 0.7  # per-channel std (model space): global std sqrt(0.7^2 + 0.75^2) = 1.026
SIDE = 64


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=SIDE,
        scaling_factor=SD_SCALE,
    )


def _colourful(n: int = 6) -> torch.Tensor:
    """Colourful photos (astronaut, coffee, chelsea, rocket, ...) in [-1, 1], the VAE's convention."""
    from torchvision.transforms import v2

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel"][:n]
    imgs = [v2.functional.resize(as_tensor(k), [SIDE, SIDE], antialias=True).float() / 127.5 - 1 for k in names]
    return torch.stack(imgs)


@torch.no_grad()
def _shifted_vae(x: torch.Tensor) -> AutoencoderKL:
    """The VAE with its mean moments remapped (hand statistics of its own raw output) so that
    ``mode() * scaling_factor`` has channel means MEANS and per-channel std CHANNEL_STD."""
    vae = _vae()
    z = vae.encode(x).latent_dist.mode().double().numpy()  # (N, 4, h, w) raw
    mu = z.mean(axis=(0, 2, 3))
    sd = z.std(axis=(0, 2, 3))
    qc = vae.quant_conv  # 1x1 conv: moments = W h + b; the first 4 outputs are the mean
    a = CHANNEL_STD / SD_SCALE / sd
    b = np.asarray(MEANS) / SD_SCALE - a * mu
    qc.weight[:4] *= torch.tensor(a, dtype=torch.float32).view(4, 1, 1, 1)
    qc.bias[:4] = qc.bias[:4] * torch.tensor(a, dtype=torch.float32) + torch.tensor(b, dtype=torch.float32)
    return vae


def test_correctly_scaled_latents_with_shifted_channel_means_are_not_another_vaes_factor():
    x = _colourful()
    vae = _shifted_vae(x)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    zn = z.double().numpy()
    # the statistics, by hand: the factor is right (global std ~1), the channels are shifted
    assert abs(zn.std() - math.sqrt(CHANNEL_STD**2 + 0.75**2)) < 0.02
    assert np.allclose(zn.mean(axis=(0, 2, 3)), MEANS, atol=1e-3)
    assert np.allclose(zn.std(axis=(0, 2, 3)), CHANNEL_STD, atol=1e-3)
    with rangewatch.watch(expect={"latents": "sd15_latent"}, policy="log", check_first_n=2) as watch:
        for i in range(3):
            watch.begin_step()  # no batch() here: the step is opened by hand
            watch.tensor("latents", z[2 * (i % 3): 2 * (i % 3) + 2])
            watch.step()
    assert watch.taps["latents:input"].steps_checked == 2  # it was judged ...
    assert [f for f in watch.findings if f.kind == "latent_scale"] == []  # ... and the scale is right
    # the monitor's global std is the hand-computed one (pooled over channels, means included)
    mon = LatentMonitor("sd15_latent")
    mon.update(z)
    a = mon.analyse()
    assert abs(a.global_std - zn.std(ddof=1)) < 1e-3 * zn.std()


def test_the_same_latents_scaled_with_the_sdxl_factor_are_named():
    """The evidence rules SD's factor out when every value is 0.13025/0.18215 times smaller: then it is said."""
    x = _colourful()
    vae = _shifted_vae(x)
    with torch.no_grad():
        raw = vae.encode(x).latent_dist.mode()
    z = raw * 0.13025  # SDXL's factor on SD latents
    assert abs(float(z.double().std()) - 1.026 * 0.13025 / SD_SCALE) < 0.02
    mon = LatentMonitor("sd15_latent")
    mon.update(z)
    (f,) = mon.check(where="latents")
    assert f.kind == "latent_scale" and "0.13025, sdxl_latent" in f.observed


def test_colourful_latents_get_at_most_an_info_without_a_fix():
    """A channel-mean offset that pushes the preview towards a colour is content in one window."""
    x = _colourful()
    vae = _shifted_vae(x)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * SD_SCALE
    mon = LatentMonitor("sd15_latent")
    mon.update(z)
    found = mon.check(where="latents")
    # the RGB push of the channel means (SD 1.x latent-to-RGB factors) is large: a cast under the old rule
    from rangewatch import get_convention

    f_np = np.asarray(get_convention("sd15_latent").latent_rgb)
    rgb = z.double().numpy().mean(axis=(0, 2, 3)) @ f_np
    assert np.linalg.norm(rgb - rgb.mean()) > 0.1
    assert all(f.severity == "info" for f in found), [str(f) for f in found]
    casts = [f for f in found if f.kind == "color_cast"]
    assert len(casts) == 1 and casts[0].fix == ""
