"""RangeWatch never hangs or kills a two-process DDP run (issue 14, items 1 and 10): real gloo DDP on
the CPU, every run under a timeout that kills the whole process group.

The file is also the training script: ``python tests/engine/test_robustness_ddp.py SCENARIO OUT_DIR`` trains
a tiny conv net under ``strategy="ddp"`` (Lightning relaunches this script for rank 1) and each rank
writes ``OUT_DIR/rank<r>.json`` (the findings, the RangeMismatchError it raised, if any).

Scenarios:

* ``preview_rank0``: the default ``RangeWatch()``; ``validation_step`` calls
  ``self.logger.experiment.add_image`` (rank 1 holds Lightning's DummyExperiment) and, on rank 0
  only, ``make_grid(..., normalize=True, value_range=(0, 1))`` on [-1, 1] data (a clipping preview);
* ``preview_all``: the same calls on every rank;
* ``tracer_inf``: ``trace_modules="all"``; at step ``BOOM_STEP`` the module ``boom`` overflows to inf on
  rank 1 only (rank 0's NaN only comes from the gradient all-reduce, a step later);
* ``raise_tracer``: as ``tracer_inf`` with ``policy="raise"``: both ranks must stop with the same error;
* ``raise_preview``: ``policy="raise"`` and the clipping preview on rank 0 only;
* ``latents``: a batch tap declared ``sdxl_latent`` with a TensorBoardLogger: rank zero logs the latent
  preview and histograms (from the statistics all ranks reduced together, not by a sync of its own).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

WORLD = 2
STEPS = 4
BOOM_STEP = 2
TIMEOUT_S = 150


# ---------------------------------------------------------------------------------- the script
def _run(scenario: str, out: str) -> None:
    import warnings

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.utils import make_grid

    from helpers import fit as quiet
    from rangewatch import RangeMismatchError, RangeWatch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 16, 16, generator=g) * 2 - 1
    y = torch.rand(16, generator=g)
    z = torch.randn(16, 4, 8, 8, generator=g) * 0.13025  # SDXL-scaled latents (unit std after the scale)
    ds = TensorDataset(x, y, z)

    class Boom(nn.Module):
        def forward(self, h):  # inf at BOOM_STEP on rank 1 only
            trainer = self.trainer_ref()
            if trainer.global_rank == 1 and trainer.global_step == BOOM_STEP and trainer.training:
                return h * torch.tensor(float("inf"))
            return h

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.boom = Boom()
            self.boom.trainer_ref = lambda: self.trainer
            self.head = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            xb, yb = batch[0], batch[1]
            h = self.boom(self.conv(xb))
            return F.mse_loss(self.head(h.mean(dim=(2, 3))).squeeze(1), yb)

        def validation_step(self, batch, batch_idx):
            xb = batch[0]
            if scenario.startswith(("preview", "raise_preview")):
                everyone = scenario == "preview_all"
                if everyone or self.trainer.global_rank == 0:
                    make_grid(xb[:4], normalize=True, value_range=(0, 1))  # [-1, 1] data clipped to [0, 1]
                self.logger.experiment.add_image("val/sample", xb[0], self.global_step)  # DummyExperiment on rank 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    kw: dict = {}
    if scenario in ("tracer_inf", "raise_tracer"):
        kw.update(trace_modules="all", log_every_n_steps=1)
    if scenario.startswith("raise"):
        kw["policy"] = "raise"
    if scenario == "latents":
        kw.update(expect={"batch[2]": "sdxl_latent"}, log_every_n_steps=1)
    watch = RangeWatch(**kw)
    trainer = quiet.trainer([watch], devices=WORLD, strategy="ddp", max_steps=STEPS, logger=TensorBoardLogger(out, name="tb", version=0),
                            limit_val_batches=1, val_check_interval=2, log_every_n_steps=1)
    raised = None
    try:
        trainer.fit(Net(), train_dataloaders=DataLoader(ds, batch_size=4), val_dataloaders=DataLoader(ds, batch_size=4))
    except RangeMismatchError as e:
        raised = str(e)
    rec = {"rank": trainer.global_rank, "global_step": trainer.global_step, "raised": raised,
           "findings": [f.to_dict() for f in watch.findings]}
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(rec))


# ---------------------------------------------------------------------------------- the test
def _launch(scenario: str, out: Path) -> tuple[dict, dict, str]:
    from helpers.procs import run_ranks  # (here: this file also runs as the script, without tests/ on its path)

    (r0, r1), stderr = run_ranks(__file__, scenario, out, WORLD, TIMEOUT_S, "the DDP run")
    return r0, r1, stderr


def _keys(rec: dict, kind: str | None = None) -> list[tuple]:
    return [(f["kind"], f["where"], f["observed"], f["expected"]) for f in rec["findings"] if kind is None or f["kind"] == kind]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["preview_rank0", "preview_all"])
def test_ddp_preview_logging_on_one_rank_or_all_finishes(tmp_path, scenario):
    r0, r1, err = _launch(scenario, tmp_path)
    assert r0["global_step"] == r1["global_step"] == STEPS
    assert r0["raised"] is None and r1["raised"] is None
    clipping = [f for f in r0["findings"] if f["kind"] == "clipping"]
    assert clipping, r0["findings"]  # the [-1, 1] grid clamped to [0, 1] is still judged, locally
    assert not [f for f in r0["findings"] + r1["findings"] if f["kind"] == "internal"], (r0["findings"], r1["findings"])


@pytest.mark.slow
def test_ddp_latent_tap_logged_by_rank_zero_finishes(tmp_path):
    r0, r1, err = _launch("latents", tmp_path)
    assert r0["global_step"] == r1["global_step"] == STEPS
    assert not [f for f in r0["findings"] + r1["findings"] if f["kind"] == "internal"], (r0["findings"], r1["findings"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (ev,) = list(tmp_path.glob("tb/version_0/events.out.tfevents.*"))
    acc = EventAccumulator(str(ev), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    hists = [t for t in acc.Tags()["histograms"] if t.startswith("rangewatch/batch[2]/latent_channel")]
    assert len(hists) == 4, acc.Tags()["histograms"]
    # every step's histogram counts the global batch (both ranks' 4 samples x 8 x 8 values per channel)
    for t in hists:
        assert [h.histogram_value.num for h in acc.Histograms(t)] == [2 * 4 * 8 * 8] * STEPS, t


@pytest.mark.slow
def test_ddp_tracer_reduces_the_first_origin_across_ranks(tmp_path):
    r0, r1, err = _launch("tracer_inf", tmp_path)
    assert r0["global_step"] == r1["global_step"] == STEPS
    nf0 = [f for f in r0["findings"] if f["kind"] == "nonfinite" and f["source"] == "rangewatch.checks.numerics.ModuleTracer"]
    nf1 = [f for f in r1["findings"] if f["kind"] == "nonfinite" and f["source"] == "rangewatch.checks.numerics.ModuleTracer"]
    assert nf0 and nf1, (r0["findings"], r1["findings"])
    # the same record on both ranks: the module that overflowed, at the step it did, on the rank it did
    assert nf0[0]["where"] == nf1[0]["where"] == "boom", (nf0, nf1)
    assert nf0[0]["evidence"] == nf1[0]["evidence"]
    assert nf0[0]["evidence"].startswith("on rank 1 of 2") and f"of step {BOOM_STEP}" in nf0[0]["evidence"]
    assert _keys(r0, "nonfinite") == _keys(r1, "nonfinite")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["raise_tracer", "raise_preview"])
def test_ddp_raise_is_a_collective_decision(tmp_path, scenario):
    r0, r1, err = _launch(scenario, tmp_path)
    assert r0["raised"] and r1["raised"], (r0, r1, err[-3000:])
    assert r0["raised"] == r1["raised"]  # the same RangeMismatchError on every rank
    assert "Connection closed by peer" not in err
    want = "boom" if scenario == "raise_tracer" else "clipping"
    assert want in r0["raised"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package, as under pytest
    _run(sys.argv[1], sys.argv[2])
