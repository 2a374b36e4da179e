"""Issue 25, item 2: video VAEs and 5-D batches.

A tiny random-init ``diffusers.AutoencoderKLWan`` (the Wan 2.1 VAE's architecture) encodes video in
temporal chunks: its encoder is called with ``(N, 3, 1, H, W)`` and then ``(N, 3, 4, H, W)``. The module tap
must read the channels on dim 1 (the encoder's ``in_channels`` = 3, PyTorch's ``Conv3d`` layout), so a [0, 1]
video fed with nothing declared is caught, and a [-1, 1] one is silent. The same in a video trainer's own
latent caching code (clips read with PyAV, ``frames / 127.5 - 1``, ``vae.encode``, a safetensors cache, as
the trainers of the issue's reports do it), with single-frame clips too, in a Lightning fit and in a plain
loop. Latents of the video VAE (``(N, 16, T, h, w)``) in a batch are tapped.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

import rangewatch  # noqa: E402
from rangewatch.taps.batches import find_images, image_channel_dim  # noqa: E402
from rangewatch.taps.layout import channel_dim_for, module_channels, video_channel_dim  # noqa: E402

from helpers import fit as quiet  # noqa: E402
from helpers.photos import as_tensor  # noqa: E402
from helpers.threads import one_thread  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
SIDE = 32


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def wan_vae() -> AutoencoderKLWan:
    """Wan 2.1's VAE architecture, tiny (z_dim 16 and the published latents_mean / latents_std defaults)."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False])
    vae.requires_grad_(False)
    return vae


def clip_uint8(frames: int, seed: int = 0) -> np.ndarray:
    """A colourful clip (F, H, W, 3) uint8: a photo panned one pixel per frame."""
    from torchvision.transforms import v2

    img = v2.functional.resize(as_tensor("astronaut"), [SIDE + 16, SIDE + 16], antialias=True).permute(1, 2, 0).numpy()
    o = seed % 8
    return np.stack([img[o + i: o + i + SIDE, o: o + SIDE] for i in range(frames)])


def kinds(findings, severities=("warning", "error")):
    return [(f.kind, f.where) for f in findings if f.severity in severities]


# ---------------------------------------------------------------------------- layout rules
def test_channel_axis_rules():
    vae = wan_vae()
    # the module's own convention: the Wan encoder's first convolution takes 3 channels, the decoder gives 3
    assert module_channels(vae.encoder, "input") == 3 and module_channels(vae.decoder, "output") == 3
    assert module_channels(vae, "input") == vae.config.in_channels == 3
    one, four = torch.zeros(1, 3, 1, SIDE, SIDE), torch.zeros(1, 3, 4, SIDE, SIDE)
    assert channel_dim_for(one, 3) == 1 and channel_dim_for(four, 3) == 1  # the chunks Wan's encoder is called with
    assert channel_dim_for(torch.zeros(2, 5, 3, SIDE, SIDE), 3) == 2  # (N, T, C, H, W)
    # shape only: single-frame RGB clips do not read time as channels, either layout
    assert image_channel_dim(one) == 1 and image_channel_dim(torch.zeros(1, 1, 3, SIDE, SIDE)) == 2
    assert image_channel_dim(four) == 1 and image_channel_dim(torch.zeros(2, 4, 3, SIDE, SIDE)) == 2
    assert video_channel_dim((2, 3, 3, 8, 8), (1, 3, 4)) == 1  # both read: PyTorch's Conv3d layout


def test_five_d_latents_in_a_batch_are_tapped():
    z = torch.randn(2, 16, 3, 8, 8)
    zt = torch.randn(2, 3, 16, 8, 8)  # CogVideoX keeps (N, T, C, H, W)
    found = {i.path: i.channel_dim for i in find_images({"latents": z, "video_latents": zt, "pixel_values": torch.rand(2, 3, 5, SIDE, SIDE)})}
    assert found == {"batch.latents": 1, "batch.video_latents": 2, "batch.pixel_values": 1}


