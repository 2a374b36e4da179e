"""Latent monitor, preview and TensorBoard logging (rangewatch.checks.latents)."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch

from rangewatch.expect.conventions import Convention, get_convention
from rangewatch.checks.latents import LatentMonitor, hue_name, latent_preview, soft_clamp
from rangewatch.sinks.latents import log_latents

FAMILIES = ["sd15_latent", "sdxl_latent", "sd3_latent", "flux_latent"]


def unit_latents(name: str, seed: int = 0, n: int = 4, hw: int = 32) -> torch.Tensor:
    """Right-scale, centred model-space latents: N(0, 1) per channel, exactly zero channel means."""
    c = get_convention(name).channels
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, hw, hw, generator=g)
    z = z - z.mean(dim=(0, 2, 3), keepdim=True)
    return z / z.std(dim=(0, 2, 3), keepdim=True)


def findings(z: torch.Tensor, name: str | Convention, **kw):
    mon = LatentMonitor(name, **kw)
    mon.update(z)
    return mon.check(step=3, where="unet.conv_in input")


def kinds(fs):
    return [f.kind for f in fs]


# ---------------------------------------------------------------------------- scale
@pytest.mark.parametrize("name", FAMILIES)
def test_right_scale_centred_has_no_findings(name):
    assert findings(unit_latents(name), name) == []


@pytest.mark.parametrize("name", FAMILIES)
def test_right_scale_in_half_precision(name):
    z = unit_latents(name, seed=1).to(torch.bfloat16 if name.startswith("sd3") else torch.float16)
    assert findings(z, name) == []


@pytest.mark.parametrize("name", FAMILIES)
def test_missing_scale(name):
    conv = get_convention(name)
    z = unit_latents(name) / conv.scale  # (z_vae - shift), never multiplied by the scaling factor
    (f,) = findings(z, name)
    assert f.kind == "latent_scale" and "not scaled" in f.observed and f.severity == "error"
    assert f"{conv.scale:g}" in f.fix and "after encode" in f.fix
    if conv.shift:
        assert "shift_factor" in f.fix and f"{conv.shift:g}" in f.fix
    assert f"{1 / conv.scale:.3g}" in f.evidence
    assert f.step == 3 and f.where == "unet.conv_in input"


@pytest.mark.parametrize("name", FAMILIES)
def test_double_scale(name):
    conv = get_convention(name)
    (f,) = findings(unit_latents(name) * conv.scale, name)
    assert f.kind == "latent_scale" and "scaled twice" in f.observed
    assert "remove the second * scaling_factor" in f.fix and f"{conv.scale:g}" in f.fix


def test_scale_with_latents_mean_and_std():
    """Playground-2.5-style: z_model = (z_vae - latents_mean) * scale / latents_std, std about scale."""
    lm, ls = [-1.6574, 1.886, -1.383, 2.5155], [8.4927, 5.9022, 6.5498, 5.2299]
    # a convention read from a VAE config is carried as an object, not registered
    pg25 = Convention("pg25_test_latent", "latent", "latent scale 0.5", "test", scale=0.5, channels=4,
                      latents_mean=tuple(lm), latents_std=tuple(ls))
    z_model = unit_latents("sd15_latent") * 0.5
    assert findings(z_model, pg25) == []
    raw = z_model * torch.tensor(ls).view(1, 4, 1, 1) / 0.5 + torch.tensor(lm).view(1, 4, 1, 1)
    (f,) = findings(raw, pg25)
    assert f.kind == "latent_scale" and "not scaled" in f.observed and "latents_std" in f.fix
    (f,) = findings(z_model * 0.5 / torch.tensor(ls).view(1, 4, 1, 1), pg25)
    assert "scaled twice" in f.observed


def test_sd15_factor_on_sdxl_latents():
    sdxl, sd15 = get_convention("sdxl_latent"), get_convention("sd15_latent")
    z = unit_latents("sdxl_latent") / sdxl.scale * sd15.scale  # z_vae * 0.18215 on an SDXL VAE
    (f,) = findings(z, "sdxl_latent")
    assert f.kind == "latent_scale" and "0.18215" in f.observed and "sd15_latent" in f.observed
    assert "0.13025" in f.fix


def test_unexplained_scale():
    (f,) = findings(unit_latents("sdxl_latent") * 3.0, "sdxl_latent")
    assert f.kind == "latent_scale" and "neither" in f.observed and f.severity == "warning"


# ---------------------------------------------------------------------------- shift
@pytest.mark.parametrize("name", ["sd3_latent", "flux_latent"])
def test_shift_not_subtracted(name):
    conv = get_convention(name)
    # 16 samples: the common channel mean is judged against its standard error between images; with 4 of these
    # (between-image sd 0.0116) Flux's offset 0.0419 is 7.2 standard errors from 0, short of Student's t on 3
    # degrees of freedom at 3 sigma (9.2), so 4 images cannot tell it from content (see test_latents_shift_evidence.py)
    z = unit_latents(name, n=16) + conv.shift * conv.scale  # z_vae * scale instead of (z_vae - shift) * scale
    fs = findings(z, name)
    (f,) = [f for f in fs if f.kind == "latent_shift"]
    assert "not subtracted" in f.observed
    assert f"{conv.shift * conv.scale:+.4f}" in f.observed  # every channel mean offset by +shift*scale
    assert f"{conv.shift * conv.scale:.4f}" in f.evidence
    assert f"(z - vae.config.shift_factor ({conv.shift:g})) * scaling_factor ({conv.scale:g})" in f.fix
    assert "latent_scale" not in kinds(fs)


@pytest.mark.parametrize("name", ["sd3_latent", "flux_latent"])
def test_shift_subtracted_after_scaling(name):
    conv = get_convention(name)
    # 16 samples: the offset (SD3 +0.0323, Flux -0.0740) is 0.032 from the nearest other hypothesis ("right" for SD3,
    # "subtracted twice" for Flux), 5.6 standard errors with 4 of these images, short of 9.2 (t, 3 dof, 3 sigma)
    z = unit_latents(name, n=16) + conv.shift * conv.scale - conv.shift  # z_vae * scale - shift
    (f,) = [f for f in findings(z, name) if f.kind == "latent_shift"]
    assert "after scaling" in f.observed


@pytest.mark.parametrize("name", ["sd15_latent", "sdxl_latent"])
def test_no_shift_finding_without_shift(name):
    assert "latent_shift" not in kinds(findings(unit_latents(name) + 0.05, name))


# ---------------------------------------------------------------------------- colour cast
HUE_TARGETS = {"yellow": (1.0, 1.0, -2.0), "blue": (-1.0, -1.0, 2.0), "red": (2.0, -1.0, -1.0), "cyan": (-2.0, 1.0, 1.0)}


def _hsv_name(rgb) -> str:
    """Independent hue naming: colorsys HSV hue of the chroma around mid-grey, nearest 60-degree name."""
    c = np.asarray(rgb, dtype=float)
    c = c - c.mean()
    h, _, _ = colorsys.rgb_to_hsv(*(0.5 + 0.4 * c / np.abs(c).max()))
    names = ["red", "yellow", "green", "cyan", "blue", "magenta"]
    return names[int(round(h * 6)) % 6]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("colour", list(HUE_TARGETS))
def test_color_cast_names_the_direction(name, colour):
    conv = get_convention(name)
    f_np = np.asarray(conv.latent_rgb, dtype=np.float64)  # (C, 3)
    target = np.asarray(HUE_TARGETS[colour]) / np.linalg.norm(HUE_TARGETS[colour]) * 0.3  # chroma 0.3
    m, *_ = np.linalg.lstsq(f_np.T, target, rcond=None)  # channel means whose RGB push is `target`
    rgb = m @ f_np
    assert _hsv_name(rgb) == colour  # the construction really points that way
    z = unit_latents(name) + torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1)
    fs = findings(z, name)
    (f,) = [f for f in fs if f.kind == "color_cast"]
    assert f.observed == f"channel means push the image towards {colour}"
    assert hue_name(rgb) == colour
    assert "[" + ", ".join(f"{v:.3g}" for v in rgb) + "]" in f.evidence  # RGB = means @ factors
    assert f.severity == "info" and f.fix == ""  # one window's mean colour is content, not a cast (issue 25)
    assert "latent_scale" not in kinds(fs)


def test_sdxl_cast_names_channels():
    z = unit_latents("sdxl_latent")
    z[:, 1] -= 0.6  # channel 1 (cyan/red) negative: red rises, blue falls
    (f,) = [f for f in findings(z, "sdxl_latent") if f.kind == "color_cast"]
    assert "channel 1 (cyan/red) mean -0.6" in f.evidence
    assert f.observed.endswith(("red", "orange"))


def test_hue_names():
    assert hue_name((1, 1, -1)) == "yellow"
    assert hue_name((1, 0, 0)) == "red"
    assert hue_name((0, 0, 1)) == "blue"
    assert hue_name((1, 0, 1)) == "magenta"
    assert hue_name((1, 0.5, 0)) == "orange"


# ---------------------------------------------------------------------------- outliers
@pytest.mark.parametrize("name", FAMILIES)
def test_outliers(name):
    z = unit_latents(name)
    flat = z.view(-1)
    flat[::97] = 31.2
    flat[50::97] = -31.2  # symmetric: no mean shift
    fs = findings(z, name)
    (f,) = [f for f in fs if f.kind == "latent_outliers"]
    assert "values reach 31.2 while the decoder's comfortable range is about ±4" in f.evidence
    assert "a soft clamp at 3.5 / 4 would change them" in f.evidence
    assert "soft_clamp" in f.fix and "centre the channel means" in f.fix
    assert "latent_scale" not in kinds(fs)  # the robust std is not fooled by 2% outliers


def test_single_extreme_value_is_an_outlier_finding():
    z = unit_latents("sdxl_latent")
    z[0, 2, 5, 5] = -30.0
    (f,) = findings(z, "sdxl_latent")
    assert f.kind == "latent_outliers" and "values reach 30.0" in f.evidence and "channel 2 (lime/purple)" in f.evidence


def test_gaussian_tail_is_not_an_outlier():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(16, 4, 64, 64, generator=g)  # 262k values: about 16 beyond ±4
    assert findings(z, "sd15_latent") == []


# ---------------------------------------------------------------------------- the checks beyond the scale (public)
def test_check_beyond_scale_runs_the_other_checks_when_the_caller_sets_the_scale_verdict_aside():
    """A caller that judges the scale itself (watch_pipeline drops a scale verdict it cannot be sure of) gets the
    outlier check that check() suppresses behind a scale finding; the figures against numpy's."""
    z = unit_latents("sdxl_latent") * 3.0  # an unexplained scale: check() reports it alone
    z[0, 2, 5, 5] = -30.0
    mon = LatentMonitor("sdxl_latent")
    mon.update(z)
    assert kinds(mon.check(step=3, where="vae.decode input")) == ["latent_scale"]
    a = mon.analyse()
    rest = mon.check_beyond_scale(a, step=3, where="vae.decode input")
    assert kinds(rest) == ["latent_outliers"]  # centred channel means: no shift, no cast
    (f,) = rest
    share = float(np.mean(np.abs(z.numpy()) > 3.5))
    assert f"{share:.2%} of values have |x| > 3.5" in f.evidence and "values reach 30.0" in f.evidence
    assert (f.step, f.where) == (3, "vae.decode input")
    assert mon.outlying(a)


