"""RangeWatch under real two-process CPU DDP versus one process over the same global batches.

The file is also the training script: ``python tests/engine/test_ddp.py {ddp,single} OUT_DIR`` trains a
tiny conv net with ``RangeWatch(expect={"batch[0]": "symmetric"}, log_every_n_steps=1)`` and a
``TensorBoardLogger`` under ``OUT_DIR``, and each rank writes ``OUT_DIR/rank<r>.json`` (its pid, the
rangewatch warnings it emitted, its findings). Under DDP (``strategy="ddp"``, Lightning relaunches
this script for rank 1) a ``DistributedSampler(shuffle=False)`` gives rank 0 the even and rank 1
the odd sample indices, 4 per step; the single-process run takes 8 consecutive samples per step,
so at every step both runs see the same global batch.

The test reads both event files back and checks that every logged figure (min/max/mean/std,
nonfinite, out_of_range per channel and step; histogram bucket counts) agrees between the two
runs and with numpy over the global batch, that only rank zero wrote an event file, and that the
one finding ([0, 1]-with-overshoot data where symmetric is expected) was warned about once.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

N, C, H, W = 16, 3, 16, 16
WORLD = 2
PER_RANK_BATCH = 4
GLOBAL_BATCH = WORLD * PER_RANK_BATCH
MAX_STEPS = 4  # two epochs of two steps
HIST_BINS = 64
OVERSHOOT = 1.15  # beyond [-1, 1]: makes out_of_range non-zero and the data spill past "symmetric"
TAP = "batch[0]"
MOD_TAP = "pick:input"  # an nn.Identity fed x[keep]: empty on rank 1 at odd steps
KEEP = (0, 1, 4, 8, 10)  # step 0: samples 0, 4 (rank 0) and 1 (rank 1); step 1: 8, 10 (rank 0 only)
ODD_TAP = "odd:input"  # called on rank 1 only under DDP (on its share, the odd samples, in one process)
BOOM_TAP = "boom:input"  # also fed 5 channels at step BOOM_STEP on rank 1: rangewatch switches it off
BOOM_STEP = 2
STATS = ("min", "max", "mean", "std", "nonfinite", "out_of_range")
MISMATCH = "rangewatch: [mismatch]"
TIMEOUT_S = 240  # a hang detector: the run takes ~50 s alone, several times that on a loaded 2-core machine


def make_images() -> np.ndarray:
    """uint8-quantised [0, 1] images; 3% of the pixels of the odd samples (rank 1's share under
    DDP) overshoot to 1.15, so rank 0's own data alone has max 1.0 and a different histogram."""
    rs = np.random.RandomState(1234)
    x = rs.randint(0, 256, size=(N, C, H, W)).astype(np.float32) / np.float32(255)
    over = rs.rand(N, C, H, W) < 0.03
    over[0::2] = False
    x[over] = np.float32(OVERSHOOT)
    return x


def global_batch(step: int, only_kept: bool = False) -> np.ndarray:
    per_epoch = N // GLOBAL_BATCH
    k = step % per_epoch
    idx = np.arange(k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)
    if only_kept:
        idx = idx[np.isin(idx, KEEP)]
    return make_images()[idx]


