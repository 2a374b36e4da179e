"""RangeStats against a numpy float64 reference: exactness, layouts, merge/sync, state_dict, no host sync.

CUDA-only checks (sync debug mode) live in ``test_stats_cuda.py``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from helpers.stats_reference import (IMAGENET_HI, IMAGENET_LO, assert_same_summary, channel_rows, check_summary,
                                     every_step_path_matches_numpy, forbid_sync, make_tensor, matches_numpy_reference,
                                     stats_for, steps_merge_and_halves_equal_whole)
from rangewatch.stats import range_stats as stats_mod
from rangewatch.stats.range_stats import RangeStats, RangeSummary

# ---------------------------------------------------------------------------- property tests
# (in tests/helpers/stats_reference.py: test_stats_native.py and _triton_interp.py run them again through a kernel)
test_matches_numpy_reference = matches_numpy_reference
test_steps_merge_and_halves_equal_whole = steps_merge_and_halves_equal_whole
test_every_step_path_matches_numpy = every_step_path_matches_numpy


def test_every_step_path_follows_layout_and_thread_changes():
    """The per-layout plan is keyed on shape, strides, dtype, device and thread count: a tensor of
    another layout, or the same after set_num_threads, is reduced correctly, not with a stale plan."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last),
          torch.randn(2, 3, 16, 8, generator=g), torch.randn(3, 3, 4, 4, generator=g).double()]
    old = torch.get_num_threads()
    s = RangeStats()
    s._init_states(3, torch.device("cpu"))  # every update below takes the planned path
    try:
        for threads in (1, 2, 1, 2):  # 3 channels on 2 threads: inner axis first, then the rows
            torch.set_num_threads(threads)
            for i, x in enumerate(xs):
                s.update(x, moments=False)
                one = RangeStats()
                one._init_states(3, x.device)
                one.update(x, moments=False)
                r = one.compute()
                np.testing.assert_array_equal(r.min.numpy(), channel_rows(x, 1).min(axis=1), err_msg=f"{threads} {i}")
                np.testing.assert_array_equal(r.max.numpy(), channel_rows(x, 1).max(axis=1), err_msg=f"{threads} {i}")
    finally:
        torch.set_num_threads(old)
    kinds = {(p.shape, p.one_kernel) for p in s._plans.values() if p is not None}
    assert ((4, 3, 64), True) in kinds and ((4, 3, 64), False) in kinds  # both plans were taken
    rows = np.concatenate([channel_rows(x, 1) for x in xs] * 4, axis=1)
    r = s.compute()
    np.testing.assert_array_equal(r.min.numpy(), rows.min(axis=1))
    np.testing.assert_array_equal(r.max.numpy(), rows.max(axis=1))
    np.testing.assert_array_equal(r.count.numpy(), np.full(3, rows.shape[1]))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    s.update(x * 2, moments=False)  # a tensor that requires grad: read, not recorded by autograd
    assert not s.min.requires_grad and s.min.grad_fn is None


