"""The one-read C kernel of the CPU updates (``rangewatch/stats/native.py``, on by default) against the
numpy float64 reference, bit for bit against the eager reductions, and its fallbacks (no compiler, a
failing build, a slot outside the counts).

The hypothesis property tests of ``test_stats.py`` (``helpers/stats_reference.py``) run again here with the kernel taking every float32
tensor (``MIN_NUMEL`` lowered to 1): their shapes (1 to 6 values per axis) exercise the scalar tails
and short rows, the tests below the 16-lane loops and slices of 1024.
"""

from __future__ import annotations

import ctypes
import logging
import shutil

import numpy as np
import pytest
import torch

from helpers import stats_reference
from helpers.stats_reference import channel_rows, check_fused_updates, check_summary, kernel_case, make_tensor, stats_for
from rangewatch.stats import native as stats_native
from rangewatch.stats.range_stats import RangeStats

pytestmark = pytest.mark.skipif(not stats_native.available(), reason=f"no C kernel here: {stats_native._broken}")


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(stats_native, "enabled", True)
    monkeypatch.setattr(stats_native, "MIN_NUMEL", 1)
    monkeypatch.setattr(stats_native, "MIN_ROW", 1)
    monkeypatch.setattr(stats_native, "_broken", None)  # restored after the test: a declined call switches it off
    return stats_native


def _case(**kw):
    return kernel_case(**{"shape": [2, 3, 8, 300], **kw})


@pytest.mark.parametrize("case", [
    _case(),  # NaN, infinities, float32 max, values on the bounds and on bin edges; 2400 per row: 2 slices + tail
    _case(specials=[], bounds=None, hist_bins=0, scale=1e3),  # finite: mean/std against numpy too
    _case(dtype=torch.float16, specials=["inf", "bound", "edge"], hist_bins=16, hist_range=(-2.0, 2.0)),
    _case(shape=[3, 2, 70], channel_dim=1, specials=["nan", "edge"], seed=5),  # 4 16-lane steps and a tail
    _case(shape=[4, 1, 4096], specials=["-inf", "bound"], hist_bins=8, seed=6),  # whole slices, one channel
    _case(layout="channels_last", seed=7),  # interleaved channels: 48 lanes, segments of positions
    _case(shape=[2, 5, 9, 31], layout="channels_last", specials=["nan", "inf", "edge"], bounds=None, seed=8),
    _case(shape=[1, 1, 3, 40000], specials=["nan", "-inf"], seed=11, bounds=None),  # one row cut in parts
], ids=["specials-imagenet-hist64", "finite-plain", "float16-hist16", "short-rows", "one-channel", "channels-last",
        "channels-last-5", "split-row"])
def test_native_updates_match_numpy(native, case):
    check_fused_updates(case, native, detail_calls=1 + bool(case["hist_bins"]))


def test_native_and_eager_paths_agree(native, monkeypatch):
    """Same counts, extremes and histogram bit for bit; moments within float32 rounding."""
    case = _case(seed=9)
    ref = stats_for(case)
    x = make_tensor(case, ref.hist_edges_for(3).numpy())
    y = make_tensor({**case, "seed": 10, "specials": []})
    got = stats_for(case)
    for s, on in ((ref, False), (got, True)):
        monkeypatch.setattr(stats_native, "enabled", on)
        before = stats_native.calls
        s.update(x, detail=True)
        s.update(y)
        s.update(y, moments=False)
        assert (stats_native.calls > before) == on
    a, b = ref.compute(), got.compute()
    for k in ("count", "min", "max", "finite_min", "finite_max", "nan", "inf", "below", "above", "detail_count",
              "hist", "hist_underflow", "hist_overflow", "nonfinite_seen"):
        torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=0, atol=0, equal_nan=True, msg=k)
    for k in ("mean", "std"):
        torch.testing.assert_close(getattr(b, k), getattr(a, k), rtol=1e-6, atol=0, equal_nan=True, msg=k)


def test_property_tests_of_test_stats_through_the_kernel(native):
    """``test_stats``' numpy-reference property tests, with the kernel taking every float32 tensor."""
    before = native.calls
    stats_reference.matches_numpy_reference()
    stats_reference.every_step_path_matches_numpy()
    stats_reference.steps_merge_and_halves_equal_whole()
    assert native.calls > before


def test_every_thread_count_gives_the_same_result(native):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 40, 70, generator=g) * 5
    x[2, 1, 3, 4] = float("nan")
    out = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            s = RangeStats(bounds="imagenet", hist_bins=32)
            s.update(x, detail=True)
            out.append(s.compute())
    finally:
        torch.set_num_threads(threads)
    for r in out[1:]:
        for k in ("min", "max", "finite_min", "finite_max", "nan", "below", "above", "hist", "mean", "std"):
            torch.testing.assert_close(getattr(r, k), getattr(out[0], k), rtol=0, atol=0, equal_nan=True, msg=k)