def test_check_beyond_scale_is_what_check_says_once_the_scale_is_right():
    conv = get_convention("flux_latent")
    z = unit_latents("flux_latent", n=16) + conv.shift * conv.scale  # shift not subtracted
    flat = z.view(-1)
    flat[::97] = 31.2
    flat[50::97] = -31.2  # symmetric: the channel means stay
    mon = LatentMonitor("flux_latent")
    mon.update(z)
    found = mon.check(step=1, where="latents")
    assert "latent_shift" in kinds(found) and "latent_outliers" in kinds(found)
    assert mon.check_beyond_scale(mon.analyse(), step=1, where="latents") == found


def test_outlying_against_numpy():
    for z, expected in ((unit_latents("sd15_latent"), False), (unit_latents("sd15_latent") * 2.0, True)):
        mon = LatentMonitor("sd15_latent")
        mon.update(z)
        v = np.abs(z.numpy())
        assert expected == bool(np.mean(v > 3.5) > 5e-3 or v.max() > 2 * 4)  # the documented defaults
        assert mon.outlying(mon.analyse()) is expected


def test_nonfinite_latents():
    z = unit_latents("sdxl_latent")
    z[0, 3, :2, :2] = float("nan")
    (f,) = findings(z, "sdxl_latent")
    assert f.kind == "nonfinite" and "4 NaN" in f.evidence and "channel(s) 3" in f.evidence and f.severity == "error"