# ---------------------------------------------------------------------------- specific cases
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8])
def test_large_layouts_against_numpy(layout, dtype):
    """Big enough for the grouped column reduction of channels-last and multi-chunk partial sums."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 40, 48, generator=g) * 2
    if dtype == torch.uint8:
        x = (x * 40 + 128).clamp(0, 255)
    x = x.to(dtype)
    if dtype.is_floating_point:
        x[1, 2, 3, 4] = float("nan")
        x[0, 1, 5, :3] = float("inf")
        x[3, 0, 0, 0] = -float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    s = RangeStats(bounds="imagenet", hist_bins=64)
    s.update(x)
    s.update(x, detail=True)
    r = s.compute()
    rows = channel_rows(x, 1)
    np.testing.assert_array_equal(r.count.numpy(), 2 * np.full(3, rows.shape[1]))
    single = RangeStats(bounds="imagenet", hist_bins=64)
    single.update(x, detail=True)
    b = single.bounds_for(3)
    check_summary(single.compute(), rows, dtype, detail=True, bounds=(b[0].numpy(), b[1].numpy()), hist=True)


def test_fp16_sum_does_not_overflow():
    x = torch.full((1, 1, 1000, 1000), 1000.0, dtype=torch.float16)  # sum 1e9, far past fp16's 65504
    s = RangeStats()
    s.update(x)
    r = s.compute()
    assert float(r.mean[0]) == pytest.approx(1000.0, rel=1e-6)
    assert float(r.std[0]) == pytest.approx(0.0, abs=1e-2)
    assert float(r.count[0]) == 1e6
    y = torch.full((2, 3, 300, 300), 60000.0, dtype=torch.float16)  # squares far past fp16 too
    s = RangeStats()
    s.update(y)
    assert torch.allclose(s.compute().mean, torch.full((3,), 60000.0, dtype=torch.float64))


def test_mean_std_precision_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 128, 128, generator=g) * 0.25 + 0.5
    s = RangeStats()
    s.update(x)
    r = s.compute()
    rows = channel_rows(x, 1)
    np.testing.assert_allclose(r.mean.numpy(), rows.mean(1), rtol=1e-6)
    np.testing.assert_allclose(r.std.numpy(), rows.std(1), rtol=1e-5)


def test_histogram_edge_semantics():
    """Bins are [e_i, e_{i+1}); below the first edge is underflow, at or above the last is overflow."""
    s = RangeStats(channel_dim=None, hist_bins=4, hist_range=(0.0, 4.0))
    edges = s.hist_edges_for(1)
    assert edges.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]  # exact for a power-of-two width
    x = torch.tensor([-math.inf, -1e-30, 0.0, -0.0, 0.5, float(np.nextafter(np.float32(1), np.float32(0))), 1.0, 3.999, 4.0, 4.5, math.inf, math.nan])
    s.update(x, detail=True)
    r = s.compute()
    assert r.hist.tolist() == [[4.0, 1.0, 0.0, 1.0]]
    assert r.hist_underflow.tolist() == [2.0] and r.hist_overflow.tolist() == [3.0]
    assert r.nan.tolist() == [1.0] and r.inf.tolist() == [2.0]


def test_histogram_edges_close_to_linspace():
    s = RangeStats(bounds="imagenet", hist_bins=64)
    e = s.hist_edges_for(3)
    lo, hi = s.bounds_for(3)
    span = hi - lo
    nominal = (lo - span / 2)[:, None] + (2 * span)[:, None] * torch.linspace(0, 1, 65, dtype=torch.float64)[None, :]
    assert (e[:, 1:] > e[:, :-1]).all()
    ulp = 2.0**-23 * nominal.abs().amax(dim=1, keepdim=True)  # float32 spacing at the range's magnitude
    assert ((e - nominal).abs() <= 4 * ulp).all()  # float32 rounding of origin and width


@pytest.mark.parametrize("hist_bins", [0, 64, 7])
def test_bounds_are_compared_as_float64(hist_bins):
    """A float32 value just past a bound that float32 cannot represent counts as outside (with a
    64-bin default-range histogram `below` comes from the bins: the bound is their edge 16)."""
    s = RangeStats(channel_dim=None, bounds=(IMAGENET_LO, IMAGENET_HI), hist_bins=hist_bins)
    if hist_bins == 64:
        e = np.float32(s.hist_edges_for(1)[0, 16].item())  # the smallest float32 >= the bound
        assert float(e) >= IMAGENET_LO > float(np.nextafter(e, np.float32(-np.inf)))
    lo32, hi32 = np.float32(IMAGENET_LO), np.float32(IMAGENET_HI)
    vals = [lo32, np.nextafter(lo32, np.float32(-np.inf)), np.nextafter(lo32, np.float32(np.inf)),
            hi32, np.nextafter(hi32, np.float32(-np.inf)), np.nextafter(hi32, np.float32(np.inf)), np.float32(0)]
    for dtype in (torch.float32, torch.float64, torch.float16):
        x = torch.tensor(np.array(vals, dtype=np.float32)).to(dtype)
        s.reset()
        s.update(x, detail=True)
        r = s.compute()
        v = x.double().numpy()
        assert r.below.tolist() == [float((v < IMAGENET_LO).sum())], dtype
        assert r.above.tolist() == [float((v > IMAGENET_HI).sum())], dtype


def test_integer_and_bool_inputs():
    x = torch.tensor([[0, 255, 7], [3, 3, 3]], dtype=torch.uint8)
    s = RangeStats(channel_dim=0, bounds=(1.0, 254.5), hist_bins=4, hist_range=(0.0, 256.0))
    s.update(x, detail=True)
    r = s.compute()
    assert r.min.tolist() == [0.0, 3.0] and r.max.tolist() == [255.0, 3.0]
    assert r.finite_min.tolist() == [0.0, 3.0] and r.nan.tolist() == [0.0, 0.0]
    assert r.below.tolist() == [1.0, 0.0] and r.above.tolist() == [1.0, 0.0]
    assert r.hist.tolist() == [[2.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]]
    assert r.integer and r.dtypes == ("uint8",)
    b = RangeStats(channel_dim=None)
    b.update(torch.tensor([True, False, True, True]))
    rb = b.compute()
    assert rb.mean.tolist() == [0.75] and rb.max.tolist() == [1.0] and not rb.nonfinite_seen.any()
    big = RangeStats(channel_dim=None)
    big.update(torch.tensor([2**40, -(2**40), 3], dtype=torch.int64))
    assert big.compute().mean.tolist() == [1.0]  # int64 sums are exact (float64), not float32
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, getattr(torch, "uint16", torch.int32)):
        y = torch.tensor([[1, 2, 3], [100, 7, 120]], dtype=dtype)
        s = RangeStats(channel_dim=1, bounds=(1.5, 100.0), hist_bins=4, hist_range=(0.0, 128.0))
        s.update(y, detail=True)
        check_summary(s.compute(), channel_rows(y, 1), dtype, detail=True,
                      bounds=(np.full(3, 1.5), np.full(3, 100.0)), hist=True)


def test_all_nonfinite_channel():
    x = torch.tensor([[math.nan, math.inf], [1.0, 2.0]])
    s = RangeStats(channel_dim=0, bounds=(0.0, 1.5))
    s.update(x, detail=True)
    r = s.compute()
    assert r.finite_min[0] == math.inf and r.finite_max[0] == -math.inf
    assert r.range_min[0] != r.range_min[0]  # falls back to the NaN plain minimum
    assert r.finite_min[1] == 1.0 and r.finite_max[1] == 2.0
    assert r.above.tolist() == [1.0, 1.0] and r.nonfinite.tolist() == [2.0, 0.0]


# ---------------------------------------------------------------------------- shapes and errors
def test_empty_tensors_are_ignored():
    s = RangeStats(bounds="unit", hist_bins=8)
    s.update(torch.empty(0, 3, 4, 4), detail=True)
    s.update(torch.empty(2, 0, 4, 4))
    r = s.compute()
    assert r.channels == 0 and r.empty and r.hist is None and r.count.numel() == 0
    x = torch.rand(2, 3, 4, 4)
    s.update(x, detail=True)
    before = s.compute()
    s.update(torch.empty(0, 3, 4, 4, dtype=torch.float16), detail=True)
    s.update(torch.empty(5, 0))  # a different (empty) channel count is nothing to count either
    after = s.compute()
    assert not after.empty
    assert_same_summary(after, before, torch.float32)


def test_missing_channel_dim_is_a_clear_error():
    s = RangeStats(channel_dim=1)
    with pytest.raises(ValueError, match=r"channel_dim=1 is out of range for a 1-D tensor.*channel_dim=None"):
        s.update(torch.ones(5))
    with pytest.raises(ValueError, match="out of range"):
        s.update(torch.ones(0))  # also when empty
    with pytest.raises(ValueError, match="out of range"):
        RangeStats(channel_dim=-3).update(torch.ones(2, 2))
    one = RangeStats(channel_dim=None)
    one.update(torch.ones(5))
    assert one.compute().channels == 1
    scalar = RangeStats(channel_dim=1)
    scalar.update(torch.tensor(2.5))  # a 0-d tensor is one channel
    r = scalar.compute()
    assert r.channels == 1 and r.mean.tolist() == [2.5]


def test_other_errors():
    s = RangeStats()
    s.update(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="saw 3 channels before and now 4"):
        s.update(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="states on cpu but got a tensor on meta"):
        s.update(torch.zeros(1, 3, 2, 2, device="meta"))
    with pytest.raises(TypeError, match="takes a tensor"):
        s.update([1.0, 2.0])
    with pytest.raises(TypeError, match="complex"):
        s.update(torch.zeros(1, 3, 2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="bounds give 2 channels but the tensor has 3"):
        RangeStats(bounds=((0.0, 0.0), (1.0, 1.0))).update(torch.zeros(1, 3, 2, 2), detail=True)
    with pytest.raises(ValueError, match="hist_bins"):
        RangeStats(hist_bins=-1)
    with pytest.raises(ValueError, match="hist_range"):
        RangeStats(hist_bins=4, hist_range=(1.0, 1.0))
    with pytest.raises(TypeError, match="channel_dim"):
        RangeStats(channel_dim=1.0)
    with pytest.raises(ValueError, match="cannot merge 3 channels into 2"):
        a = RangeStats()
        a.update(torch.zeros(1, 2, 2))
        a.merge(s)


# ---------------------------------------------------------------------------- state and sync
def _filled(seed: int, hist_bins: int = 16, n: int = 4) -> tuple[RangeStats, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g) * 2
    x[0, seed % 3, 0, 0] = float("nan") if seed % 2 else float("inf")
    s = RangeStats(bounds="symmetric", hist_bins=hist_bins)
    s.update(x)
    s.update(x, detail=True)
    return s, x


def test_state_dict_round_trip():
    s, x = _filled(3)
    sd = s.state_dict()
    assert "hist" in sd and sd["hist"].shape == (3, 18)
    kept = {k: v.clone() for k, v in sd.items()}
    fresh = RangeStats(bounds="symmetric", hist_bins=16)
    fresh.load_state_dict(sd)
    assert_same_summary(fresh.compute(), s.compute(), torch.float32)
    # and it keeps accumulating like the original
    fresh.update(x, detail=True)
    s.update(x, detail=True)
    assert_same_summary(fresh.compute(), s.compute(), torch.float32)
    for k, v in kept.items():  # the loaded tensors are not updated in place
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0, equal_nan=True)


def test_sync_dist_with_fake_gather():
    """torchmetrics' sync path without DDP: the gather returns two ranks' states."""
    a, xa = _filled(1)
    b, xb = _filled(2)
    ref = RangeStats(bounds="symmetric", hist_bins=16)
    for x in (xa, xb):
        ref.update(x)
        ref.update(x, detail=True)
    calls = []

    def fake_gather(t, group=None):
        calls.append(t.shape)
        return [t.clone(), b._pack()]

    a._sync_dist(fake_gather)
    assert len(calls) == 1  # all states in one gather
    r, w = a.compute(), ref.compute()
    assert_same_summary(r, w, torch.float32)
    ra, rb = _filled(1)[0].compute(), b.compute()  # the reductions, one by one
    same = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(r.min, torch.minimum(ra.min, rb.min), **same)
    torch.testing.assert_close(r.max, torch.maximum(ra.max, rb.max), **same)
    torch.testing.assert_close(r.finite_min, torch.minimum(ra.finite_min, rb.finite_min), **same)
    torch.testing.assert_close(r.nonfinite_seen, ra.nonfinite_seen | rb.nonfinite_seen, **same)
    for k in ("count", "nan", "inf", "below", "above", "hist", "hist_underflow"):
        torch.testing.assert_close(r[k], ra[k] + rb[k], **same)
    # a rank that saw no data sends an empty tensor and still receives the result
    empty = RangeStats(bounds="symmetric", hist_bins=16)
    empty._sync_dist(lambda t, group=None: [t, b._pack()])
    assert_same_summary(empty.compute(), b.compute(), torch.float32)
    # the public path: sync() only when distributed is available (forced here)
    c = _filled(1)[0]
    c.sync(dist_sync_fn=fake_gather, distributed_available=lambda: True)
    assert_same_summary(c.compute(), w, torch.float32)
    c.unsync()
    assert_same_summary(c.compute(), _filled(1)[0].compute(), torch.float32)


_TM_PRIVATE = ("_computed", "_is_synced", "_to_sync", "_should_unsync", "_update_count", "_cache")


def test_own_sync_without_torchmetrics_privates():
    """compute() syncs through the constructor's dist_sync_fn once and restores the local states;
    compute(sync=False) and sync_on_compute=False gather nothing; none of torchmetrics' private
    bookkeeping attributes is read (they are deleted here: nn.Module raises on a read)."""
    a, xa = _filled(1)
    b, xb = _filled(2)
    calls = []

    def fake_gather(t, group=None):
        calls.append(group)
        return [t.clone(), b._pack()]

    def make(**kw) -> RangeStats:
        s = RangeStats(bounds="symmetric", hist_bins=16, dist_sync_fn=fake_gather,
                       distributed_available_fn=lambda: True, **kw)
        s.update(xa)
        s.update(xa, detail=True)
        for name in _TM_PRIVATE:
            s.__dict__.pop(name, None)
        return s

    ref = RangeStats(bounds="symmetric", hist_bins=16)
    for x in (xa, xb):
        ref.update(x)
        ref.update(x, detail=True)
    s = make()
    assert_same_summary(s.compute(), ref.compute(), torch.float32)
    assert len(calls) == 1 and not s.synced
    assert_same_summary(s.compute(sync=False), a.compute(), torch.float32)  # local states, restored
    assert len(calls) == 1
    s.update(xb, moments=False)  # accumulation goes on from the local states
    assert s.count.tolist() == [2 * xa[:, 0].numel() + xb[:, 0].numel()] * 3
    off = make(sync_on_compute=False)
    assert_same_summary(off.compute(), a.compute(), torch.float32)
    assert len(calls) == 1
    assert_same_summary(off.compute(sync=True), ref.compute(), torch.float32)
    assert len(calls) == 2
    with off.sync_context():  # manual sync: compute uses the synced states without another gather
        assert off.synced
        assert_same_summary(off.compute(), ref.compute(), torch.float32)
    assert len(calls) == 3 and not off.synced
    assert_same_summary(off.compute(), a.compute(), torch.float32)
    with pytest.raises(RuntimeError, match="not synced"):
        off.unsync()
    off.sync()
    with pytest.raises(RuntimeError, match="already synced"):
        off.sync()
    off.reset()
    assert not off.synced and off.channels == 0
    not_dist = RangeStats(dist_sync_fn=fake_gather)  # not distributed: compute gathers nothing
    not_dist.update(xa)
    not_dist.compute()
    assert len(calls) == 4  # the off.sync() above
    with pytest.raises(TypeError, match="update"):
        not_dist(xa)


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(6, 3, 10, 10, generator=g)
        x[1, 1, 2, 2] = float("nan")
        x[4, 0, 0, 0] = float("inf")
        s = RangeStats(bounds="imagenet", hist_bins=32)
        part = x[:3] if rank == 0 else x[3:]
        s.update(part)
        s.update(part, detail=True)
        summary = s.compute()
        local_after = s.count.clone()
        local_only = s.compute(sync=False)  # no collective: this rank's states alone
        # second round: rank 1 saw nothing at all
        e = RangeStats(bounds="imagenet", hist_bins=32)
        if rank == 0:
            e.update(x, detail=True)
        summary_e = e.compute()
        torch.save({"summary": summary.__dict__, "local_count": local_after, "summary_e": summary_e.__dict__,
                    "local_only": local_only.__dict__},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_ddp_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, 10, 10, generator=g)
    x[1, 1, 2, 2] = float("nan")
    x[4, 0, 0, 0] = float("inf")
    ref = RangeStats(bounds="imagenet", hist_bins=32)
    ref.update(x)
    ref.update(x, detail=True)
    w = ref.compute()
    single = RangeStats(bounds="imagenet", hist_bins=32)
    single.update(x, detail=True)
    w_e = single.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert_same_summary(RangeSummary(**got["summary"]), w, torch.float32)
        assert got["local_count"].tolist() == [600.0] * 3  # unsynced again after compute
        mine = RangeStats(bounds="imagenet", hist_bins=32)
        part = x[:3] if rank == 0 else x[3:]
        mine.update(part)
        mine.update(part, detail=True)
        assert_same_summary(RangeSummary(**got["local_only"]), mine.compute(), torch.float32)
        assert_same_summary(RangeSummary(**got["summary_e"]), w_e, torch.float32)


# ---------------------------------------------------------------------------- no host sync
@pytest.mark.parametrize("hist_bins", [0, 64])
def test_update_never_reads_values_back(monkeypatch, hist_bins):
    """CPU proof: every value-reading entry point raises while update runs (first update included)."""
    inputs = [
        torch.randn(2, 3, 8, 8),
        torch.randn(2, 3, 8, 8).half(),
        torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last),
        torch.randn(2, 3, 8, 8, dtype=torch.float64),
        torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8),
    ]
    inputs[0][0, 0, 0, 0] = float("nan")
    accs = [RangeStats(bounds="imagenet", hist_bins=hist_bins) for _ in inputs]
    with monkeypatch.context() as m:
        forbid_sync(m)
        with pytest.raises(AssertionError):
            bool(torch.ones(1))  # the patch is active
        for acc, x in zip(accs, inputs):
            for _ in range(2):
                acc.update(x)
                acc.update(x, detail=True)
                acc.update(x, moments=False)  # the every-step path RangeWatch runs (planned, folded later)
            acc.nonfinite_seen  # folds the pending extremes: no read-back either
    for acc, x in zip(accs, inputs):
        b = acc.bounds_for(3)
        r = acc.compute()
        single = RangeStats(bounds="imagenet", hist_bins=hist_bins)
        single.update(x, detail=True)
        check_summary(single.compute(), channel_rows(x, 1), x.dtype, detail=True,
                      bounds=(b[0].numpy(), b[1].numpy()), hist=bool(hist_bins))
        assert r.count.tolist() == [6 * 2 * 64.0] * 3


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_update_runs_on_meta_tensors(memory_format):
    """The non-CPU path (what CUDA runs: index_add_ histogram, no cached scratch) on data-less
    tensors: any value read, data-dependent shape or CUDA-syncing op such as bincount fails here."""
    s = RangeStats(bounds="imagenet", hist_bins=64)
    for dtype in (torch.float32, torch.float16, torch.float64, torch.uint8):
        s.reset()
        x = torch.empty(2, 3, 8, 8, device="meta", dtype=dtype).contiguous(memory_format=memory_format)
        s.update(x)
        s.update(x, detail=True)
        s.update(x, moments=False)
        s.update(x, moments=False)
        assert s.min.device.type == "meta" and s.hist.shape == (3, 66)  # reading min folds the pending


def test_generic_device_path_on_cpu(monkeypatch):
    """The index_add_ histogram and uncached buffers (the CUDA code path) give the same counts."""
    case = dict(shape=[3, 3, 9, 7], dtype=torch.float32, channel_dim=1, layout="contiguous", seed=5, scale=1.0,
                specials=["nan", "inf", "-inf", "edge", "edge", "edge", "bound"], bounds=(IMAGENET_LO, IMAGENET_HI),
                hist_bins=16, hist_range=None)
    ref = stats_for(case)
    x = make_tensor(case, ref.hist_edges_for(3).numpy())
    ref.update(x, detail=True)
    monkeypatch.setattr(stats_mod, "_bincount_ok", lambda device: False)
    monkeypatch.setattr(stats_mod, "_SCRATCH_MAX", 0)
    for dtype in (torch.float32, torch.float64, torch.float16):
        gen = stats_for(case)
        gen.update(x.to(dtype), detail=True)
        if dtype == torch.float32:
            assert_same_summary(gen.compute(), ref.compute(), dtype)
        b = gen.bounds_for(3)
        check_summary(gen.compute(), channel_rows(x.to(dtype), 1), dtype, detail=True,
                      bounds=(b[0].numpy(), b[1].numpy()), hist=True)


def test_moments_false_keeps_min_max_count_and_takes_mean_from_moment_updates():
    a = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    b = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 10 - 5
    s = RangeStats()
    s.update(a)                    # with moments
    s.update(b, moments=False)     # min/max/count/NaN flag only
    r = s.compute()
    both = np.concatenate([a.double().numpy(), b.double().numpy()])
    np.testing.assert_array_equal(r.min.numpy(), both.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(r.max.numpy(), both.max(axis=(0, 2, 3)))
    np.testing.assert_array_equal(r.count.numpy(), [8 * 64] * 3)
    np.testing.assert_allclose(r.mean.numpy(), a.double().numpy().mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(r.std.numpy(), a.double().numpy().std(axis=(0, 2, 3)), rtol=1e-5)
    c = torch.full((1, 3, 4, 4), float("nan"))
    s.update(c, moments=False)
    assert s.compute().nonfinite_seen.all()
    only = RangeStats()
    only.update(b, moments=False)
    assert torch.isnan(only.compute().mean).all()  # no moments seen: mean unknown, not 0


@pytest.mark.parametrize("hist_bins", [0, 16])
def test_reset_with_bounds_equals_a_fresh_accumulator(hist_bins):
    """What the callback does once a tap's convention is known: same results as a new RangeStats."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    reused = RangeStats(hist_bins=hist_bins)
    reused.update(torch.rand(2, 3, 8, 8, generator=g) * 9, detail=True)  # old window, old (no) bounds
    reused.reset_with_bounds("unit")
    fresh = RangeStats(bounds="unit", hist_bins=hist_bins)
    for s in (reused, fresh):
        s.update(x, detail=True)
    a, b = reused.compute(), fresh.compute()
    assert_same_summary(a, b, torch.float32)
    rows = channel_rows(x, 1)
    np.testing.assert_array_equal(a.below.numpy(), (rows < 0).sum(axis=1))  # [0, 1] bounds, not none
    assert a.count.tolist() == [4 * 256] * 3


