"""Issue 25, item 4: ``rangewatch check-cache DIR [--vae CONFIG_OR_NAME]`` on caches written the way trainers write them.

* kohya-ss/sd-scripts: ``np.savez(npz_path, latents=..., original_size=..., crop_ltrb=...)`` next to each image,
  raw (unscaled) latents of shape (C, H, W) (``library/train_util.py`` ``save_latents_to_disk``);
* a diffusers-based trainer: ``torch.save(latents, path)`` / safetensors, raw or already scaled.

The VAE is a real ``diffusers.AutoencoderKL`` (random init, or trained for a few steps to reconstruct where its
decode is judged) saved as a local model folder with ``save_pretrained``; its ``scaling_factor`` is set the way
the published factors were found, ``1 / z.flatten().std()`` over the training images, computed here with numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from rangewatch.checks.latent_cache import check_cache, find_cache_files, read_latents  # noqa: E402
from rangewatch.cli.main import main  # noqa: E402

from helpers.photos import as_tensor  # noqa: E402
from helpers.threads import one_thread  # noqa: E402

NAMES = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel", "hubble_deep_field", "retina"]
SIDE = 32


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def photos_uint8() -> list[torch.Tensor]:
    from torchvision.transforms import v2

    return [v2.functional.resize(as_tensor(k), [SIDE, SIDE], antialias=True) for k in NAMES]


def tiny_vae(train_steps: int = 0) -> AutoencoderKL:
    torch.manual_seed(0)
    blocks = 1 if train_steps else 2  # the trained one keeps full resolution: it learns to reconstruct in seconds
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(16,) * blocks, layers_per_block=1,
                        latent_channels=4, norm_num_groups=4)
    if train_steps:
        # a few hundred steps of reconstruction on photos in varied ranges: like a real VAE, its decoder then
        # gives back the range it was fed ([0, 1] in, about [0, 1] out)
        x0 = torch.stack(photos_uint8()).float() / 255
        opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(train_steps):
            idx = torch.randint(0, len(NAMES), (4,), generator=g)
            a = 1.0 + torch.rand(4, 1, 1, 1, generator=g)  # spans of 1 .. 2
            b = -a / 2 * torch.rand(4, 1, 1, 1, generator=g) * 2  # offsets: [0, 1] ... [-1, 1] and between
            x = x0[idx] * a + b
            out = vae.decode(vae.encode(x).latent_dist.mode()).sample
            (out - x).abs().mean().backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():  # a trained VAE's posterior is narrow (logvar about -12): sample() is about mode()
        vae.quant_conv.weight[4:] = 0
        vae.quant_conv.bias[4:] = -12.0
    vae.eval()
    return vae


@torch.no_grad()
def calibrate(vae: AutoencoderKL, folder) -> float:
    """scaling_factor = 1 / std of all raw latents of the training photos (how SD's 0.18215 was found); save the VAE."""
    x = torch.stack(photos_uint8()).float() / 127.5 - 1
    z = vae.encode(x).latent_dist.mode().double().numpy()
    s = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=s)
    vae.save_pretrained(folder)
    return s


def sd_scripts_cache(vae, folder, divide: float = 127.5) -> list:
    """sd-scripts' cache_latents: an image file and an .npz of its raw latents next to it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, img in zip(NAMES, photos_uint8()):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{name}.png")
        x = img.float()[None] / divide - (1.0 if divide == 127.5 else 0.0)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))[0]
        np.savez(folder / f"{name}.npz", latents=z.float().cpu().numpy(), original_size=np.array([SIDE, SIDE]),
                 crop_ltrb=np.array([0, 0, SIDE, SIDE]))
        out.append(folder / f"{name}.npz")
    return out


def diffusers_trainer_cache(vae, folder, scaled: bool, fmt: str = "pt") -> None:
    """A diffusers-based trainer's cache: one file per image, torch.save or safetensors, raw or scaled."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, img in zip(NAMES, photos_uint8()):
        x = img.float()[None] / 127.5 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(1))
        if scaled:
            z = z * vae.config.scaling_factor
        if fmt == "pt":
            torch.save(z[0].clone(), folder / f"{name}.pt")
        else:
            save_file({"latents": z[0].contiguous()}, str(folder / f"{name}.safetensors"))