# ---------------------------------------------------------------------------- plain loop, Wan VAE
@pytest.mark.parametrize("frames", [5, 1])
@pytest.mark.parametrize("convention", ["unit", "symmetric"])
def test_wan_vae_plain_loop(frames, convention):
    vae = wan_vae()
    u = torch.from_numpy(clip_uint8(frames)).permute(3, 0, 1, 2)[None].float() / 255  # (1, 3, F, H, W) in [0, 1]
    x = u if convention == "unit" else u * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rangewatch.watch(vae, policy="log", check_first_n=2) as watch:
            for _ in range(2):
                watch.batch({"pixel_values": x})
                with torch.no_grad():
                    z = vae.encode(x).latent_dist.sample()
                watch.tensor("latents", z)
                watch.step()
    assert z.shape[1] == 16
    assert [f for f in watch.findings if f.kind == "internal"] == []
    taps = watch.taps
    assert taps["encoder:input"].channel_dim == 1 and taps["encoder:input"].channels == 3
    assert taps["batch.pixel_values"].channel_dim == 1
    if convention == "unit":
        assert ("mismatch", "encoder:input") in kinds(watch.findings)
    else:
        assert kinds(watch.findings) == []


@pytest.mark.parametrize("layout", ["NCTHW", "NTCHW"])
def test_five_d_latents_in_a_plain_loop_batch_are_tapped(layout):
    """A trainer on cached video latents: the batch carries (N, 16, T, h, w) Wan latents (or CogVideoX's
    (N, T, 16, h, w)); nothing declared, the tap reads the 16 channels, and correct latents are silent."""
    g = torch.Generator().manual_seed(0)
    with rangewatch.watch(policy="log", check_first_n=2) as watch:
        for _ in range(2):
            z = torch.randn(2, 16, 3, 8, 8, generator=g)
            watch.batch({"latents": z if layout == "NCTHW" else z.transpose(1, 2).contiguous(), "caption_ids": torch.zeros(2, 7)})
            watch.step()
    tap = watch.taps["batch.latents"]
    assert tap.channels == 16 and tap.channel_dim == (1 if layout == "NCTHW" else 2) and tap.steps_checked == 2
    assert kinds(watch.findings) == [] and [f for f in watch.findings if f.kind == "internal"] == []


# ---------------------------------------------------------------------------- a video trainer's caching code
def _write_clip(path, frames: np.ndarray) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264rgb" if "libx264rgb" in av.codecs_available else "png", rate=8)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "rgb24"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def _read_clip(path) -> np.ndarray:
    av = pytest.importorskip("av")
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def cache_latents(vae, clips, out_dir, divide: str, watch) -> list:
    """The caching step of the video trainers in the issue's reports: read each clip's frames, map the
    uint8 frames (``/ 127.5 - 1``, or the bug: ``/ 255``), ``(1, C, F, H, W)``, ``vae.encode``, and save the
    latents with safetensors, one file per clip."""
    from safetensors.torch import save_file

    files = []
    for i, path in enumerate(clips):
        frames = torch.from_numpy(_read_clip(path)).permute(3, 0, 1, 2).float()  # (C, F, H, W)
        x = frames / 127.5 - 1.0 if divide == "127.5" else frames / 255.0
        watch.batch({"pixels": x[None]})  # the two lines rangewatch adds to the loop: batch() ... step()
        with torch.no_grad():
            z = vae.encode(x[None]).latent_dist.mode()
        f = out_dir / f"clip{i}_{z.shape[2]}x{z.shape[3]}x{z.shape[4]}_wan.safetensors"
        save_file({f"latents_{z.shape[2]}x{z.shape[3]}x{z.shape[4]}_float32": z[0].contiguous()}, str(f))
        files.append(f)
        watch.step()
    return files


@pytest.mark.parametrize("frames", [5, 1])
@pytest.mark.parametrize("divide", ["127.5", "255"])
def test_video_trainer_caching_code(tmp_path, frames, divide):
    clips = []
    for i in range(2):
        p = tmp_path / f"clip{i}.mkv"
        _write_clip(p, clip_uint8(frames, seed=i))
        clips.append(p)
    back = _read_clip(clips[0])
    assert back.shape == (frames, SIDE, SIDE, 3)
    vae = wan_vae()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rangewatch.watch(vae, policy="log", check_first_n=2) as watch:
            files = cache_latents(vae, clips, tmp_path, divide, watch)
    assert len(files) == 2 and all(f.exists() for f in files)
    assert [f for f in watch.findings if f.kind == "internal"] == []
    assert watch.taps["encoder:input"].channels == 3  # never the 1 frame of a single-frame clip
    if divide == "255":
        assert ("mismatch", "encoder:input") in kinds(watch.findings)
    else:
        assert kinds(watch.findings) == []