# ---------------------------------------------------------------------------------- the script
def _run(mode: str, out: str) -> None:
    import warnings

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from helpers import fit as quiet
    from rangewatch import RangeWatch

    torch.set_num_threads(1)
    # show every rangewatch warning (Python's default filter would hide a repeated identical one)
    warnings.filterwarnings("always", message="rangewatch")
    shown: list[str] = []
    show = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        shown.append(str(message))
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = record

    x = torch.from_numpy(make_images())
    y = torch.linspace(-1, 1, N)
    keep = torch.zeros(N, dtype=torch.bool)
    keep[list(KEEP)] = True
    ds = TensorDataset(x, y, keep)

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(C, 4, 3, padding=1)
            self.head = nn.Linear(4, 1)
            self.pick = nn.Identity()
            self.odd = nn.Identity()
            self.boom = nn.Identity()

        def training_step(self, batch, batch_idx):  # noqa: ANN001
            xb, yb, kb = batch
            self.pick(xb[kb])  # a module tap that sees an empty tensor on one rank at some steps
            ddp = mode == "ddp"
            if not ddp or self.trainer.global_rank == 1:  # a module tap that one rank never has
                self.odd(xb if ddp else xb[1::2])
            self.boom(xb)
            if self.global_step == BOOM_STEP and (not ddp or self.trainer.global_rank == 1):
                self.boom(torch.cat([xb, xb[:, :2]], dim=1))  # 5 channels in a 3-channel window, one rank only
            return F.mse_loss(self.head(self.conv(xb).mean(dim=(2, 3))).squeeze(1), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            if mode == "ddp":
                sampler = DistributedSampler(ds, num_replicas=WORLD, rank=self.trainer.global_rank, shuffle=False)
                return DataLoader(ds, batch_size=PER_RANK_BATCH, sampler=sampler)
            return DataLoader(ds, batch_size=GLOBAL_BATCH, shuffle=False)

    watch = RangeWatch(expect={TAP: "symmetric"}, modules=[MOD_TAP, ODD_TAP, BOOM_TAP], log_every_n_steps=1, check_first_n=2, hist_bins=HIST_BINS,
                       per_channel_scalars=True, histograms="all")  # the raw per-channel layout and every histogram
    trainer = quiet.trainer([watch], devices=WORLD if mode == "ddp" else 1, strategy="ddp" if mode == "ddp" else "auto",
                            max_steps=MAX_STEPS, logger=TensorBoardLogger(out, name="tb", version=0),
                            use_distributed_sampler=False, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(Net())
    record_ = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "pid": os.getpid(),
        "global_step": trainer.global_step,
        "warnings": shown,
        "findings": [f.to_dict() for f in watch.findings],
    }
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record_))


