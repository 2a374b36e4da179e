"""Issue 25, item 3: the latent convention of every modern VAE family, read from the VAE itself.

Each VAE is a real, tiny, random-init diffusers model; the expected numbers are the model's own config
values (or buffers / BatchNorm statistics), read here directly, and the normalisation each family's
pipeline applies is written out by hand (pipeline_wan.py, pipeline_mochi.py, pipeline_ltx.py,
pipeline_flux2.py, ...), so :func:`rangewatch.latent_convention_of` is checked against the library, and
the latent checks against latents that follow (or miss) that normalisation.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from rangewatch import LatentMonitor, latent_convention_of  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def build(name: str):
    torch.manual_seed(0)
    D = diffusers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "sd15": lambda: D.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8),
            "sd3": lambda: D.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=8,
                                           scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                                           use_post_quant_conv=False),  # the SD3 VAE's config
            "wan": lambda: D.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]),
            "qwenimage": lambda: D.AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1,
                                                          temperal_downsample=[False]),
            "mochi": lambda: D.AutoencoderKLMochi(encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4,
                                                  layers_per_block=(1,) * 5),
            "hunyuanvideo": lambda: D.AutoencoderKLHunyuanVideo(block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=4),
            "cogvideox": lambda: D.AutoencoderKLCogVideoX(block_out_channels=(8,) * 4, layers_per_block=1, norm_num_groups=4),
            "ltx": lambda: D.AutoencoderKLLTXVideo(block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                                                   layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5),
            "flux2": lambda: D.AutoencoderKLFlux2(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
            "sana": lambda: D.AutoencoderDC(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                                            encoder_block_types="ResBlock", decoder_block_types="ResBlock", latent_channels=32,
                                            scaling_factor=0.41407, encoder_qkv_multiscales=((), ()),
                                            decoder_qkv_multiscales=((), ()), decoder_norm_types="rms_norm", decoder_act_fns="silu"),
        }[name]()


def _close(a, b, tol=1e-6):
    return a is not None and b is not None and len(a) == len(b) and all(abs(x - y) <= tol * max(1, abs(y)) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- what is read
def test_image_vaes():
    sd = latent_convention_of(build("sd15"))
    assert (sd.name, sd.scale, sd.channels, sd.layout) == ("sd15_latent", 0.18215, 4, "NCHW")
    sd3 = latent_convention_of(build("sd3"))
    assert (sd3.name, sd3.scale, sd3.shift, sd3.channels) == ("sd3_latent", 1.5305, 0.0609, 16)
    dc = build("sana")
    c = latent_convention_of(dc)
    assert (c.scale, c.channels, c.layout, c.temporal_compression) == (dc.config.scaling_factor, 32, "NCHW", None)


@pytest.mark.parametrize("name,catalogue,channels,layout", [
    ("wan", "wan21_latent", 16, "NCTHW"),
    ("qwenimage", "wan21_latent", 16, "NCTHW"),
    ("mochi", "mochi_latent", 12, "NCTHW"),
])
def test_per_channel_statistics_from_the_config(name, catalogue, channels, layout):
    vae = build(name)
    c = latent_convention_of(vae)
    assert c.name == catalogue and c.channels == channels and c.layout == layout
    assert _close(c.latents_mean, tuple(vae.config.latents_mean)) and _close(c.latents_std, tuple(vae.config.latents_std))
    assert c.scale == float(vae.config.get("scaling_factor") or 1.0)
    assert c.latent_rgb is not None  # previews and colour checks need no registration
    if name == "wan":
        assert c.temporal_compression == vae.config.scale_factor_temporal == 4
    if name == "mochi":
        assert c.temporal_compression == vae.temporal_compression_ratio == 6


def test_video_vaes_with_a_scaling_factor():
    hv = build("hunyuanvideo")
    c = latent_convention_of(hv)
    assert (c.name, c.scale, c.temporal_compression, c.layout) == ("hunyuanvideo_latent", hv.config.scaling_factor, 4, "NCTHW")
    cog = build("cogvideox")
    c = latent_convention_of(cog)
    assert c.scale == cog.config.scaling_factor == 1.15258426 and c.channels == 16
    assert c.temporal_compression == cog.config.temporal_compression_ratio and c.layout == "NTCHW"  # pipeline_cogvideox permutes


def test_ltx_buffers_and_flux2_batchnorm():
    ltx = build("ltx")
    with torch.no_grad():  # a trained checkpoint's buffers
        ltx.latents_mean.copy_(torch.linspace(-0.5, 0.5, ltx.latents_mean.numel()))
        ltx.latents_std.copy_(torch.linspace(0.5, 2.0, ltx.latents_std.numel()))
    c = latent_convention_of(ltx)
    assert _close(c.latents_mean, ltx.latents_mean.tolist()) and _close(c.latents_std, ltx.latents_std.tolist())
    assert c.channels == ltx.config.latent_channels and c.temporal_compression == ltx.temporal_compression_ratio
    f2 = build("flux2")
    with torch.no_grad():
        f2.bn.running_mean.copy_(torch.linspace(-1, 1, f2.bn.running_mean.numel()))
        f2.bn.running_var.copy_(torch.linspace(0.25, 4, f2.bn.running_var.numel()))
    c = latent_convention_of(f2)
    eps = f2.config.batch_norm_eps
    assert c.channels == 4 * f2.config.latent_channels and c.patch_size == 2  # 2x2 patchified
    assert _close(c.latents_mean, f2.bn.running_mean.tolist())
    assert _close(c.latents_std, [math.sqrt(v + eps) for v in f2.bn.running_var.tolist()])


def test_config_json_folder_is_read(tmp_path):
    vae = build("wan")
    vae.save_config(tmp_path / "vae")  # a local diffusers model folder (config.json with _class_name)
    c = latent_convention_of(tmp_path)
    assert c.name == "wan21_latent" and c.temporal_compression == 4 and c.layout == "NCTHW"
    assert latent_convention_of(build("sd15").config).name == "sd15_latent"


def test_tiny_vae_has_no_latent_convention():
    torch.manual_seed(0)
    tiny = diffusers.AutoencoderTiny(encoder_block_out_channels=(8,), decoder_block_out_channels=(8,), num_encoder_blocks=(1,),
                                     num_decoder_blocks=(1,))
    assert latent_convention_of(tiny) is None


# ---------------------------------------------------------------------------- the checks on those latents
def _raw_wan_latents(vae, n=2, t=3, hw=16, seed=0):
    """Raw VAE-space latents with the statistics the config declares: latents_mean + latents_std * noise."""
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return m + s * torch.randn(n, m.shape[1], t, hw, hw, generator=g), m, s


def test_wan_latents_normalised_as_the_pipeline_does_are_silent_and_raw_ones_caught():
    vae = build("wan")
    conv = latent_convention_of(vae)
    raw, m, s = _raw_wan_latents(vae)
    good = (raw - m) * (1.0 / s)  # pipeline_wan.py: latents_std = 1 / config.latents_std; (z - mean) * latents_std
    mon = LatentMonitor(conv)
    mon.update(good)
    assert [f for f in mon.check() if f.severity != "info"] == []
    mon = LatentMonitor(conv)
    mon.update(raw)
    (f,) = mon.check()
    assert f.kind == "latent_scale" and "not scaled" in f.observed and "latents_mean" in f.fix


def test_cogvideox_latents_in_their_pipeline_layout():
    """(N, T, C, H, W) latents with T == C: the convention's layout decides the axis (no declaration of it);
    the derived expectation of an attached CogVideoX VAE carries it."""
    from rangewatch.expect.models import derive_expectations
    from rangewatch.taps.layout import convention_channel_dim

    model = torch.nn.Module()
    model.vae = build("cogvideox")
    conv = derive_expectations(model)["vae:latent"].conv
    assert conv.layout == "NTCHW" and conv.scale == model.vae.config.scaling_factor
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 16, 8, 8, generator=g) * torch.linspace(0.8, 1.2, 16).view(1, 1, 16, 1, 1)  # channels on dim 2
    cd = convention_channel_dim(z, conv)
    assert cd == 2
    mon = LatentMonitor(conv, channel_dim=cd)
    mon.update(z)
    a = mon.analyse()
    assert torch.allclose(a.std, z.double().permute(2, 0, 1, 3, 4).reshape(16, -1).std(dim=1, correction=0), rtol=1e-4)
    assert [f for f in mon.check() if f.severity != "info"] == []