# ---------------------------------------------------------------------------- Lightning fit on video
@pytest.mark.slow
@pytest.mark.parametrize("convention", ["unit", "symmetric"])
def test_lightning_fit_on_video_batches(tmp_path, convention):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset

    class Clips(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            u = torch.from_numpy(clip_uint8(5, seed=i)).permute(3, 0, 1, 2).float() / 255  # (C, F, H, W)
            return {"pixel_values": u if convention == "unit" else u * 2 - 1}

    class VideoLatentDiffusion(pl.LightningModule):
        """Frozen Wan VAE, latents normalised with its config's latents_mean / latents_std (the Wan
        pipelines' convention), a small Conv3d denoiser trained on them (flow matching)."""

        def __init__(self):
            super().__init__()
            self.vae = wan_vae()
            self.net = torch.nn.Conv3d(16, 16, 3, padding=1)
            cfg = self.vae.config
            self.register_buffer("lm", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1))
            self.register_buffer("ls", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1))

        def training_step(self, batch, batch_idx):
            with torch.no_grad():
                z = (self.vae.encode(batch["pixel_values"]).latent_dist.sample() - self.lm) / self.ls
            t = torch.rand(z.shape[0], 1, 1, 1, 1)
            noise = torch.randn_like(z)
            xt = (1 - t) * z + t * noise
            return torch.nn.functional.mse_loss(self.net(xt), noise - z)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=1e-3)

    cb = rangewatch.RangeWatch(policy="log", check_first_n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.fit(VideoLatentDiffusion(), DataLoader(Clips(), batch_size=2), callbacks=[cb], max_steps=2, default_root_dir=tmp_path)
    assert [f for f in cb.findings if f.kind == "internal"] == []
    assert cb.taps["vae.encoder:input"].channel_dim == 1 and cb.taps["vae.encoder:input"].channels == 3
    if convention == "unit":
        assert ("mismatch", "vae.encoder:input") in kinds(cb.findings)
    else:
        assert kinds(cb.findings) == []


@pytest.mark.slow
def test_lightning_fit_on_cached_video_latents(tmp_path):
    """A video trainer on cached Wan latents (normalised with the config's latents_mean / latents_std, as the
    Wan pipelines do): the 5-D latents in the batch are tapped and, being right, are silent."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset

    vae = wan_vae()
    m = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    s = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)

    class Cached(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            raw = m + s * torch.randn(16, 3, 8, 8, generator=g)  # what the cache holds: raw VAE latents
            return {"latents": (raw - m) / s}

    class Denoiser(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv3d(16, 16, 3, padding=1)

        def training_step(self, batch, batch_idx):
            z = batch["latents"]
            noise = torch.randn_like(z)
            return torch.nn.functional.mse_loss(self.net(0.5 * z + 0.5 * noise), noise - z)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    cb = rangewatch.RangeWatch(policy="log", check_first_n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.fit(Denoiser(), DataLoader(Cached(), batch_size=2), callbacks=[cb], max_steps=2, default_root_dir=tmp_path)
    tap = cb.taps["batch.latents"]
    assert tap.channels == 16 and tap.channel_dim == 1 and tap.steps_checked == 2
    assert kinds(cb.findings) == [] and [f for f in cb.findings if f.kind == "internal"] == []


def test_watch_pipeline_on_a_cogvideox_pipeline_reads_its_ntchw_latents():
    """CogVideoX pipelines keep latents as (N, T, C, H, W) (pipeline_cogvideox.py): the watch reads them on the
    VAE convention's channel axis, so the per-step latent checks run (no internal error, right scale)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    tr = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                     time_embed_dim=4, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8,
                                     sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=8)
    torch.nn.init.zeros_(tr.proj_out.weight)  # zero-initialised output (v = 0: the Bayes-optimal denoiser of unit latents)
    torch.nn.init.zeros_(tr.proj_out.bias)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8,) * 4, latent_channels=4,
                                 layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=CogVideoXDDIMScheduler(
        # the published CogVideoX-2b scheduler config (v-prediction, zero-SNR rescaled, trailing spacing)
        prediction_type="v_prediction", clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=True, snr_shift_scale=1.0))
    pipe.set_progress_bar_config(disable=True)
    pe = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rangewatch.watch_pipeline(pipe) as watch:
            assert watch.latent_convention.layout == "NTCHW"
            pipe(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), num_inference_steps=3, height=16, width=16,
                 num_frames=9, output_type="pt", max_sequence_length=8, generator=torch.Generator().manual_seed(0))
    assert [f for f in watch.findings if f.kind in ("internal", "latent_scale", "latent_outliers", "color_cast")] == []
