"""RangeWatch(trace_modules=...) and latent taps under real Trainer runs (cases fp16-black, sdxl-latent)."""

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import fit as quiet
from helpers.models import LatentDenoiser, OverflowModule
from rangewatch import RangeMismatchError, RangeWatch, get_convention

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not


def fit(model, data, cb, logger=False, precision="32-true", steps=2, bs=4):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quiet.fit(model, DataLoader(TensorDataset(data), batch_size=bs), callbacks=[cb], logger=logger,
                         max_steps=steps, precision=precision)


def fp16_data():
    return torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) + 0.5


def test_fp16_overflow_names_the_third_layer():
    w = RangeWatch(trace_modules="all", policy="log", log_every_n_steps=1)
    fit(OverflowModule(third_scale=20000.0), fp16_data(), w, precision="16-true")
    nf = [f for f in w.findings if f.kind == "nonfinite"]
    assert nf and nf[0].where.startswith("net.2"), w.findings
    assert "bf16" in nf[0].fix and "fp32" in nf[0].fix


def test_fp16_headroom_before_anything_breaks():
    w = RangeWatch(trace_modules="all", policy="log", log_every_n_steps=1)
    fit(OverflowModule(third_scale=5000.0, lr=0.0), fp16_data(), w, precision="16-true")
    kinds = {f.kind for f in w.findings}
    assert "fp16_headroom" in kinds and "nonfinite" not in kinds
    assert any(f.where.startswith("net.2") for f in w.findings if f.kind == "fp16_headroom")


def test_fail_fast_every_step_raises_at_the_first_nan_step():
    w = RangeWatch(trace_modules="all", policy="raise", check_first_n=0, log_every_n_steps=1000, check_nonfinite_every_step=True)
    with pytest.raises(RangeMismatchError, match="net.2"):
        t = fit(OverflowModule(third_scale=20000.0), fp16_data(), w, precision="16-true", steps=20)
    assert w.findings[0].step == 0


def LatentModel(scaled: bool) -> LatentDenoiser:
    """A denoiser fed SDXL-space latents (``batch[0]``, what ``vae.encode(...).latent_dist.sample()`` returns):
    ``scaled`` decides whether the VAE scaling factor was applied."""
    return LatentDenoiser(key=0, scale=get_convention("sdxl_latent").scale if scaled else None)


def raw_latents():
    # unscaled SDXL VAE latents have std about 1/0.13025 = 7.7 (N(0,1) in model space after scaling)
    return torch.randn(16, 4, 16, 16, generator=torch.Generator().manual_seed(0)) / 0.13025


def test_missing_scaling_factor_found_and_preview_logged(tmp_path):
    w = RangeWatch(expect={"unet:input": "sdxl_latent"}, policy="log", log_every_n_steps=1)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(LatentModel(scaled=False), raw_latents(), w, logger=logger)
    kinds = {f.kind for f in w.findings}
    assert "latent_scale" in kinds, w.findings
    f = next(f for f in w.findings if f.kind == "latent_scale")
    assert f.where == "unet:input" and "0.13025" in f.fix
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert any("latent_preview" in t for t in acc.Tags()["images"])
    assert any("latent_channel" in t for t in acc.Tags()["histograms"])


def test_scaled_latents_silent():
    w = RangeWatch(expect={"unet:input": "sdxl_latent"}, policy="log", log_every_n_steps=1)
    fit(LatentModel(scaled=True), raw_latents(), w)
    assert [f for f in w.findings if f.kind.startswith("latent") or f.kind == "color_cast"] == []


def test_declared_batch_latents_with_16_channels():
    class Flux(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return self.p * batch["latents"].mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"latents": torch.randn(16, 8, 8, generator=g) / 0.3611}  # Flux latents, scale forgotten

    w = RangeWatch(expect={"batch.latents": "flux_latent"}, policy="log", log_every_n_steps=1)
    quiet.fit(Flux(), DataLoader(DS(), batch_size=8), callbacks=[w], max_steps=1)
    assert any(f.kind == "latent_scale" and f.where == "batch.latents" for f in w.findings), w.findings
