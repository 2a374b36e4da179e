"""The opt-in compiled CPU updates (``rangewatch/stats/inductor.py``) against the numpy float64
reference and against the eager path; and the fallback when compiling fails.

Compiling takes seconds per function and shape, so these use few shapes and are marked slow.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from helpers.stats_reference import channel_rows, check_fused_updates, check_summary, kernel_case, make_tensor, stats_for
from rangewatch.stats import inductor as stats_inductor
from rangewatch.stats.range_stats import RangeStats

pytest.importorskip("torch._inductor")


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(stats_inductor, "enabled", True)
    monkeypatch.setattr(stats_inductor, "MIN_NUMEL", 1)
    monkeypatch.setattr(stats_inductor, "_broken", None)
    return stats_inductor


def _case(**kw):
    return kernel_case(**{"shape": [2, 3, 4, 256], **kw})


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    _case(),  # NaN, infinities, float32 max, values on the bounds and on bin edges
    _case(specials=[], bounds=None, hist_bins=0, scale=1e3),  # finite: mean/std against numpy too
    _case(dtype=torch.float16, specials=["inf", "bound", "edge"], hist_bins=16, hist_range=(-2.0, 2.0)),
], ids=["specials-imagenet-hist64", "finite-plain", "float16-hist16"])
def test_compiled_updates_match_numpy(compiled, case):
    check_fused_updates(case, compiled, detail_calls=1)


@pytest.mark.slow
def test_compiled_and_eager_paths_agree(compiled, monkeypatch):
    """Same counts, extremes and histogram bit for bit; moments within float32 rounding."""
    case = _case(seed=9)  # the shape of the other tests: their compiled functions are reused
    ref = stats_for(case)
    x = make_tensor(case, ref.hist_edges_for(3).numpy())
    y = make_tensor({**case, "seed": 10, "specials": []})
    for s, on in ((ref, False), (stats_for(case), True)):
        monkeypatch.setattr(stats_inductor, "enabled", on)
        s.update(x, detail=True)
        s.update(y)
        s.update(y, moments=False)
    monkeypatch.setattr(stats_inductor, "enabled", True)
    a, b = ref.compute(), s.compute()
    for k in ("count", "min", "max", "finite_min", "finite_max", "nan", "inf", "below", "above", "detail_count",
              "hist", "hist_underflow", "hist_overflow", "nonfinite_seen"):
        torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=0, atol=0, equal_nan=True, msg=k)


def test_compile_failure_falls_back_to_eager_once(compiled, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(stats_inductor, "_compiled", {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 256, generator=g)
    s = RangeStats(bounds="imagenet", hist_bins=8)
    with caplog.at_level(logging.WARNING, logger="rangewatch.stats.inductor"):
        s.update(x, moments=False)  # the every-step plan: fails, re-plans eagerly
        s.update(x, detail=True)
        s.update(x)
    assert stats_inductor._broken and "no C++ compiler" in stats_inductor._broken
    assert len([r for r in caplog.records if "compiled CPU statistics failed" in r.getMessage()]) == 1
    b = s.bounds_for(3)
    rows = channel_rows(x, 1)
    r = s.compute()
    np.testing.assert_array_equal(r.count.numpy(), np.full(3, 3 * rows.shape[1]))
    one = RangeStats(bounds="imagenet", hist_bins=8)
    one.update(x, detail=True)
    check_summary(one.compute(), rows, torch.float32, detail=True, bounds=(b[0].numpy(), b[1].numpy()), hist=True)
    np.testing.assert_array_equal(r.min.numpy(), rows.min(axis=1))


def test_where_the_compiled_path_applies(compiled, monkeypatch):
    x = torch.zeros(2, 3, 4, 256)
    rows = x.view(2, 3, -1)
    assert stats_inductor.chunk_for(rows) == 1024
    assert stats_inductor.chunk_for(rows.double()) == 0  # float32 only (half types arrive converted)
    assert stats_inductor.chunk_for(torch.zeros(2, 3, 1000)) == 0  # no slice length divides B
    assert stats_inductor.chunk_for(torch.zeros(16, 3, 1)) == 0  # channels-last-like: short inner axis
    monkeypatch.setattr(stats_inductor, "MIN_NUMEL", 1 << 20)
    assert stats_inductor.chunk_for(rows) == 0  # small tensors stay eager
    monkeypatch.setattr(stats_inductor, "MIN_NUMEL", 1)
    monkeypatch.setattr(stats_inductor, "enabled", False)
    assert stats_inductor.chunk_for(rows) == 0
