"""latent_shift is decided on the evidence images give, not latent values (rangewatch.checks.latents, issue #25).

The values of one image share its content, which moves all its channel means together; the independent units
behind a window's common channel mean are the images. Every window here is built so that each image's channel
means equal its own "content" offset exactly (noise centred per image and channel), all channels alike (so
the spread across channels rules nothing out): the per-image common means, their spread and the standard error
of the window's common mean are then computed by hand with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rangewatch.checks.latents import LatentMonitor
from rangewatch.expect.conventions import get_convention

FLUX = get_convention("flux_latent")
OFFSET = FLUX.shift * FLUX.scale  # 0.1159 * 0.3611 = 0.0419: z_vae * scale instead of (z_vae - shift) * scale


def window(content: np.ndarray, hw: int = 16, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """(N, 16, hw, hw) model-space latents: unit noise centred per image and channel, plus each image's content
    offset on every channel, plus ``shift``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(content), FLUX.channels, hw, hw))
    noise -= noise.mean(axis=(2, 3), keepdims=True)
    noise /= noise.std(axis=(0, 2, 3), keepdims=True)
    return noise + content[:, None, None, None] + shift


def analyse(z: np.ndarray, chunks: int = 1):
    mon = LatentMonitor("flux_latent")
    for part in np.array_split(z, chunks):
        mon.update(torch.from_numpy(part).float())
    return mon, mon.analyse()


def by_hand(z: np.ndarray) -> tuple[float, float, float]:
    """(window common mean, between-image sd of the per-image common means, standard error of the window's)."""
    g = z.reshape(len(z), -1).mean(axis=1)
    sd = g.std(ddof=1)
    return float(z.mean()), float(sd), float(sd / np.sqrt(len(g)))


def test_four_photos_whose_content_sits_near_the_shift_are_silent():
    # the per-image common means of the 4-photo batch in tests/scripts/test_scripts_kohya.py: -0.1085, 0.0526,
    # -0.0704, 0.2508 (a correct Flux loop); every channel mean of the window is 0.0311, 0.011 from shift*scale
    z = window(np.array([-0.1085, 0.0526, -0.0704, 0.2508]))
    common, sd, se = by_hand(z)
    assert common == pytest.approx(0.031125, abs=1e-6)
    assert abs(common - OFFSET) < 0.35 * OFFSET  # what the per-value tolerance read as "shift not subtracted"
    assert sd == pytest.approx(0.16178, abs=1e-5) and se == pytest.approx(0.08089, abs=1e-5)
    assert common / se == pytest.approx(0.3848, abs=1e-3)  # 0.38 standard errors from 0: the images' content explains it
    mon, a = analyse(z)
    assert a.samples == 4 and a.sample_sd == pytest.approx(sd, rel=1e-4) and a.common_se == pytest.approx(se, rel=1e-4)
    assert float(a.mean.mean()) == pytest.approx(common, abs=1e-6)
    assert [f.kind for f in mon.check()] == []


def test_four_photos_with_a_real_missing_shift_cannot_be_told_from_content():
    # the same 4 photos encoded without subtracting the shift: 0.0730, still 0.90 standard errors from 0 (and
    # 0.14 from the shift): the data cannot decide, so nothing is said (the cost of not raising false alarms)
    z = window(np.array([-0.1085, 0.0526, -0.0704, 0.2508]), shift=OFFSET)
    common, sd, se = by_hand(z)
    assert common / se == pytest.approx(0.9021, abs=1e-3)
    mon, a = analyse(z)
    assert a.common_se == pytest.approx(se, rel=1e-4)
    assert "latent_shift" not in [f.kind for f in mon.check()]


def _content(n: int, sd: float, seed: int = 1) -> np.ndarray:
    """n per-image content offsets with mean exactly 0 and between-image sd exactly ``sd``."""
    c = np.random.default_rng(seed).standard_normal(n)
    c -= c.mean()
    return c * (sd / c.std(ddof=1))


def test_many_images_with_a_missing_shift_are_caught():
    # 128 images whose content spreads their common means by 0.1: the window's common mean is the shift, 0.0419,
    # with a standard error 0.1 / sqrt(128) = 0.00884: 4.73 standard errors from 0 and 13.1 from "subtracted after
    # scaling" (-0.0740), beyond Student's t on 127 dof at one-sided 3 sigma (under 3.2)
    z = window(_content(128, 0.1), hw=8, shift=OFFSET)
    common, sd, se = by_hand(z)
    assert common == pytest.approx(OFFSET, abs=1e-6) and sd == pytest.approx(0.1, abs=1e-6)
    assert se == pytest.approx(0.1 / np.sqrt(128), rel=1e-6)
    assert common / se == pytest.approx(4.735, abs=1e-3)
    mon, a = analyse(z, chunks=8)  # 8 batches of 16: the images add up across updates
    assert a.samples == 128 and a.sample_sd == pytest.approx(sd, rel=1e-4)
    (f,) = [f for f in mon.check() if f.kind == "latent_shift"]
    assert "not subtracted" in f.observed and f"{OFFSET:+.4f}" in f.observed
    assert "over 128 samples" in f.evidence and f"standard error {se:.4f}" in f.evidence and "4.7 standard errors" in f.evidence
    # the same window without the shift: content alone, silent
    mon, _ = analyse(z - OFFSET, chunks=8)
    assert "latent_shift" not in [f.kind for f in mon.check()]


def test_many_images_with_wide_content_are_silent():
    # 64 images spreading by 0.25 (SE 0.03125) with the shift: 1.34 standard errors from 0, nothing said
    z = window(_content(64, 0.25), hw=8, shift=OFFSET)
    common, _, se = by_hand(z)
    assert common / se == pytest.approx(1.339, abs=1e-3)
    mon, _ = analyse(z, chunks=4)
    assert "latent_shift" not in [f.kind for f in mon.check()]


def test_sample_count_survives_a_checkpoint_and_follows_the_batch_dim():
    z = window(_content(32, 0.1), hw=8, shift=OFFSET)
    mon, a = analyse(z[:16])
    again = LatentMonitor("flux_latent")
    again.load_state_dict(mon.state_dict())
    again.update(torch.from_numpy(z[16:]).float())
    b = again.analyse()
    _, sd, se = by_hand(z)
    assert b.samples == 32 and b.sample_sd == pytest.approx(sd, rel=1e-4) and b.common_se == pytest.approx(se, rel=1e-4)
    # video latents (N, T, C, H, W) with the channels on dim 2: the samples are the clips
    clips = torch.from_numpy(np.stack([z[:6], z[6:12]], axis=1)).float()  # (6, 2, 16, 8, 8)
    mon = LatentMonitor("flux_latent", channel_dim=2)
    mon.update(clips)
    g = clips.double().mean(dim=(1, 2, 3, 4)).numpy()
    v = mon.analyse()
    assert v.samples == 6 and v.sample_sd == pytest.approx(g.std(ddof=1), rel=1e-4)