def test_soft_clamp():
    z = unit_latents("sdxl_latent")
    z[0, 0, 0, 0] = 12.0
    z[1, 3, 1, 1] = -9.0
    out = soft_clamp(z)
    assert out[0, 0].abs().max().item() == pytest.approx(4.0)
    assert out[1, 3].abs().max().item() == pytest.approx(4.0)
    inside = z.abs() <= 3.5
    assert torch.equal(out[inside], z[inside])
    assert torch.equal(soft_clamp(z.clamp(-4, 4)), z.clamp(-4, 4))  # within ±4: unchanged
    # monotone in the compressed part
    a = torch.linspace(3.5, 12, 50).view(1, 1, 1, 50)
    assert (soft_clamp(a).diff(dim=-1) >= 0).all()


# ---------------------------------------------------------------------------- preview
@pytest.mark.parametrize("name", FAMILIES)
def test_preview_matches_numpy(name):
    conv = get_convention(name)
    z = unit_latents(name, n=2, hw=8) * 1.5
    prev = latent_preview(z, name)
    assert prev.shape == (2, 3, 8, 8) and prev.min() >= 0 and prev.max() <= 1
    f_np = np.asarray(conv.latent_rgb)
    bias = np.asarray(conv.latent_rgb_bias or (0.0, 0.0, 0.0))
    rgb = np.einsum("nchw,ck->nkhw", z.numpy().astype(np.float64), f_np) + bias[None, :, None, None]
    expected = np.clip((rgb + 1) / 2, 0, 1)
    np.testing.assert_allclose(prev.numpy(), expected, atol=1e-5)
    # a latent pointing along channel k previews in the direction of factor row k
    k = 1
    one = torch.zeros(1, conv.channels, 2, 2)
    one[:, k] = 1.0
    d = latent_preview(one, name)[0, :, 0, 0].numpy() - latent_preview(torch.zeros_like(one), name)[0, :, 0, 0].numpy()
    np.testing.assert_allclose(d, f_np[k] / 2, atol=1e-6)


