"""The numpy float64 reference of ``RangeStats`` (``tests/stats/``): drawn tensors (every dtype, layout
and special value), the per-channel checks against numpy, and the three property tests that
``test_stats.py`` runs and ``test_stats_native.py`` / ``_triton_interp.py`` run again through a kernel."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangewatch.stats.range_stats import RangeStats, RangeSummary

SETTINGS = dict(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

DTYPES = [torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: relative tolerance of mean (scaled by mean|x|) and variance (scaled by mean x^2): float32
#: accumulation for float inputs up to 32 bits, float64 otherwise
RTOL = {torch.float64: 1e-10, torch.uint8: 1e-10, torch.bool: 1e-10}
RTOL_DEFAULT = 1e-5
IMAGENET_LO, IMAGENET_HI = -2.1179039301310043, 2.2489082969432315  # not float32 numbers


# ---------------------------------------------------------------------------- reference
def channel_rows(x: torch.Tensor, channel_dim: int | None) -> np.ndarray:
    """``x`` as a float64 numpy array of shape (C, N) (exact for every dtype tested here)."""
    a = x.detach().to(torch.float64).cpu().numpy()
    if channel_dim is None or a.ndim == 0:
        return a.reshape(1, -1)
    return np.moveaxis(a, channel_dim, 0).reshape(a.shape[channel_dim], -1)


def check_summary(r: RangeSummary, rows: np.ndarray, dtype: torch.dtype, *, detail: bool,
                  bounds: tuple[np.ndarray, np.ndarray] | None = None, hist: bool = False) -> None:
    c, n = rows.shape
    assert r.channels == c
    np.testing.assert_array_equal(r.count.numpy(), np.full(c, n))
    rtol = RTOL.get(dtype, RTOL_DEFAULT)
    for ch in range(c):
        v = rows[ch]
        nan, fin = np.isnan(v), np.isfinite(v)
        if nan.any():
            assert math.isnan(r.min[ch]) and math.isnan(r.max[ch]) and math.isnan(r.mean[ch])
        else:
            assert float(r.min[ch]) == v.min() and float(r.max[ch]) == v.max()
        assert bool(r.nonfinite_seen[ch]) == bool((~fin).any())
        # float32 sums of squares overflow past ~1.8e19 (documented), float64 ones past ~1e154
        limit = 1e150 if dtype == torch.float64 else 1e18
        big = fin.any() and np.abs(v[fin]).max() > limit
        if fin.all() and not big:
            mean, var = v.mean(), v.var()
            # absolute floors: float32 accumulation loses values (and squares) below its range
            atol_m, atol_v = (1e-300, 1e-300) if rtol < RTOL_DEFAULT else (1e-44, 1e-37)
            assert abs(float(r.mean[ch]) - mean) <= rtol * np.abs(v).mean() + atol_m, (ch, float(r.mean[ch]), mean)
            assert abs(float(r.std[ch]) ** 2 - var) <= rtol * (v * v).mean() + atol_v, (ch, float(r.std[ch]) ** 2, var)
        elif not fin.all():
            assert not math.isfinite(r.mean[ch])
        if not detail:
            continue
        assert float(r.detail_count[ch]) == n
        f = v[fin]
        assert float(r.finite_min[ch]) == (f.min() if f.size else math.inf)
        assert float(r.finite_max[ch]) == (f.max() if f.size else -math.inf)
        assert float(r.nan[ch]) == nan.sum()
        assert float(r.inf[ch]) == np.isinf(v).sum()
        assert float(r.nonfinite[ch]) == (~fin).sum()
        if bounds is not None:
            assert float(r.below[ch]) == (v < bounds[0][ch]).sum(), ("below", ch)
            assert float(r.above[ch]) == (v > bounds[1][ch]).sum(), ("above", ch)
        if hist:
            e = r.hist_edges[ch].numpy()
            w = v[~nan]
            assert float(r.hist_underflow[ch]) == (w < e[0]).sum()
            assert float(r.hist_overflow[ch]) == (w >= e[-1]).sum()
            inside = w[(w >= e[0]) & (w < e[-1])]  # numpy closes its last bin; ours is half-open
            np.testing.assert_array_equal(r.hist[ch].numpy(), np.histogram(inside, bins=e)[0])


# ---------------------------------------------------------------------------- data
def _dtype_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max) if dtype.is_floating_point else 255.0


@st.composite
def cases(draw):
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 6 if ndim <= 3 else 4)) for _ in range(ndim)]
    dtype = draw(st.sampled_from(DTYPES))
    channel_dim = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1)))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1.0, 100.0, 3e4]))
    specials = draw(st.lists(st.sampled_from(["nan", "inf", "-inf", "zero", "negzero", "max", "bound", "edge", "tiny"]),
                             max_size=6))
    bounds = draw(st.sampled_from([None, (0.0, 1.0), (IMAGENET_LO, IMAGENET_HI), (-1.0, 1.0), (-3.0, 250.0)]))
    hist_bins = draw(st.sampled_from([0, 0, 1, 4, 7, 16]))
    hist_range = draw(st.sampled_from([None, None, (-2.0, 2.0), (-0.3, 0.7), (0.0, 256.0)]))
    return dict(shape=shape, dtype=dtype, channel_dim=channel_dim, layout=layout, seed=seed, scale=scale,
                specials=specials, bounds=bounds, hist_bins=hist_bins, hist_range=hist_range)


def kernel_case(shape: list[int], **kw) -> dict:
    """A fixed case for the kernel tests (``test_stats_native.py``, ``test_stats_inductor.py``): float32 of
    ``shape``, channels on dim 1, every special value (NaN, infinities, the dtype's max, values on the bounds and
    on bin edges, a subnormal, -0.0), ImageNet bounds and 64 bins; ``kw`` overrides any of them."""
    case = dict(shape=shape, dtype=torch.float32, channel_dim=1, layout="contiguous", seed=3, scale=3.0,
                specials=["nan", "inf", "-inf", "max", "bound", "bound", "edge", "edge", "tiny", "negzero"],
                bounds=(IMAGENET_LO, IMAGENET_HI), hist_bins=64, hist_range=None)
    case.update(kw)
    return case


def make_tensor(case: dict, edges: np.ndarray | None = None) -> torch.Tensor:
    rng = np.random.default_rng(case["seed"])
    dtype, shape = case["dtype"], case["shape"]
    if dtype == torch.bool:
        a = rng.integers(0, 2, size=shape).astype(np.float64)
    elif dtype == torch.uint8:
        a = rng.integers(0, 256, size=shape).astype(np.float64)
    else:
        a = rng.normal(size=shape) * case["scale"]
    flat = a.reshape(-1)
    lo, hi = case["bounds"] or (0.0, 1.0)
    for kind in case["specials"]:
        i = rng.integers(0, flat.size)
        if kind == "bound":  # a bound itself and its float32 neighbours
            b = np.float32(lo if rng.integers(2) else hi)
            flat[i] = float(np.nextafter(b, np.float32(rng.choice([-np.inf, np.inf])))) if rng.integers(2) else float(b)
        elif kind == "edge" and edges is not None:
            e = np.float32(edges.reshape(-1)[rng.integers(0, edges.size)])
            flat[i] = float(np.nextafter(e, np.float32(-np.inf))) if rng.integers(2) else float(e)
        elif dtype.is_floating_point:
            flat[i] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0, "negzero": -0.0,
                       "max": _dtype_max(dtype) * rng.choice([-1, 1]), "tiny": 1e-40, "edge": 0.5}[kind]
    if not dtype.is_floating_point:
        a = np.clip(np.nan_to_num(np.round(a)), 0, 1 if dtype == torch.bool else 255)
    t = torch.from_numpy(a).to(dtype)
    nd = t.dim()
    if case["layout"] == "channels_last" and nd in (4, 5):
        t = t.contiguous(memory_format=torch.channels_last if nd == 4 else torch.channels_last_3d)
    elif case["layout"] == "transposed":
        t = t.transpose(0, -1).contiguous().transpose(0, -1)  # same values, permuted strides
    return t


def stats_for(case: dict) -> RangeStats:
    return RangeStats(channel_dim=case["channel_dim"], bounds=case["bounds"], hist_bins=case["hist_bins"],
                      hist_range=case["hist_range"])


def channels_of(case: dict) -> int:
    return 1 if case["channel_dim"] is None else case["shape"][case["channel_dim"]]


def check_fused_updates(case: dict, counter, detail_calls: int) -> None:
    """``case``'s tensor through a fused update path whose module ``counter`` counts its kernel
    calls (``counter.calls``): the detail update (``detail_calls`` kernel calls at least), the full
    update and two every-step updates (one call each), all against the numpy float64 reference."""
    c = case["shape"][case["channel_dim"]]
    s = stats_for(case)
    x = make_tensor(case, s.hist_edges_for(c).numpy() if case["hist_bins"] else None)
    rows = channel_rows(x, case["channel_dim"])
    b = s.bounds_for(c)
    bounds = None if b is None else (b[0].numpy(), b[1].numpy())
    before = counter.calls
    s.update(x, detail=True)
    assert counter.calls >= before + detail_calls and counter._broken is None  # the kernel ran, not the fallback
    check_summary(s.compute(), rows, case["dtype"], detail=True, bounds=bounds, hist=bool(case["hist_bins"]))
    # the full update and the every-step plan (min/max partials, folded later) on the same tensor
    full = stats_for(case)
    before = counter.calls
    full.update(x)
    full.update(x, moments=False)
    full.update(x, moments=False)
    assert counter.calls == before + 3
    r = full.compute()
    np.testing.assert_array_equal(r.count.numpy(), np.full(c, 3 * rows.shape[1]))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(r.min.numpy(), rows.min(axis=1))
        np.testing.assert_array_equal(r.max.numpy(), rows.max(axis=1))
    np.testing.assert_array_equal(r.nonfinite_seen.numpy(), ~np.isfinite(rows).all(axis=1))
    one = stats_for(case)
    one.update(x)
    check_summary(one.compute(), rows, case["dtype"], detail=False)


def assert_same_summary(a: RangeSummary, b: RangeSummary, dtype: torch.dtype) -> None:
    exact = ["count", "min", "max", "finite_min", "finite_max", "nan", "inf", "below", "above", "detail_count",
             "nonfinite_seen"]
    for k in exact:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    for k in ("hist", "hist_underflow", "hist_overflow", "hist_edges"):
        if b[k] is None:
            assert a[k] is None
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rtol = RTOL.get(dtype, RTOL_DEFAULT)
    fin = torch.isfinite(b.mean) & torch.isfinite(b.std)
    scale = b.mean.abs() + b.std
    assert ((a.mean - b.mean).abs()[fin] <= 4 * rtol * scale[fin] + 1e-300).all()
    assert ((a.std**2 - b.std**2).abs()[fin] <= 4 * rtol * (b.mean**2 + b.std**2)[fin] + 1e-300).all()


def forbid_sync(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("host sync in RangeStats.update")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for name in ("nonzero", "masked_select", "unique", "argwhere"):
        monkeypatch.setattr(torch, name, boom)


# ---------------------------------------------------------------------------- property tests (collected in test_stats.py)
@settings(**SETTINGS)
@given(cases(), st.booleans())
def matches_numpy_reference(case, detail):
    s = stats_for(case)
    c = channels_of(case)
    edges = s.hist_edges_for(c).numpy() if case["hist_bins"] else None
    x = make_tensor(case, edges)
    s.update(x, detail=detail)
    r = s.compute()
    b = s.bounds_for(c)
    check_summary(r, channel_rows(x, case["channel_dim"]), case["dtype"], detail=detail,
                  bounds=None if b is None else (b[0].numpy(), b[1].numpy()), hist=bool(case["hist_bins"]) and detail)
    assert r.dtypes == (str(case["dtype"]).replace("torch.", ""),)


@settings(**SETTINGS)
@given(cases(), st.integers(1, 3))
def steps_merge_and_halves_equal_whole(case, cut):
    """Updates over several steps, merge() of two accumulators and one accumulator over the whole
    tensor agree (exactly for extremes and counts)."""
    s = stats_for(case)
    c = channels_of(case)
    x = make_tensor(case, s.hist_edges_for(c).numpy() if case["hist_bins"] else None)
    whole = stats_for(case)
    whole.update(x, detail=True)
    dim = 0 if case["channel_dim"] not in (0, -x.dim()) else 1
    k = min(cut, x.shape[dim])
    a, b = x.narrow(dim, 0, k), x.narrow(dim, k, x.shape[dim] - k)
    steps = stats_for(case)
    steps.update(a, detail=True)
    steps.update(b, detail=True)
    left, right = stats_for(case), stats_for(case)
    left.update(a, detail=True)
    right.update(b, detail=True)
    left.merge(right)
    w = whole.compute()
    for other in (steps.compute(), left.compute()):
        assert_same_summary(other, w, case["dtype"])


@settings(**SETTINGS)
@given(cases(), st.sampled_from([1, 2]), st.integers(0, 2**31 - 1))
def every_step_path_matches_numpy(case, threads, seed2):
    """``update(x, moments=False)`` (the every-step path, planned once per layout) over several
    tensors of one layout: exact min, max, count and the NaN/Inf flag, against numpy."""
    x = make_tensor(case)
    y = make_tensor({**case, "seed": seed2, "specials": []})
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = stats_for(case)
        s._init_states(channels_of(case), x.device)  # so that every update below takes the planned path
        for t in (y, x, y, x.clone()):
            s.update(t, moments=False)
        r = s.compute()
    finally:
        torch.set_num_threads(old)
    both = np.concatenate([channel_rows(t, case["channel_dim"]) for t in (y, x, y, x)], axis=1)
    np.testing.assert_array_equal(r.count.numpy(), np.full(both.shape[0], both.shape[1]))
    bad = ~np.isfinite(both).all(axis=1)
    with np.errstate(invalid="ignore"):
        mn, mx = both.min(axis=1), both.max(axis=1)  # NaN where a channel has NaN, as the states
    np.testing.assert_array_equal(r.min.numpy(), mn)
    np.testing.assert_array_equal(r.max.numpy(), mx)
    np.testing.assert_array_equal(r.nonfinite_seen.numpy(), bad)
    assert torch.isnan(r.mean).all() and r.dtypes == (str(case["dtype"]).replace("torch.", ""),)
