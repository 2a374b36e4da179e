"""``rangewatch demo``: short real Lightning runs on the embedded photos, one per case of the README.

Each case trains a small model for a few steps with :class:`~rangewatch.RangeWatch` attached and
writes TensorBoard logs under ``<logdir>/<case>``. ``clean`` has no bug and must give no finding.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..expect.conventions import get_convention
from ..findings.finding import Finding
from ..sinks.console import finding_text
from .photos import load_photos

__all__ = ["CASES", "DemoResult", "run_case", "run_demo", "findings_table"]


# ----------------------------------------------------------------------------- data
class PhotoPairs(Dataset):
    """Restoration pairs from the embedded photos: ``lq`` (blurred, noisy) and ``gt``, in ``convention``."""

    def __init__(self, size: int = 64, convention: str = "symmetric", n: int = 16):
        photos = load_photos(size).float() / 255
        g = torch.Generator().manual_seed(0)
        self.gt = photos.repeat((n + len(photos) - 1) // len(photos), 1, 1, 1)[:n]
        small = nn.functional.avg_pool2d(self.gt, 4)
        lq = nn.functional.interpolate(small, scale_factor=4, mode="bilinear", align_corners=False)
        self.lq = (lq + 0.03 * torch.randn(lq.shape, generator=g)).clamp(0, 1)
        self.conv = get_convention(convention)

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"lq": self.conv.from_unit(self.lq[i][None])[0], "gt": self.conv.from_unit(self.gt[i][None])[0]}


def has_package(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------- models
def _lightning() -> Any:
    import lightning.pytorch as pl

    return pl


def restorer_class() -> type:
    pl = _lightning()

    class Restorer(pl.LightningModule):
        """A small residual restoration net in [-1,1], basicsr style: validation converts outputs with
        ``tensor2img`` (the CodeFormer stage-2 code path)."""

        def __init__(self, min_max: tuple[float, float] | None = (-1, 1)):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 3, 3, padding=1))
            self.min_max = min_max

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + self.net(x)).clamp(-1, 1)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return nn.functional.l1_loss(self(batch["lq"]), batch["gt"])

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            out = self(batch["lq"])
            if not has_package("basicsr"):  # the torchvision equivalent: save_image assumes [0, 1] too
                import io

                from torchvision.utils import save_image

                for img in out[:2]:
                    save_image(img if self.min_max is None else (img + 1) / 2, io.BytesIO(), format="png")
                return
            from ..compat.basicsr import import_basicsr

            import_basicsr()
            from basicsr.utils import tensor2img

            kw = {} if self.min_max is None else {"min_max": self.min_max}
            for img in out[:2]:
                tensor2img(img, **kw)  # what the run would write to disk as its preview

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Restorer


def tiny_vae() -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=8, sample_size=64,
    )


def encoders_class() -> type:
    pl = _lightning()

    class Encoders(pl.LightningModule):
        """An IP-Adapter-like pipeline: one loader of [0,1] images, a VAE ([-1,1]), a CLIP image encoder
        (CLIP mean/std) and a DINO-style timm backbone (ImageNet mean/std), each fed through its own
        normalisation (``norms``)."""

        def __init__(self, norms: dict[str, str], with_encoders: bool = True):
            super().__init__()
            self.norms = norms
            self.vae = tiny_vae()
            if with_encoders:
                import timm
                import transformers as tr

                cfg = tr.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16)
                self.image_encoder = tr.CLIPVisionModelWithProjection(cfg)
                self.dino = timm.create_model("resnet18", pretrained=False, num_classes=0)
            self.head = nn.Conv2d(4, 3, 1)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            u = batch["gt"]
            z = self.vae.encode(get_convention(self.norms["vae"]).from_unit(u)).latent_dist.mean
            loss = nn.functional.mse_loss(self.head(z), u)
            if "image_encoder" in self.norms:
                emb = self.image_encoder(pixel_values=get_convention(self.norms["image_encoder"]).from_unit(u)).image_embeds
                feats = self.dino(get_convention(self.norms["dino"]).from_unit(u))
                loss = loss + 0.0 * (emb.mean() + feats.mean())
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.head.parameters(), lr=1e-3)

    return Encoders


def fp16_class() -> type:
    pl = _lightning()

    class HalfRestorer(pl.LightningModule):
        """A restoration net run in pure fp16 (``precision="16-true"``) whose decoder mid block has
        large weights, as the SDXL / Flux VAEs do: its activations pass 65504, become inf, then NaN,
        and the preview turns black."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Conv2d(3, 16, 3, padding=1)
            self.decoder = nn.Sequential()
            self.decoder.add_module("conv_in", nn.Conv2d(16, 16, 3, padding=1))
            self.decoder.add_module("act", nn.SiLU())
            self.decoder.add_module("mid", nn.Conv2d(16, 16, 3, padding=1))
            self.decoder.add_module("conv_out", nn.Conv2d(16, 3, 3, padding=1))
            with torch.no_grad():
                self.decoder.mid.weight.fill_(30000.0)  # the overflow: its outputs reach about 1e5 > 65504

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return nn.functional.l1_loss(self(batch["lq"]).float(), batch["gt"].float())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    return HalfRestorer