# ---------------------------------------------------------------------------- reading
def test_formats_are_read(tmp_path):
    vae = tiny_vae()
    calibrate(vae, tmp_path / "vae")
    files = sd_scripts_cache(vae, tmp_path / "sd")
    diffusers_trainer_cache(vae, tmp_path / "pt", scaled=False)
    diffusers_trainer_cache(vae, tmp_path / "st", scaled=True, fmt="st")
    assert find_cache_files(tmp_path / "sd") == sorted(files)  # the images beside them are not cache files
    (key, z), = read_latents(files[0])
    assert key == "latents" and z.shape == (4, SIDE // 2, SIDE // 2) and torch.equal(z, torch.from_numpy(np.load(files[0])["latents"]))
    assert read_latents(tmp_path / "pt" / "coffee.pt")[0][1].shape == (4, SIDE // 2, SIDE // 2)
    assert read_latents(tmp_path / "st" / "coffee.safetensors")[0][0] == "latents"


# ---------------------------------------------------------------------------- judging
def test_correct_raw_and_scaled_caches_are_ok(tmp_path):
    vae = tiny_vae()
    s = calibrate(vae, tmp_path / "vae")
    sd_scripts_cache(vae, tmp_path / "sd")
    diffusers_trainer_cache(vae, tmp_path / "st", scaled=True, fmt="st")
    raw = check_cache(tmp_path / "sd", str(tmp_path / "vae"), progress=False, decode=0)
    assert raw.storage == "raw" and raw.ok, raw.format()
    assert raw.convention.scale == pytest.approx(s)
    # the global std it reports is numpy's over every value read
    allz = np.concatenate([np.load(f)["latents"].ravel() for f in sorted((tmp_path / "sd").glob("*.npz"))])
    assert raw.global_std == pytest.approx(float(allz.std()), rel=1e-3)
    scaled = check_cache(tmp_path / "st", str(tmp_path / "vae" / "config.json"), progress=False)
    assert scaled.storage == "scaled" and scaled.ok, scaled.format()
    assert len(scaled.previews) == 4 and all(png[:4] == b"\x89PNG" for _, png in scaled.previews)


def test_nan_files_named_and_wrong_factor_flagged(tmp_path):
    vae = tiny_vae()
    calibrate(vae, tmp_path / "vae")
    files = sd_scripts_cache(vae, tmp_path / "sd")
    z = np.load(files[2])["latents"]
    z[0, :3, :3] = np.nan  # what an fp16 encode that overflowed leaves (sd-scripts #2322)
    np.savez(files[2], latents=z, original_size=np.array([SIDE, SIDE]), crop_ltrb=np.array([0, 0, SIDE, SIDE]))
    rep = check_cache(tmp_path / "sd", str(tmp_path / "vae"), progress=False, decode=0)
    assert rep.nonfinite == [(files[2].name, 9, 0)]
    assert any(f.kind == "nonfinite" and files[2].name in f.evidence for f in rep.findings) and not rep.ok
    # a cache scaled by another factor (0.55 times the right one, between raw and scaled here): neither
    diffusers_trainer_cache(vae, tmp_path / "half", scaled=False)
    for f in (tmp_path / "half").glob("*.pt"):
        torch.save(torch.load(f) * vae.config.scaling_factor * 0.55, f)
    rep = check_cache(tmp_path / "half", str(tmp_path / "vae"), progress=False, decode=0)
    assert rep.storage == "neither" and [f.kind for f in rep.findings] == ["latent_scale"]


def test_an_outlier_file_is_named(tmp_path):
    vae = tiny_vae()
    calibrate(vae, tmp_path / "vae")
    diffusers_trainer_cache(vae, tmp_path / "pt", scaled=False)
    bad = tmp_path / "pt" / "rocket.pt"
    torch.save(torch.load(bad) * 10, bad)
    rep = check_cache(tmp_path / "pt", str(tmp_path / "vae"), progress=False, decode=0)
    assert [n for n, _ in rep.outliers] == ["rocket.pt"]


@pytest.mark.slow
def test_unit_encoded_cache_caught_by_decoding(tmp_path):
    """[0, 1] images encoded without / 127.5 - 1: the decoded pixels are [0, 1] (the washed-out signature)."""
    vae = tiny_vae(train_steps=300)
    calibrate(vae, tmp_path / "vae")
    sd_scripts_cache(vae, tmp_path / "good")
    sd_scripts_cache(vae, tmp_path / "bad", divide=255.0)
    good = check_cache(tmp_path / "good", str(tmp_path / "vae"), progress=False, decode=4)
    assert not [f for f in good.findings if f.kind == "mismatch"], good.format()
    bad = check_cache(tmp_path / "bad", str(tmp_path / "vae"), progress=False, decode=4)
    (m,) = [f for f in bad.findings if f.kind == "mismatch"]
    assert m.observed == "unit" and m.expected == "symmetric" and "re-encode" in m.fix


# ---------------------------------------------------------------------------- command line
def test_cli_exit_codes_json_and_html(tmp_path, capsys):
    vae = tiny_vae()
    calibrate(vae, tmp_path / "vae")
    sd_scripts_cache(vae, tmp_path / "sd")
    html = tmp_path / "page.html"
    assert main(["check-cache", str(tmp_path / "sd"), "--vae", str(tmp_path / "vae"), "--no-progress",
                 "--html", str(html), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["storage"] == "raw" and out["ok"] and out["html"] == str(html)
    assert html.read_text().count("<img ") == 4
    np.savez(tmp_path / "sd" / "broken.npz", latents=np.full((4, 16, 16), np.inf, dtype=np.float32))
    assert main(["check-cache", str(tmp_path / "sd"), "--vae", str(tmp_path / "vae"), "--no-progress", "--html", str(html)]) == 1
    assert "broken.npz" in capsys.readouterr().out
    assert main(["check-cache", str(tmp_path / "empty_does_not_exist"), "--no-progress"]) == 2
    assert main(["check-cache", str(tmp_path / "sd"), "--vae", "no_such_vae", "--no-progress"]) == 2


def test_cli_parser_imports_no_torch():
    code = ("import sys; from rangewatch.cli.main import build_parser; "
            "build_parser().parse_args(['check-cache', 'x', '--vae', 'sdxl_latent']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("normalised", [False, True])
def test_video_cache_of_wan_latents(tmp_path, normalised):
    """A video trainer's safetensors cache (``latents_<F>x<H>x<W>_<dtype>`` keys, (C, F, H, W) per clip) of latents
    with the statistics AutoencoderKLWan's config declares; raw and normalised storage are both read right."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]).config
    cfg_dir = tmp_path / "wan_vae"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **dict(cfg)}))
    m = torch.tensor(cfg.latents_mean).view(-1, 1, 1, 1)
    s = torch.tensor(cfg.latents_std).view(-1, 1, 1, 1)
    (tmp_path / "cache").mkdir()
    for i in range(6):
        z = m + s * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        save_file({"latents_3x8x8_float32": ((z - m) / s) if normalised else z}, str(tmp_path / "cache" / f"clip{i}.safetensors"))
    rep = check_cache(tmp_path / "cache", str(cfg_dir), progress=False)
    assert rep.convention.name == "wan21_latent" and rep.storage == ("scaled" if normalised else "raw") and rep.ok, rep.format()
    assert len(rep.previews) == 4


def test_cogvideox_cache_in_its_pipelines_layout(tmp_path):
    """A cache of CogVideoX latents kept the way its pipelines keep them, ``(N, T, C, H, W)`` batches and one
    ``(T, C, H, W)`` clip (diffusers pipeline_cogvideox.py permutes the VAE's (N, C, T, H, W) output): the 16
    channels are read on dim 2, so no channel-count mismatch is claimed, and the std of all values is numpy's."""
    from safetensors.torch import save_file

    scale = 1.15258426  # AutoencoderKLCogVideoX's scaling_factor (diffusers autoencoder_kl_cogvideox.py)
    cfg_dir = tmp_path / "cogvideox_vae"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX", "scaling_factor": scale,
                                                     "latent_channels": 16, "temporal_compression_ratio": 4}))
    (tmp_path / "cache").mkdir()
    arrays = []
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        shape = (3, 16, 8, 8) if i == 0 else (2, 3, 16, 8, 8)  # one clip, then batches of two (T = 3 frames)
        z = torch.randn(shape, generator=g) / scale  # raw VAE latents: std 1 / scaling_factor
        arrays.append(z.numpy().astype(np.float64))
        save_file({"latents": z}, str(tmp_path / "cache" / f"clip{i}.safetensors"))
    rep = check_cache(tmp_path / "cache", str(cfg_dir), progress=False, previews=0)
    assert not [f for f in rep.findings if f.kind == "mismatch"], rep.format()
    assert not [n for n in rep.notes if "another channel count" in n], rep.format()  # every file read
    assert rep.storage == "raw" and rep.ok and len(rep.channel_std) == 16, rep.format()
    every = np.concatenate([a.ravel() for a in arrays])
    assert rep.global_std == pytest.approx(every.std(), rel=1e-4)
