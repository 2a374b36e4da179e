"""Runs only under Triton's interpreter on CPU (``TRITON_INTERPRET=1 RANGEWATCH_TRITON_CPU=1``,
set before triton is imported): ``tests/stats/test_stats_triton.py`` starts it in a subprocess together
with the numpy-reference property tests of ``test_stats.py``, which then go through the one-read
kernels for float32/float16/bfloat16 inputs. This module checks that they really did (no silent
eager fallback) and adds cases aimed at the kernels' blocking (many programs per row, rows longer
than one block, short inner axes of several columns, NaN in one slice only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.stats_reference import SETTINGS, cases, channel_rows, channels_of, check_summary, make_tensor, stats_for
from rangewatch.stats import triton as stats_triton
from rangewatch.stats.range_stats import RangeStats

pytestmark = pytest.mark.skipif(not stats_triton.INTERPRET_ON_CPU,
                                reason="needs TRITON_INTERPRET=1 RANGEWATCH_TRITON_CPU=1 before triton is imported")
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@settings(**{**SETTINGS, "max_examples": 40})
@given(cases(), st.sampled_from(KERNEL_DTYPES), st.booleans())
def test_kernel_path_matches_numpy(case, dtype, detail):
    case = {**case, "dtype": dtype}
    s = stats_for(case)
    c = channels_of(case)
    x = make_tensor(case, s.hist_edges_for(c).numpy() if case["hist_bins"] else None)
    before = stats_triton.launches
    s.update(x, detail=detail)
    s.update(x, moments=False)  # the every-step plan (the kernel without moments)
    assert stats_triton.launches == before + 2 and not stats_triton._broken
    r = s.compute()
    rows = channel_rows(x, case["channel_dim"])
    one = stats_for(case)
    one.update(x, detail=detail)
    b = s.bounds_for(c)
    check_summary(one.compute(), rows, dtype, detail=detail,
                  bounds=None if b is None else (b[0].numpy(), b[1].numpy()), hist=bool(case["hist_bins"]) and detail)
    np.testing.assert_array_equal(r.count.numpy(), 2 * np.full(c, rows.shape[1]))


@pytest.mark.parametrize("shape,memory_format", [
    ((2, 3, 70, 50), torch.contiguous_format),  # rows of 3500: several blocks, several splits
    ((1, 1, 5000, 1), torch.contiguous_format),  # one row split over programs
    ((3, 5, 11, 13), torch.channels_last),  # short inner axis: whole-pixel tiles over 5 columns
    ((2, 4, 3, 7, 5), torch.channels_last_3d),
    ((6, 7, 3), torch.contiguous_format),  # B=3: tiles of C*B=21 columns
])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_kernel_blocking_against_numpy(shape, memory_format, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    flat = x.view(-1)
    flat[flat.numel() // 2] = float("nan")  # one slice (program) only
    flat[7] = float("inf")
    flat[-1] = -float("inf")
    x = x.contiguous(memory_format=memory_format)
    for moments in (True, False):
        s = RangeStats()
        before = stats_triton.launches
        s.update(x, moments=moments)
        s.update(x.clone(memory_format=torch.contiguous_format), moments=moments)
        assert stats_triton.launches == before + 2
        rows = np.concatenate([channel_rows(x, 1)] * 2, axis=1)
        r = s.compute()
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(r.min.numpy(), rows.min(axis=1))
            np.testing.assert_array_equal(r.max.numpy(), rows.max(axis=1))
        np.testing.assert_array_equal(r.nonfinite_seen.numpy(), ~np.isfinite(rows).all(axis=1))
        y = x.nan_to_num(0.0, 0.0, 0.0)
        t = RangeStats()
        t.update(y)
        check_summary(t.compute(), channel_rows(y, 1), dtype, detail=False)


def test_kernel_partials_fold_on_the_way(monkeypatch):
    """Pending kernel partials (extremes and moments) fold when the list is full and when read."""
    from rangewatch.stats import range_stats as stats_mod

    monkeypatch.setattr(stats_mod, "_PENDING_MAX", 3)
    g = torch.Generator().manual_seed(11)
    xs = [(torch.rand(2, 3, 9, 40, generator=g) * (i + 1) - i).to(KERNEL_DTYPES[i % 3]) for i in range(8)]
    xs[4][1, 2, 3, 4] = float("nan")
    s = RangeStats()
    for i, x in enumerate(xs):
        s.update(x, moments=i % 2 == 0)
    assert len(s._pending) == 2 and len(s._pending_moments) == 1  # folded twice on the way
    rows = np.concatenate([channel_rows(x, 1) for x in xs], axis=1)
    with np.errstate(invalid="ignore"):
        want_min, want_max = rows.min(axis=1), rows.max(axis=1)
    r = s.compute()
    np.testing.assert_array_equal(r.min.numpy(), want_min)
    np.testing.assert_array_equal(r.max.numpy(), want_max)
    np.testing.assert_array_equal(r.count.numpy(), np.full(3, rows.shape[1]))
    with_m = np.concatenate([channel_rows(x, 1) for x in xs[0::2]], axis=1)
    ok = np.isfinite(with_m).all(axis=1)
    np.testing.assert_allclose(r.mean.numpy()[ok], with_m.mean(axis=1)[ok], rtol=1e-5)
    np.testing.assert_allclose(r.std.numpy()[ok], with_m.std(axis=1)[ok], rtol=1e-4)
    assert np.isnan(r.mean.numpy()[~ok]).all()