class PhotoLatents(Dataset):
    """SDXL-space latents made from the photos with the inverse of the linear latent-to-RGB map
    (least squares; no VAE weights can be downloaded): their RGB preview is the photo, with the
    yellow lean the SDXL write-up describes; returned *unscaled* (``z / 0.13025``): the pipeline
    forgot ``* vae.config.scaling_factor``."""

    def __init__(self, size: int = 32):
        conv = get_convention("sdxl_latent")
        rgb = load_photos(size).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
        f = torch.tensor(conv.latent_rgb)  # (4, 3)
        bias = torch.tensor(conv.latent_rgb_bias)
        # least squares: the latents whose linear preview z @ f + bias is the photo itself
        z = torch.einsum("nkhw,kc->nchw", rgb - bias[None, :, None, None], torch.linalg.pinv(f))
        # latent-like texture along the one direction the preview cannot see (f's left null space)
        null = torch.linalg.svd(f.T).Vh[-1]  # (4,): null @ f == 0
        g = torch.Generator().manual_seed(0)
        z = z + 0.5 * torch.randn(z[:, :1].shape, generator=g) * null[None, :, None, None]
        z[:, 0] += 0.4  # luminance up, towards yellow (cf. Fooocus #994)
        self.z_vae = z / conv.scale

    def __len__(self) -> int:
        return len(self.z_vae)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latents": self.z_vae[i]}