def test_preview_shapes_and_channels_last():
    z = unit_latents("sdxl_latent", n=2, hw=8)
    ref = latent_preview(z, "sdxl_latent")
    assert torch.allclose(latent_preview(z.permute(0, 2, 3, 1), "sdxl_latent", channel_dim=-1), ref)
    assert torch.allclose(latent_preview(z[0], "sdxl_latent", channel_dim=0), ref[:1])
    video = torch.stack([z, z * 0.5], dim=2)  # (N, C, T, H, W)
    assert latent_preview(video, "sdxl_latent").shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="latent"):
        latent_preview(z, "symmetric")


def test_monitor_rejects_wrong_channels_and_pixel_conventions():
    with pytest.raises(ValueError, match="pixel convention"):
        LatentMonitor("imagenet")
    mon = LatentMonitor("flux_latent")
    with pytest.raises(ValueError, match="16 channels"):
        mon.update(torch.zeros(1, 4096, 64))


# ---------------------------------------------------------------------------- no host sync
def test_update_does_not_sync(monkeypatch):
    mon = LatentMonitor("sdxl_latent")
    z = unit_latents("sdxl_latent").half()

    def boom(*a, **k):
        raise AssertionError("host sync on the per-step path")

    with monkeypatch.context() as m:
        for attr in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            m.setattr(torch.Tensor, attr, boom)
        for _ in range(3):
            mon.update(z)
        soft_clamp(z)
    assert mon.check() == []


# ---------------------------------------------------------------------------- TensorBoard
def test_log_latents_event_file(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    name = "sdxl_latent"
    z = unit_latents(name, n=2, hw=16)
    z[:, 0] += 0.5
    mon = LatentMonitor(name, preview_samples=2)
    mon.update(z)
    writer = SummaryWriter(log_dir=str(tmp_path))
    tags = log_latents(writer, "unet_in", mon, step=5, scale=1)  # at latent resolution (default: enlarged)
    writer.close()
    assert tags[0] == "rangewatch/unet_in/latent_preview" and len(tags) == 1 + 4

    ea = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    ea.Reload()
    assert ea.Tags()["images"] == ["rangewatch/unet_in/latent_preview"]
    (img,) = ea.Images("rangewatch/unet_in/latent_preview")
    assert img.step == 5 and (img.height, img.width) == (16 + 2, 2 * 16 + 3)  # make_grid, padding 1
    pix = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)).convert("RGB")).astype(np.float64) / 255
    expected = latent_preview(z, name).numpy()  # (2, 3, 16, 16)
    np.testing.assert_allclose(pix[1:17, 1:17].transpose(2, 0, 1), expected[0], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(pix[1:17, 18:34].transpose(2, 0, 1), expected[1], atol=1 / 255 + 1e-6)

    hist_tags = ea.Tags()["histograms"]
    assert hist_tags == [f"rangewatch/unet_in/latent_channel_{c}" for c in range(4)]
    for c in range(4):
        (ev,) = ea.Histograms(f"rangewatch/unet_in/latent_channel_{c}")
        h = ev.histogram_value
        values = z[:, c].reshape(-1).numpy().astype(np.float64)
        assert ev.step == 5
        assert h.num == values.size == sum(h.bucket)
        assert h.min == pytest.approx(values.min(), abs=1e-6) and h.max == pytest.approx(values.max(), abs=1e-6)
        assert h.sum == pytest.approx(values.sum(), abs=1e-3)
        limits = np.asarray(h.bucket_limit)
        # bucket k counts values in (limit[k-1], limit[k]]; compare with numpy on the interior bins
        counts, _ = np.histogram(values, bins=limits[:-1])
        np.testing.assert_allclose(np.asarray(h.bucket)[1:-1], counts, atol=2)  # edge ties may fall either side

    # a tensor works too (convention required)
    writer = SummaryWriter(log_dir=str(tmp_path / "t"))
    assert log_latents(writer, "x", z, 0, convention=name)[0] == "rangewatch/x/latent_preview"
    writer.close()
    with pytest.raises(ValueError, match="convention"):
        log_latents(writer, "x", z, 0)
