"""The plain-loop front end, :func:`rangewatch.watch`, in hand-written training loops.

1. A diffusers-style loop training a tiny random-init ``diffusers.AutoencoderKL`` on real photos
   (``tests/helpers/photos.py``), with a ``torch.utils.tensorboard.SummaryWriter``: [0, 1] pixels fed where
   the VAE expects [-1, 1] (read from the model's own metadata) make one mismatch finding; the
   correct ``x * 2 - 1`` makes none. The event file is read back and its figures checked against numpy.
2. The same loop under HF Accelerate with two CPU processes (gloo), launched with
   ``torch.multiprocessing``: the statistics are reduced across both processes (rank 0's photos are
   dimmed to [0, 0.8], yet rank 0's event file shows rank 1's maximum), both reach the same findings,
   and only rank zero writes and warns.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.photos import photo_batch
from helpers.procs import free_port, spawn_ranks

SIZE = 16
DIM = 0.8  # rank 0's photos are dimmed: its own maximum stays below rank 1's


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=SIZE,
    )


def photos(n: int = 8) -> torch.Tensor:
    return photo_batch(n, SIZE).float() / 255  # [0, 1]


def train(vae, batches, watch):
    """The loop of the diffusers VAE fine-tuning scripts: encode, sample, decode, MSE against the input."""
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    for batch in batches:
        watch.batch(batch)
        x = batch["pixel_values"]
        out = vae.decode(vae.encode(x).latent_dist.sample()).sample
        loss = torch.nn.functional.mse_loss(out.float(), x.float())
        loss.backward()
        opt.step()
        opt.zero_grad()
        watch.step()


def read_events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    ea.Reload()
    return ea


def test_plain_loop_flags_unit_data_fed_to_a_diffusers_vae(tmp_path):
    import rangewatch
    from torch.utils.tensorboard import SummaryWriter

    x = photos(8)
    batches = [{"pixel_values": x[i:i + 4]} for i in (0, 4, 0, 4)]
    writer = SummaryWriter(str(tmp_path / "tb"))
    vae = tiny_vae()
    with rangewatch.watch(vae, logger=writer, log_every_n_steps=2, check_first_n=1) as watch:
        assert watch.expectations["encoder:input"].convention == "symmetric"  # from the VAE's own class
        with pytest.warns(UserWarning, match=r"rangewatch: \[mismatch\] encoder:input"):
            train(vae, batches, watch)
    writer.close()
    problems = [f for f in watch.findings if f.kind not in ("note", "internal")]
    assert [(f.kind, f.where, f.observed, f.expected, f.step) for f in problems] == [
        ("mismatch", "encoder:input", "unit", "symmetric", 0)], watch.findings
    assert "x * 2 - 1" in problems[0].fix

    ea = read_events(tmp_path / "tb")
    first = x[:4].double().numpy()
    lo = ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "min", 0))
    hi = ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "max", 2))
    assert [e.step for e in lo] == [0, 2]  # check_first_n=1, then every 2 steps
    assert lo[0].value == pytest.approx(first[:, 0].min(), abs=1e-6)
    assert hi[0].value == pytest.approx(first[:, 2].max(), abs=1e-6)
    window = x.double().numpy()  # steps 1 and 2: x[4:8] then x[0:4]
    assert lo[1].value == pytest.approx(window[:, 0].min(), abs=1e-6)
    assert ea.Scalars("rangewatch/findings/mismatch")[-1].value == 1
    assert "rangewatch/findings/text_summary" in ea.Tags()["tensors"]
    assert rangewatch.sinks.loggers.tag("encoder:input", "hist", 0) in ea.Tags()["histograms"]  # the flagged tap


def test_plain_loop_is_silent_on_correct_data(tmp_path):
    import rangewatch

    x = photos(8) * 2 - 1
    batches = [{"pixel_values": x[i:i + 4]} for i in (0, 4, 0, 4)]
    vae = tiny_vae()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rangewatch")
        with rangewatch.watch(vae, log_every_n_steps=1) as watch:
            train(vae, batches, watch)
    assert [f for f in watch.findings if f.kind != "note"] == []
    assert watch.taps["encoder:input"].steps_checked == 4 and watch.taps["encoder:input"].inferred.name == "symmetric"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vae.modules())  # close() took them off


# ---------------------------------------------------------------------------------------------- accelerate

def _rank_data(rank: int, steps: int) -> list[torch.Tensor]:
    """Rank 0: photos dimmed to [0, 0.8]; rank 1: the photos, [0, 1]."""
    x = photos(8)
    return [x[(step * 4) % 8:(step * 4) % 8 + 4] * (DIM if rank == 0 else 1.0) for step in range(steps)]


def _accelerate_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter

    import rangewatch

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2 and torch.distributed.get_backend() == "gloo"
    vae = tiny_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    vae, opt = accelerator.prepare(vae, opt)
    writer = SummaryWriter(os.path.join(out, f"rank{rank}"))  # on both ranks: only rank zero's gets rangewatch's figures
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch = rangewatch.watch(vae, logger=writer, log_every_n_steps=2, check_first_n=1)
        for b in _rank_data(rank, 3):
            watch.batch({"pixel_values": b})
            loss = torch.nn.functional.mse_loss(vae(b).sample, b)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            watch.step()
        watch.close()
    writer.close()
    said = [str(w.message) for w in caught if str(w.message).startswith("rangewatch:")]
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "findings": [[f.kind, f.where, f.observed, f.expected, f.step] for f in watch.findings if f.kind != "note"],
        "warnings": said,
        "collectives": repr(watch.collectives),
    }))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_accelerate_two_cpu_processes_reduce_statistics_and_log_on_rank_zero(tmp_path):
    import rangewatch

    ranks = spawn_ranks(_accelerate_worker, (free_port(), str(tmp_path)), tmp_path, 2, 240, "the two-process accelerate run")
    assert "TorchDistributed(rank=0, world_size=2" in ranks[0]["collectives"]
    # the same verdicts on both ranks (from the reduced statistics); only rank zero speaks
    assert ranks[0]["findings"] == ranks[1]["findings"]
    assert [f[:4] for f in ranks[0]["findings"]] == [["mismatch", "encoder:input", "unit", "symmetric"]], ranks[0]
    assert len(ranks[0]["warnings"]) == 1 and "[mismatch] encoder:input" in ranks[0]["warnings"][0]
    assert ranks[1]["warnings"] == []

    ea = read_events(tmp_path / "rank0")
    both = np.concatenate([b.numpy() for r in (0, 1) for b in _rank_data(r, 1)])  # step 0: both ranks' first batch
    for c in range(3):
        mx = ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "max", c))[0]
        mn = ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "min", c))[0]
        assert mx.step == 0 and mx.value == pytest.approx(float(both[:, c].max()), abs=1e-6)
        assert mn.value == pytest.approx(float(both[:, c].min()), abs=1e-6)
    rank0_alone = float(_rank_data(0, 1)[0].max())
    assert rank0_alone <= DIM < max(ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "max", c))[0].value for c in range(3))
    assert [e.step for e in ea.Scalars(rangewatch.sinks.loggers.detail_tag("encoder:input", "max", 0))] == [0, 2]
    assert not [t for t in read_events(tmp_path / "rank1").Tags()["scalars"] if t.startswith("rangewatch/")]


def test_a_loop_that_never_feeds_a_batch_is_still_checked():
    """A plain loop that only runs the attached model and calls ``step()`` (no ``batch()``, no ``tensor()``,
    no ``begin_step()``) is checked at the check steps all the same: a frozen diffusers VAE fed [0,1]
    photos is caught at step 0, and a ``tensor()``-only loop opens its own steps."""
    from diffusers import AutoencoderKL

    import rangewatch

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4).eval().requires_grad_(False)
    x = photo_batch(4, 32).float() / 255  # [0, 1]: the VAE is built for [-1, 1]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with rangewatch.watch(vae=vae, policy="log", check_first_n=2) as w:
        for _ in range(3):
            with torch.no_grad():
                vae.encode(x)
            w.step()
    hits = [f for f in w.findings if f.kind == "mismatch" and f.where == "vae.encoder:input"]
    assert hits and hits[0].step == 0 and hits[0].observed == "unit"

    with rangewatch.watch(expect={"pixels": "symmetric"}, policy="log", check_first_n=2) as w2:
        for _ in range(2):
            w2.tensor("pixels", x)
            w2.step()
    assert [(f.kind, f.where, f.step) for f in w2.findings if f.kind == "mismatch"] == [("mismatch", "pixels:input", 0)]