def denoiser_class() -> type:
    pl = _lightning()

    class Denoiser(pl.LightningModule):
        """A small latent denoiser (the UNet's place) trained on noised latents."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 4, 3, padding=1))

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            z = batch["latents"]
            noise = torch.randn_like(z)
            return nn.functional.mse_loss(self.unet(z + noise), noise)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Denoiser


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    title: str
    expect_kind: str | None  # the finding kind the case is about (None: no finding)
    build: Callable[[], tuple[Any, DataLoader, DataLoader | None, dict[str, Any]]]
    steps: int = 8
    precision: str = "32-true"
    needs: tuple[str, ...] = ()  # optional packages the case cannot run without
    fallback: str = ""  # what the case does instead when an optional package it likes is missing

    def missing(self) -> list[str]:
        return [n for n in self.needs if not has_package(n)]


def _pairs(convention: str) -> tuple[DataLoader, DataLoader]:
    ds = PhotoPairs(64, convention)
    return DataLoader(ds, batch_size=4, shuffle=True), DataLoader(ds, batch_size=4)


def _clean() -> tuple:
    train, val = _pairs("symmetric")
    return restorer_class()((-1, 1)), train, val, {"expect": {"batch.lq": "symmetric", "batch.gt": "symmetric"}}


def _dark_preview() -> tuple:
    train, val = _pairs("symmetric")
    return restorer_class()(None), train, val, {"expect": {"batch.lq": "symmetric", "batch.gt": "symmetric"}}


def _vae_range() -> tuple:
    train, _ = _pairs("unit")
    return encoders_class()({"vae": "unit"}, with_encoders=False), train, None, {}


def _multi_norm() -> tuple:
    train, _ = _pairs("unit")
    norms = {"vae": "symmetric", "image_encoder": "imagenet", "dino": "clip"}  # CLIP and ImageNet swapped
    return encoders_class()(norms), train, None, {}


def _fp16_black() -> tuple:
    train, _ = _pairs("symmetric")
    return fp16_class()(), train, None, {"trace_modules": "all", "expect": {"batch.lq": "symmetric"}}


def _sdxl_latent() -> tuple:
    ds = PhotoLatents()
    return denoiser_class()(), DataLoader(ds, batch_size=4, shuffle=True), None, {"expect": {"unet:input": "sdxl_latent"}}


CASES: dict[str, Case] = {
    "dark-preview": Case("dark-preview", "CodeFormer stage 2: validation previews through tensor2img's default min_max=(0, 1)", "clipping", _dark_preview,
                         fallback="basicsr"),
    "vae-range": Case("vae-range", "[0,1] photos fed to a VAE built for [-1,1] (diffusers AutoencoderKL)", "mismatch", _vae_range, steps=4,
                      needs=("diffusers",)),
    "multi-norm": Case("multi-norm", "VAE + CLIP image encoder + DINO-style backbone, CLIP and ImageNet normalisation swapped", "mismatch", _multi_norm, steps=3,
                       needs=("diffusers", "transformers", "timm")),
    "fp16-black": Case("fp16-black", "a restoration net in pure fp16 whose decoder overflows 65504 (black images)", "nonfinite", _fp16_black, steps=3, precision="16-true"),
    "sdxl-latent": Case("sdxl-latent", "SDXL latents fed to the denoiser without * scaling_factor (values past +-30)", "latent_scale", _sdxl_latent, steps=4),
    "clean": Case("clean", "the restoration run with every range right", None, _clean),
}


@dataclass
class DemoResult:
    case: str
    findings: list[Finding]
    logdir: Path | None
    seconds: float
    skipped: str = ""  # why the case did not run (an optional package is missing)

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        kind = CASES[self.case].expect_kind
        problems = [f for f in self.findings if f.kind not in ("note",)]
        if kind is None:
            return not problems
        return any(f.kind == kind for f in self.findings)


def run_case(name: str, logdir: str | Path = "rangewatch_logs", progress: bool = True) -> DemoResult:
    """Train one case for a few steps with RangeWatch attached; logs go to a fresh
    ``<logdir>/<name>/version_<n>``. A case whose optional packages are missing does not run: its
    result says which extra to install."""
    case = CASES[name]
    missing = case.missing()
    if missing:
        return DemoResult(name, [], None, 0.0, skipped=f"needs {', '.join(missing)}: pip install \"rangewatch[demo]\"")
    pl = _lightning()
    from lightning.pytorch.loggers import TensorBoardLogger

    from ..callback import RangeWatch

    torch.manual_seed(0)
    start = time.perf_counter()
    model, train, val, opts = case.build()
    watch = RangeWatch(policy="log", log_every_n_steps=2, **opts)
    logger = TensorBoardLogger(str(logdir), name=name)  # version_<n>: a re-run never mixes with the last one
    try:  # also bound the epochs, so that the progress bar shows "Epoch 1/1" rather than "1/-2"
        epochs = max(1, math.ceil(case.steps / len(train)))
    except TypeError:  # a loader without a length
        epochs = -1
    trainer = pl.Trainer(
        max_steps=case.steps, max_epochs=epochs, accelerator="cpu", devices=1, logger=logger, callbacks=[watch], precision=case.precision,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        log_every_n_steps=2, num_sanity_val_steps=0, limit_val_batches=1 if val is not None else 0,
        val_check_interval=None, check_val_every_n_epoch=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning\..*")
        trainer.fit(model, train, val)
    logger.experiment.flush()
    return DemoResult(name, list(watch.findings), Path(logger.log_dir), time.perf_counter() - start)


def run_demo(case: str = "dark-preview", logdir: str | Path = "rangewatch_logs", progress: bool = True, echo: Callable[[str], None] = print) -> list[DemoResult]:
    names = list(CASES) if case == "all" else [case]
    results = []
    for name in names:
        echo(f"\n== {name}: {CASES[name].title}")
        case = CASES[name]
        if case.fallback and not has_package(case.fallback):
            echo(f"   ({case.fallback} is not installed: the previews go through torchvision's save_image, which assumes [0, 1] "
                 f"as tensor2img does; pip install \"rangewatch[{case.fallback}]\" for the original code path)")
        r = run_case(name, logdir, progress)
        results.append(r)
        if r.skipped:
            echo(f"   skipped: this case {r.skipped}")
            continue
        shown = [f for f in r.findings if f.kind != "note"]
        echo(f"\n{len(shown)} finding(s) in {r.seconds:.1f} s" + (":" if shown else ": no findings"))
        for f in shown:
            echo(finding_text(f))
    where = Path(logdir).resolve()
    runs = [r for r in results if r.logdir is not None]
    if runs:
        echo(
            f"\nTensorBoard logs: {where} (this run: {', '.join(str(Path(r.logdir).resolve().relative_to(where)) for r in runs)})\n"
            f"Open them with (the RANGEWATCH tab: findings first, with evidence, fix and the preview pairs):\n"
            f"  rangewatch tensorboard --logdir {where}\n"
            f"or write an HTML report:\n  rangewatch report {where}"
        )
    return results