def test_pending_every_step_updates_reach_every_reader():
    """The every-step path defers folding its extremes into the states; whatever reads the states
    (compute, state_dict, sync, merge, reset, the NaN flag, .to()) sees them, and more than
    _PENDING_MAX updates in a row fold on their own."""
    g = torch.Generator().manual_seed(9)
    xs = [torch.rand(2, 3, 8, 8, generator=g) * (i + 1) - i for i in range(stats_mod._PENDING_MAX + 5)]
    xs[7][1, 2, 3, 4] = float("nan")  # folded on the way
    xs[-1][0, 0, 1, 1] = float("inf")  # still pending at the end
    rows = np.concatenate([channel_rows(x, 1) for x in xs], axis=1)

    def filled() -> RangeStats:
        s = RangeStats()
        s._init_states(3, torch.device("cpu"))
        for x in xs:
            s.update(x, moments=False)
        return s

    s = filled()
    assert len(s._pending) == len(xs) - stats_mod._PENDING_MAX  # folded once on the way
    with np.errstate(invalid="ignore"):
        want_min, want_max = rows.min(axis=1), rows.max(axis=1)
    r = s.compute()
    np.testing.assert_array_equal(r.min.numpy(), want_min)
    np.testing.assert_array_equal(r.max.numpy(), want_max)
    np.testing.assert_array_equal(r.count.numpy(), np.full(3, rows.shape[1]))
    assert filled().nonfinite_seen.tolist() == [1.0, 0.0, 1.0]
    sd = filled().state_dict()
    np.testing.assert_array_equal(sd["max"].numpy(), want_max)
    np.testing.assert_array_equal(sd["count"].numpy(), np.full(3, rows.shape[1]))
    other = filled()
    merged = filled()
    merged.merge(other)
    np.testing.assert_array_equal(merged.compute().count.numpy(), np.full(3, 2 * rows.shape[1]))
    np.testing.assert_array_equal(merged.compute().min.numpy(), want_min)
    synced = filled()
    synced._sync_dist(lambda t, group=None: [t.clone(), filled()._pack()])
    np.testing.assert_array_equal(synced.compute().count.numpy(), np.full(3, 2 * rows.shape[1]))
    cleared = filled()
    cleared.reset()
    assert not cleared._pending and cleared.compute().channels == 0
    moved = filled().to(torch.float64)  # torchmetrics' _apply reads and reassigns every state
    np.testing.assert_array_equal(moved.compute().max.numpy(), want_max)
    loaded = filled()
    loaded.load_state_dict(RangeStats().state_dict() | {k: v for k, v in sd.items()})
    np.testing.assert_array_equal(loaded.compute().count.numpy(), np.full(3, rows.shape[1]))  # pending dropped, not added


@pytest.mark.parametrize("prep", [lambda t: t, lambda t: t.contiguous(memory_format=torch.channels_last),
                                  lambda t: t.transpose(0, -1).contiguous().transpose(0, -1), lambda t: t[:, ::2]],
                         ids=["contiguous", "channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("channel_dim", [1, None, 0, -1])
def test_detail_value_sample_does_not_depend_on_layout(prep, channel_dim):
    """The value sample of detail updates (gathered by storage offsets, without a copy of x) holds
    the same values whatever the memory layout of x."""
    from rangewatch.stats.evidence import ValueSample

    x = prep(torch.randn(4, 6, 17, 9, generator=torch.Generator().manual_seed(3)))
    a, b = ValueSample(per_update=300, channel_dim=channel_dim), ValueSample(per_update=300, channel_dim=channel_dim)
    a.update(x)
    b.update(x.contiguous())
    ref = b.take()
    np.testing.assert_array_equal(a.take(), ref)
    flat = channel_rows(x, channel_dim)
    assert np.isin(ref, flat).all() and ref.shape == (flat.shape[0], min(300, flat.shape[1]))
