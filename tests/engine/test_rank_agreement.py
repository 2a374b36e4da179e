"""The engine's cross-rank agreement as a collaborator (rangewatch/engine/agreement.py), without Lightning or an
engine: two gloo processes with different taps agree on one list (a tap one rank lacks is added empty, a tap switched
off on one rank is switched off on both, a channel count that differs is a finding on both), and the statistics reduce
across the ranks through the sync function."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers.procs import free_port, spawn_ranks
from rangewatch.engine.agreement import RankAgreement, stats_sync_fn
from rangewatch.engine.collectives import SingleProcess


def test_one_process_needs_no_sync_and_agrees_with_itself():
    from rangewatch.engine.reporter import FindingsReporter
    from rangewatch.engine.surroundings import Surroundings
    from rangewatch.engine.tapset import _Tap
    from rangewatch.stats.range_stats import RangeStats

    assert stats_sync_fn(SingleProcess()) is None
    env = Surroundings(lambda level, text: None)
    rep = FindingsReporter("log", env)
    taps = {"batch.a": _Tap("batch.a", 1, RangeStats(channel_dim=1))}
    early: list = []
    assert RankAgreement(env, rep).agree_on_taps(taps, lambda name, cd: pytest.fail("no tap is missing"), early)
    assert early == [] and rep.log.findings == [] and not taps["batch.a"].disabled


def _worker(rank, port, out):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    import torch.distributed as dist

    from rangewatch.engine.collectives import TorchDistributed
    from rangewatch.engine.reporter import FindingsReporter
    from rangewatch.engine.surroundings import Surroundings
    from rangewatch.engine.tapset import _Tap
    from rangewatch.stats.range_stats import RangeStats

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    env = Surroundings(lambda level, text: None)
    env.collectives = TorchDistributed()
    rep = FindingsReporter("log", env)
    sync = stats_sync_fn(env.collectives)

    def tap(name, x=None, channel_dim=1):
        t = _Tap(name, channel_dim, RangeStats(channel_dim=channel_dim, dist_sync_fn=sync))
        if x is not None:
            t.stats.update(x, detail=True)
            t.fed = True
        return t

    # rank 0: RGB at batch.a and a tap of its own; rank 1: grayscale at batch.a and a tap it switched off
    taps = {"batch.a": tap("batch.a", torch.rand(2, 3 if rank == 0 else 1, 4, 4)),
            "batch.c": tap("batch.c", torch.full((2, 3, 4, 4), float(rank)) + torch.linspace(0, 1, 16).reshape(4, 4))}
    if rank == 0:
        taps["batch.only0"] = tap("batch.only0", torch.rand(2, 3, 4, 4))
    else:
        taps["batch.b"] = tap("batch.b")
        taps["batch.b"].disabled, taps["batch.b"].error = True, "ValueError: x"

    def placeholder(name, channel_dim):
        taps[name] = tap(name, None, channel_dim)
        return taps[name]

    early = []
    agreed = RankAgreement(env, rep).agree_on_taps(taps, placeholder, early)
    s = taps["batch.c"].stats.compute()  # reduced over both ranks through the sync function
    record = {
        "agreed": agreed,
        "taps": {n: [t.disabled, t.error] for n, t in sorted(taps.items())},
        "early": [[f.kind, f.where, f.observed] for f in early],
        "internal": [[f.where, f.observed] for f in rep.log.findings],
        "c": [float(s.range_min.min()), float(s.range_max.max()), float(s.mean.mean())],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(record, fh)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_one_list_of_taps(tmp_path):
    r0, r1 = spawn_ranks(_worker, (free_port(), str(tmp_path)), tmp_path, 2, 120, "the two-process agreement")
    differ = "its channel count differs between ranks"
    assert r0["agreed"] and r1["agreed"]
    assert r0["taps"] == {"batch.a": [True, differ], "batch.b": [True, "RuntimeError: on rank 1: ValueError: x"],
                          "batch.c": [False, None], "batch.only0": [False, None]}
    assert r1["taps"] == {"batch.a": [True, differ], "batch.b": [True, "ValueError: x"], "batch.c": [False, None],
                          "batch.only0": [False, None]}  # rank 0's own tap, added empty on rank 1
    assert r0["early"] == r1["early"] == [["mismatch", "batch.a", "channels differ between ranks (3 on rank 0, 1 on rank 1)"]]
    assert r0["internal"] == [["batch.b", "RuntimeError: on rank 1: ValueError: x"]] and r1["internal"] == []
    # batch.c: rank r holds r + linspace(0, 1, 16): over both ranks min 0, max 2, mean (0.5 + 1.5) / 2
    assert r0["c"] == r1["c"] == pytest.approx([0.0, 2.0, 1.0])