def test_a_slot_outside_the_counts_is_declined(native, caplog):
    rows = torch.zeros(1, 2, 64)
    one = torch.ones(2)
    # slots: clamp(floor(x), -1, 3) + offset, NaN at 4 + offset: channel 1's reach 5..10
    ok = native.histogram(rows, torch.zeros(2), one, torch.tensor([1.0, 6.0]), -1, 3, 4, 11)
    assert ok is not None and ok.tolist() == [0, 64, 0, 0, 0, 0, 64, 0, 0, 0, 0]
    with caplog.at_level(logging.WARNING, logger="rangewatch.stats.native"):
        assert native.histogram(rows, torch.zeros(2), one, torch.tensor([1.0, 7.0]), -1, 3, 4, 11) is None  # NaN slot 11
        assert native.histogram(rows, torch.zeros(2), one, torch.tensor([0.0, 6.0]), -1, 3, 4, 11) is None  # slot -1
    # a caller's bug: the kernel is off for the process from then on, said once
    assert native._broken and not native.usable(torch.zeros(1, 2, 64))
    assert len([r for r in caplog.records if "declined" in r.getMessage()]) == 1


def test_a_layout_reaching_past_the_tensor_is_declined_not_read(native):
    """The kernel checks a layout against the tensor's size before it reads anything."""
    lib = native.library()
    x = torch.zeros(4, 3, 100)
    p, threads = native._plan(x)
    out = torch.empty(2, p.slots)
    assert lib.rw_minmax(x.data_ptr(), p.ref, threads, out.data_ptr()) == 0
    for field, value in (("rowlen", 101), ("nseg", 13), ("total", 1199), ("cin", 17), ("seglen", 0)):
        bad = native._Layout(*(getattr(p.layout, f) for f, _ in native._Layout._fields_))
        setattr(bad, field, value)
        assert lib.rw_minmax(x.data_ptr(), ctypes.byref(bad), threads, out.data_ptr()) == -2, field


@pytest.mark.parametrize("why", ["no compiler", "build fails"])
def test_without_a_working_compiler_the_eager_path_runs(monkeypatch, tmp_path, caplog, why):
    monkeypatch.setattr(stats_native, "_lib", None)
    monkeypatch.setattr(stats_native, "_broken", None)
    monkeypatch.setattr(stats_native, "MIN_NUMEL", 1)
    monkeypatch.setattr(stats_native, "MIN_ROW", 1)
    monkeypatch.setenv("RANGEWATCH_CACHE_DIR", str(tmp_path))
    if why == "no compiler":
        monkeypatch.setattr(stats_native, "_compiler", lambda: None)
    else:
        monkeypatch.setattr(stats_native, "_compiler", lambda: shutil.which("false") or "/bin/false")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 256, generator=g)
    s = RangeStats(bounds="imagenet", hist_bins=8)
    with caplog.at_level(logging.INFO, logger="rangewatch.stats.native"):
        s.update(x, moments=False)
        s.update(x, detail=True)
        s.update(x)
    assert stats_native._broken and ("no C compiler" in stats_native._broken or "building" in stats_native._broken)
    assert len([r for r in caplog.records if "kernel is off" in r.getMessage()]) == 1
    assert not list(tmp_path.glob("*.so"))
    rows = channel_rows(x, 1)
    r = s.compute()
    np.testing.assert_array_equal(r.count.numpy(), np.full(3, 3 * rows.shape[1]))
    np.testing.assert_array_equal(r.min.numpy(), rows.min(axis=1))
    b = s.bounds_for(3)
    one = RangeStats(bounds="imagenet", hist_bins=8)
    one.update(x, detail=True)
    check_summary(one.compute(), rows, torch.float32, detail=True, bounds=(b[0].numpy(), b[1].numpy()), hist=True)


def test_where_the_kernel_applies(native, monkeypatch):
    rows = torch.zeros(2, 3, 1000)
    assert stats_native.usable(rows)
    assert not stats_native.usable(rows.double())  # float32 only (half types arrive converted)
    assert not stats_native.usable(rows.transpose(0, 2))  # not contiguous
    assert not stats_native.usable(torch.zeros(2, 3, 4, device="meta"))
    monkeypatch.setattr(stats_native, "MIN_ROW", 64)
    assert not stats_native.usable(torch.zeros(1000, 3, 2))  # short rows stay eager
    assert stats_native.usable(torch.zeros(1000, 3, 1))  # channels-last-like: interleaved channels
    assert not stats_native.usable(torch.zeros(1000, 17, 1))  # ... of at most MAX_INTERLEAVED channels
    assert stats_native.usable(torch.zeros(10, 3, 64))
    monkeypatch.setattr(stats_native, "MIN_NUMEL", 1 << 16)
    assert not stats_native.usable(rows)  # small tensors stay eager
    monkeypatch.setattr(stats_native, "MIN_NUMEL", 1)
    monkeypatch.setattr(stats_native, "enabled", False)
    assert not stats_native.usable(rows)
