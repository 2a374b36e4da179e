"""rangewatch never hangs or desynchronises a two-process run (issue 23, items 1 and 7): plain PyTorch
loops under ``torch.distributed`` (gloo, CPU), each run under a timeout that kills the whole process group
and fails the test instead of hanging.

The file is also the training script: ``python tests/engine/test_run_killers_ddp.py SCENARIO OUT_DIR`` spawns two
processes (``torch.multiprocessing.spawn``) that train a small conv net under ``DistributedDataParallel``
with ``rangewatch.watch`` and write ``OUT_DIR/rank<r>.json`` (findings, taps, steps done).

Scenarios:

* ``odd_batches``: dict batches whose keys differ by rank and hold a newline (rank 0: ``"aux\\nimg"``), a tab
  (rank 1: ``"aux\\timg"``) and a lone surrogate (``os.fsdecode(b"cond\\xff")``, both ranks), as keys made
  from prompts or file names do: the tap agreement must carry them losslessly; and ``batch.photo`` is RGB on
  rank 0 and grayscale on rank 1 (a dataset that mixes them): a user-level ``mismatch`` finding on every rank,
  not an internal error;
* ``apply_fails``: rank 1 cannot add the empty tap for a key only rank 0 has (an injected fault in the
  agreement on one rank only): every rank skips those checks together and says so once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

WORLD = 2
STEPS = 6
TIMEOUT_S = 180


# ---------------------------------------------------------------------------------- the script
def _worker(rank: int, scenario: str, out: str, port: int) -> None:
    import warnings

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import rangewatch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    w = rangewatch.watch(ddp, expect={"0": "symmetric"}, policy="log", check_first_n=2, log_every_n_steps=2,
                         messages=lambda level, text: None)
    if scenario == "apply_fails" and rank == 1:
        def broken(name, channel_dim):  # noqa: ANN001  (an injected fault on rank 1 only)
            raise MemoryError("injected: no room for the empty tap")

        w._tapset.placeholder = broken  # the tap set makes the empty taps (rangewatch/engine/tapset.py)
    g = torch.Generator().manual_seed(rank)
    steps = 0
    for step in range(STEPS):
        x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        batch = {"image": x}
        if scenario == "odd_batches":
            batch["aux\nimg" if rank == 0 else "aux\timg"] = torch.rand(4, 3, 16, 16, generator=g)
            batch[os.fsdecode(b"cond\xff")] = torch.rand(4, 3, 16, 16, generator=g)
            batch["photo"] = x if rank == 0 else x[:, :1]  # RGB on rank 0, grayscale on rank 1
        elif scenario == "apply_fails" and rank == 0:
            batch["only_here"] = torch.rand(4, 3, 16, 16, generator=g)
        w.batch(batch)
        loss = F.mse_loss(ddp(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step()
        steps += 1
    w.close()
    rec = {"rank": rank, "steps": steps, "findings": [f.to_dict() for f in w.findings],
           "taps": {n: {"disabled": t.disabled, "steps_checked": t.steps_checked, "error": t.error} for n, t in w.taps.items()}}
    Path(out, f"rank{rank}.json").write_text(json.dumps(rec, ensure_ascii=True))
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------- the test
def _launch(scenario: str, out: Path) -> tuple[dict, dict]:
    from helpers.procs import run_ranks  # (here: this file also runs as the script, without tests/ on its path)

    (r0, r1), stderr = run_ranks(__file__, scenario, out, WORLD, TIMEOUT_S, "the two-process run")
    return r0, r1


def _keys(rec: dict, kind: str | None = None) -> list[tuple]:
    return [(f["kind"], f["where"], f["observed"], f["expected"]) for f in rec["findings"] if kind is None or f["kind"] == kind]


@pytest.fixture(scope="module")
def odd_batches(tmp_path_factory) -> tuple[dict, dict]:
    """One run for both tests below (a two-process run costs half a minute)."""
    return _launch("odd_batches", tmp_path_factory.mktemp("odd_batches"))


@pytest.mark.slow
def test_ddp_tap_names_with_newline_tab_and_lone_surrogate_agree(odd_batches):
    r0, r1 = odd_batches
    assert r0["steps"] == r1["steps"] == STEPS
    want = {"batch.image", "batch.aux\nimg", "batch.aux\timg", "batch." + os.fsdecode(b"cond\xff")}
    assert want <= set(r0["taps"]) and set(r0["taps"]) == set(r1["taps"]), (r0["taps"], r1["taps"])
    for rec in (r0, r1):
        for name in want:
            tap = rec["taps"][name]
            assert not tap["disabled"] and tap["steps_checked"] >= 2, (name, tap)  # each check reduced on both ranks
    assert not _keys(r0, "internal") and not _keys(r1, "internal"), (r0["findings"], r1["findings"])
    assert _keys(r0) == _keys(r1)


@pytest.mark.slow
def test_ddp_channel_count_differing_between_ranks_is_a_mismatch_finding(odd_batches):
    r0, r1 = odd_batches
    assert r0["steps"] == r1["steps"] == STEPS
    for rec in (r0, r1):
        assert not _keys(rec, "internal"), rec["findings"]
        (m,) = [f for f in rec["findings"] if f["kind"] == "mismatch" and f["where"] == "batch.photo"]
        assert m["observed"] == "channels differ between ranks (3 on rank 0, 1 on rank 1)", m
        assert rec["taps"]["batch.photo"]["disabled"]
        assert not rec["taps"]["0:input"]["disabled"] and not rec["taps"]["batch.image"]["disabled"]  # the others go on
    assert _keys(r0) == _keys(r1)


@pytest.mark.slow
def test_ddp_agreement_failure_on_one_rank_is_every_ranks_decision(tmp_path):
    r0, r1 = _launch("apply_fails", tmp_path)
    assert r0["steps"] == r1["steps"] == STEPS  # nobody hung in a collective the other skipped
    i0, i1 = _keys(r0, "internal"), _keys(r1, "internal")
    assert i0 == i1 and len(i0) == 1, (r0["findings"], r1["findings"])  # said once, in the same words
    assert i0[0][1] == "ddp" and "injected" in i0[0][2] and "on rank 1" in i0[0][2]
    for rec in (r0, r1):  # every check was skipped on both ranks alike
        assert all(t["steps_checked"] == 0 for t in rec["taps"].values()), rec["taps"]


if __name__ == "__main__":
    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package, as under pytest
    from helpers.procs import free_port

    mp.spawn(_worker, args=(sys.argv[1], sys.argv[2], free_port()), nprocs=WORLD, join=True)