# ---------------------------------------------------------------------------------- the test
def _launch(mode: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), mode, str(out)],
        env=env, cwd=str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too: Lightning starts it in this session
        stdout, stderr = proc.communicate()
        pytest.fail(f"{mode} run did not finish in {TIMEOUT_S}s (a collective waiting forever?):\n{stderr[-6000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of it may outlive the test
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"{mode} run failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _read_events(out: Path) -> tuple[list[str], dict[str, list[tuple[int, float]]], dict[str, list], list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True))
    assert len(files) == 1, files
    acc = EventAccumulator(files[0], size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"] if t.startswith(("rangewatch/", "rangewatch_channels/"))}
    hists = {t: [(e.step, e.histogram_value) for e in acc.Histograms(t)] for t in tags["histograms"]}
    text_tag = "rangewatch/findings/text_summary"  # torch's add_text appends /text_summary
    texts = [e.step for e in acc.Tensors(text_tag)] if text_tag in tags["tensors"] else []
    return files, scalars, hists, texts


def _tag(stat: str, c: int, tap: str = TAP) -> str:
    return f"rangewatch_channels/{tap}/{stat}/c{c}"


def _numpy_figures(step: int, only_kept: bool = False, odd: bool = False) -> dict[str, np.ndarray]:
    xb = global_batch(step, only_kept)
    if odd:
        xb = xb[1::2]
    x64 = xb.astype(np.float64).transpose(1, 0, 2, 3).reshape(C, -1)
    lo, hi = -1.0, 1.0  # "symmetric"
    # histogram exactly as RangeStats bins it: float32 (x - lo) / width, floor, clamp to [-1, bins]
    h_lo = np.float32(lo - 0.5 * (hi - lo))
    width = np.float32((hi - lo) * 2 / HIST_BINS)
    t = np.clip(np.floor((xb.transpose(1, 0, 2, 3).reshape(C, -1) - h_lo) / width), -1, HIST_BINS).astype(np.int64) + 1
    return {
        "min": x64.min(axis=1),
        "max": x64.max(axis=1),
        "mean": x64.mean(axis=1),
        "std": x64.std(axis=1),
        "nonfinite": np.zeros(C),
        "out_of_range": ((x64 < lo) | (x64 > hi)).mean(axis=1),
        "hist": np.stack([np.bincount(t[c], minlength=HIST_BINS + 2) for c in range(C)]).astype(np.float64),
    }


@pytest.mark.slow
def test_ddp_matches_single_process_and_numpy(tmp_path: Path) -> None:
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    single_out.mkdir()
    ddp = _launch("ddp", ddp_out)
    single = _launch("single", single_out)

    r0 = json.loads((ddp_out / "rank0.json").read_text())
    r1 = json.loads((ddp_out / "rank1.json").read_text())
    s0 = json.loads((single_out / "rank0.json").read_text())
    assert (r0["rank"], r1["rank"], r0["world_size"], s0["world_size"]) == (0, 1, 2, 1)
    assert r0["global_step"] == r1["global_step"] == s0["global_step"] == MAX_STEPS

    # only rank zero wrote: one event file, named with rank zero's pid, one version directory
    ddp_files, ddp_scalars, ddp_hists, ddp_texts = _read_events(ddp_out)
    single_files, single_scalars, single_hists, single_texts = _read_events(single_out)
    assert f".{r0['pid']}." in Path(ddp_files[0]).name and f".{r1['pid']}." not in Path(ddp_files[0]).name
    assert sorted(p.name for p in (ddp_out / "tb").iterdir()) == ["version_0"]

    # the same tags and steps, equal values between DDP and one process (all taps)
    expected_tags = {_tag(s, c) for s in STATS for c in range(C)}
    mod_tags = {_tag(s, c, t) for t in (MOD_TAP, ODD_TAP, BOOM_TAP) for s in ("min", "max", "mean", "std") for c in range(C)}
    assert set(ddp_scalars) == set(single_scalars) >= expected_tags | mod_tags
    assert set(ddp_hists) == set(single_hists) >= {f"rangewatch/{t}/hist/c{c}" for t in (TAP, MOD_TAP) for c in range(C)}
    for t in ddp_scalars:
        assert [s for s, _ in ddp_scalars[t]] == [s for s, _ in single_scalars[t]], t
        np.testing.assert_allclose([v for _, v in ddp_scalars[t]], [v for _, v in single_scalars[t]], rtol=1e-6, atol=1e-7, err_msg=t)
    for t in expected_tags | mod_tags:
        steps = list(range(BOOM_STEP)) if BOOM_TAP in t else list(range(MAX_STEPS))  # switched off at BOOM_STEP
        assert [s for s, _ in ddp_scalars[t]] == steps, t
    for t in ddp_hists:
        assert [(s, list(h.bucket), list(h.bucket_limit), h.num) for s, h in ddp_hists[t]] == [
            (s, list(h.bucket), list(h.bucket_limit), h.num) for s, h in single_hists[t]
        ], t

    # ... and equal to numpy over the global batch of each step
    for step in range(MAX_STEPS):
        ref = _numpy_figures(step)
        for stat in STATS:
            got = np.array([dict(ddp_scalars[_tag(stat, c)])[step] for c in range(C)])
            np.testing.assert_allclose(got, ref[stat], rtol=1e-5, atol=1e-6, err_msg=f"{stat} at step {step}")
        assert (ref["out_of_range"] > 0).all() and (ref["max"] == np.float32(OVERSHOOT)).all()  # the data do what we want
        # the module tap: only the kept samples of the global batch (at odd steps all on rank 0)
        ref_mod = _numpy_figures(step, only_kept=True)
        for stat in ("min", "max", "mean", "std"):
            got = np.array([dict(ddp_scalars[_tag(stat, c, MOD_TAP)])[step] for c in range(C)])
            np.testing.assert_allclose(got, ref_mod[stat], rtol=1e-5, atol=1e-6, err_msg=f"{MOD_TAP} {stat} at step {step}")
        # the tap rank 0 never had: rank 1's samples, reduced with an empty share from rank 0
        ref_odd = _numpy_figures(step, odd=True)
        for stat in ("min", "max", "mean", "std"):
            got = np.array([dict(ddp_scalars[_tag(stat, c, ODD_TAP)])[step] for c in range(C)])
            np.testing.assert_allclose(got, ref_odd[stat], rtol=1e-5, atol=1e-6, err_msg=f"{ODD_TAP} {stat} at step {step}")
        for c in range(C):
            tag = f"rangewatch/{TAP}/hist/c{c}"
            (sd, hd), (ss, hs) = ddp_hists[tag][step], single_hists[tag][step]
            assert sd == ss == step
            assert list(hd.bucket) == list(hs.bucket) == ref["hist"][c].tolist(), (tag, step)
            assert list(hd.bucket_limit) == list(hs.bucket_limit)
            assert hd.num == hs.num == GLOBAL_BATCH * H * W
            assert (hd.min, hd.max) == (hs.min, hs.max)
            # sums come from float32 partial sums, grouped differently for 4- and 8-sample batches
            np.testing.assert_allclose([hd.sum, hd.sum_squares], [hs.sum, hs.sum_squares], rtol=1e-6)
            xc = global_batch(step)[:, c].astype(np.float64)
            np.testing.assert_allclose([hd.sum, hd.sum_squares], [xc.sum(), (xc * xc).sum()], rtol=1e-6)

    # the findings: the same one on both ranks (they judge the reduced statistics) and in one
    # process; warned about once, by rank zero; the findings table written once
    def keys(rec: dict) -> list[tuple]:
        return [(f["kind"], f["where"], f["observed"], f["expected"], f["step"]) for f in rec["findings"] if f["kind"] != "internal"]

    def internal(rec: dict) -> list[tuple]:
        return [(f["where"], f["observed"]) for f in rec["findings"] if f["kind"] == "internal"]

    # the tap rangewatch switched off on rank 1 is switched off on rank 0 too (else their
    # collectives would pair up wrongly), and rank zero says why
    assert len(internal(s0)) == 1 and internal(s0)[0][0] == BOOM_TAP and "5" in internal(s0)[0][1]
    assert [w for w, _ in internal(r0)] == [w for w, _ in internal(r1)] == [BOOM_TAP]
    assert "on rank 1" in internal(r0)[0][1]
    for rec in (s0, r0, r1):
        assert "saw 3 channels before and now 5" in internal(rec)[0][1], internal(rec)
    for out, run in ((ddp, "ddp"), (single, "single")):
        # (stderr also shows the source line of the warning call, with "{where}" in it)
        said = re.findall(r"rangewatch: internal error at ([^{][^ ]*)", out.stderr)
        assert said == [BOOM_TAP], (run, out.stderr[-4000:])

    assert keys(r0) == keys(r1) == keys(s0) == [("mismatch", TAP, "unit", "symmetric", 0)]
    assert sum(MISMATCH in w for w in r0["warnings"]) == 1
    assert not any("rangewatch" in w for w in r1["warnings"])
    assert ddp.stderr.count(MISMATCH) == 1, ddp.stderr[-4000:]
    assert single.stderr.count(MISMATCH) == 1
    assert ddp_texts == single_texts == [0]

    # `rangewatch report` reads the DDP run's logs: the tap, its per-step values and the finding
    from rangewatch.sinks.report import build_report

    html = build_report(ddp_out).read_text()
    assert TAP in html and "mismatch" in html and "x * 2 - 1" in html
    first_min = dict(ddp_scalars[_tag("min", 0)])[0]
    assert f"{first_min:.6g}" in html


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package, as under pytest
    _run(sys.argv[1], sys.argv[2])
