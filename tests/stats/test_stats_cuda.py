"""RangeStats on CUDA: ``update`` must never synchronise with the host.

Both kinds of ``update`` (every-step and ``detail=True`` with bounds and a histogram) run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising CUDA call
(``.item()``, blocking copies, ``bincount``, ``nonzero``, ...); the first update (state and
constant creation) is inside the guarded region too. ``compute()`` is then checked against the
numpy float64 reference of ``test_stats.py``. Skipped without a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.stats_reference import channel_rows, check_summary
from rangewatch.stats.range_stats import RangeStats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


def _input(dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 48, generator=g) * 2
    if dtype == torch.uint8:
        x = (x * 40 + 128).clamp(0, 255)
    x = x.to(dtype)
    if dtype.is_floating_point:
        x[0, 0, 0, 0] = float("nan")
        x[1, 1, 2, :4] = float("inf")
        x[2, 2, 3, 3] = -float("inf")
        x[3, 0, 4, 4] = -2.1179039301310043  # on an imagenet bound (rounded to the dtype)
    x = x.cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8],
                         ids=lambda d: str(d).replace("torch.", ""))
def test_update_never_syncs_and_matches_numpy(dtype, channels_last):
    x = _input(dtype, channels_last)
    every = RangeStats(bounds="imagenet")
    detail = RangeStats(bounds="imagenet", hist_bins=64)
    minmax = RangeStats(bounds="imagenet")
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            every.update(x)
            detail.update(x, detail=True)
            minmax.update(x, moments=False)  # what RangeWatch runs every step (planned, folded on read)
        minmax.update(x, moments=False)
        minmax.nonfinite_seen  # folds the pending extremes on the device
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert every.min.device.type == "cuda" and detail.hist.device.type == "cuda"

    rows = channel_rows(x, 1)
    b = detail.bounds_for(3)
    bounds = (b[0].numpy(), b[1].numpy())
    r = every.compute()
    assert r.count.tolist() == [2.0 * rows.shape[1]] * 3
    single_every = RangeStats(bounds="imagenet")
    single_every.update(x)
    check_summary(single_every.compute(), rows, dtype, detail=False)
    single = RangeStats(bounds="imagenet", hist_bins=64)
    single.update(x, detail=True)
    check_summary(single.compute(), rows, dtype, detail=True, bounds=bounds, hist=True)
    rd = detail.compute()
    assert torch.equal(rd.hist, 2 * single.compute().hist)
    rm, rs = minmax.compute(), single.compute()
    assert rm.count.tolist() == [3.0 * rows.shape[1]] * 3
    torch.testing.assert_close(rm.min, rs.min, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(rm.max, rs.max, rtol=0, atol=0, equal_nan=True)


def test_sync_debug_mode_is_active():
    """The guard itself works on this machine: a bincount on CUDA raises under it."""
    x = torch.zeros(4, dtype=torch.int64, device="cuda")
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.bincount(x)
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("shape", [(16, 3, 512, 512), (2, 4, 64, 64), (5, 3, 7, 9)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d).replace("torch.", ""))
def test_one_read_kernel_runs_and_matches_numpy(dtype, channels_last, shape):
    """On CUDA, float32/16 and bfloat16 in both layouts take the Triton kernel (not the eager
    fallback), with exact extremes and float64-close moments against numpy, and no host sync."""
    from rangewatch.stats import triton as stats_triton

    if stats_triton.triton is None:
        pytest.skip("triton is not installed")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    x.view(-1)[x.numel() // 3] = float("inf")
    x = x.cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    clean = x.nan_to_num(0.0, 0.0, 0.0)
    every, minmax = RangeStats(), RangeStats()
    before = stats_triton.launches
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        every.update(clean)
        minmax.update(x, moments=False)
        minmax.update(x, moments=False)
        minmax.nonfinite_seen  # folds on the device
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert stats_triton.launches == before + 3 and not stats_triton._broken
    check_summary(every.compute(), channel_rows(clean, 1), dtype, detail=False)
    rows = channel_rows(x, 1)
    r = minmax.compute()
    assert r.min.tolist() == rows.min(axis=1).tolist() and r.max.tolist() == rows.max(axis=1).tolist()
    assert r.nonfinite_seen.tolist() == (~np.isfinite(rows).all(axis=1)).tolist()
    assert r.count.tolist() == [2.0 * rows.shape[1]] * shape[1]
