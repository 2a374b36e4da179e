"""Device-side per-channel range statistics (:class:`RangeStats`).

``update`` only queues kernels on the tensor's own device: no ``.item()``, ``.cpu()``,
``.tolist()``, ``bool(tensor)`` or branch on tensor values (decisions depend on shapes, dtypes and
devices only). ``compute`` is the single host transfer.

Cross-process sync is owned here, not borrowed from torchmetrics' internals. The accumulator is a
torchmetrics :class:`~torchmetrics.Metric` for its public API only (``add_state`` with a reduction
per state, ``reset``, ``state_dict``/``load_state_dict``, ``.to()``, the constructor options
``dist_sync_fn``, ``process_group``, ``sync_on_compute``, ``distributed_available_fn``), and
``sync``/``unsync``/``sync_context``/``compute`` are implemented in this module (same signatures
as torchmetrics'): one gather of all states packed together, reduced per state, the local states
kept aside and restored. torchmetrics' ``update``/``compute`` wrappers are switched off (its
``_wrap_update``/``_wrap_compute`` hooks return the method unchanged), so no private attribute of
torchmetrics (``_computed``, ``_is_synced``, ``_to_sync``, ``_update_count``, ``_should_unsync``,
``_cache``) is read or written. Why not an upper version pin instead: a pin only says which
versions were tried, goes stale, and conflicts with users' other pins; the private attributes
have changed between torchmetrics releases, while the public API above has been stable since 1.0.
If torchmetrics stopped calling the two hooks, its wrappers would call this module's
``sync_context`` and still sync correctly (only slower). ``compute(sync=False)`` (or
``sync_on_compute=False``) judges this process's states alone, with no collective.

Exactness (what the tests check against a numpy float64 reference):

* ``min``/``max``/``finite_min``/``finite_max`` are exact (the tensor's own values).
* ``nan``/``inf``/``below``/``above``/``count``/``hist`` counts are exact. ``below`` is
  ``x < low`` and ``above`` is ``x > high`` with the bounds taken as float64 numbers, for every
  input dtype (float32 work uses the bounds rounded outward to float32, which compares the same).
* ``mean``/``std`` come from sums and sums of squares accumulated in float32 by the reduction
  kernels (float64 for float64 and integer inputs) and kept in float64 states: relative error
  ~1e-7 of ``mean(|x|)`` for the mean and ~1e-7 of ``mean(x**2)`` for the variance (so a channel
  whose spread is tiny next to its mean has a coarse ``std``). float16 inputs never
  overflow (a float16 tensor of a million 1000s has mean 1000); float32 and bfloat16 values past
  ~1.8e19 do (the float32 sum of squares is inf).
* Histogram bins are half-open, ``[e_i, e_{i+1})``, with ``e = RangeSummary.hist_edges[c]``;
  ``hist_underflow`` counts ``x < e_0`` (``-inf`` included), ``hist_overflow`` counts
  ``x >= e_bins`` (``+inf`` included), NaN is in neither (it is counted in ``nan``). The edges are
  the exact float32 thresholds of the binning arithmetic ``floor((x - low) * (bins / (high - low)))``
  (with ``bounds`` and the default range, counted from the lower bound, which is edge ``bins/4``):
  they equal ``linspace(low, high, bins + 1)`` wherever those are float32 numbers the arithmetic
  reproduces (e.g. a power-of-two width) and otherwise differ from it by float32 roundings, so
  ``numpy.histogram(x, hist_edges[c])`` gives the same counts (numpy closes its last bin on the
  right; here a value equal to ``e_bins`` is overflow).

Cost (``benchmarks/README.md``): on CUDA, float32/float16/bfloat16 tensors (contiguous,
channels-last or any dense layout) are read once by a Triton kernel (:mod:`rangewatch.stats.triton`)
that yields per-channel min, max, sum and sum of squares (NaN propagated into min/max, from which the
non-finite flag is derived); its partials stay pending on the device and are folded into the states
when these are next read, so an every-step update is one kernel launch. On CPU, float32 tensors
(float16/bfloat16 arrive converted) of at least 2^17 elements with a contiguous ``(A, C, B)`` view
are read once per update kind by a small C kernel (:mod:`rangewatch.stats.native`, built with the
system compiler at first use in under a second and cached), in 16 float32 lanes over slices of at
most 1024 values; the histogram's slots take one more read. Everywhere else (other dtypes,
channels-last-like short inner axes, no C compiler, Triton missing or failing) the eager path runs:
``update(x)`` is four reductions over ``x`` (eager PyTorch has no fused multi-reduction;
``aminmax``/``var_mean`` are slower on CPU), ``update(x, moments=False)`` two; ``detail=True`` adds
a dozen elementwise passes and, with a histogram, one ``bincount``. Opt-in
(``RANGEWATCH_CPU_COMPILE=1``): large float32 CPU tensors with a long contiguous inner axis go
through :mod:`rangewatch.stats.inductor` instead, one ``torch.compile``d loop nest per update kind
(compiling takes seconds on the first call per shape). The exactness
above holds on every path (the kernels accumulate in float32 lanes or slices of at most a few
thousand elements, combined in float64).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from . import inductor as stats_inductor
from . import native as stats_native
from . import triton as stats_triton
from ..expect.conventions import Convention, get_convention

__all__ = ["RangeStats", "RangeSummary"]

BoundsLike = "Convention | str | tuple[float | Sequence[float], float | Sequence[float]] | None"

# name -> (reduction, fill value of a fresh per-channel state)
_EVERY_STEP = {
    "min": ("min", float("inf")),
    "max": ("max", float("-inf")),
    "sum": ("sum", 0.0),
    "sumsq": ("sum", 0.0),
    "count": ("sum", 0.0),
    "moment_count": ("sum", 0.0),  # elements behind sum/sumsq (updates with moments=True)
    "nonfinite_seen": ("max", 0.0),
}
_DETAIL = {
    "finite_min": ("min", float("inf")),
    "finite_max": ("max", float("-inf")),
    "nan": ("sum", 0.0),
    "inf": ("sum", 0.0),
    "below": ("sum", 0.0),
    "above": ("sum", 0.0),
    "detail_count": ("sum", 0.0),
}
_ALL = {**_EVERY_STEP, **_DETAIL}
_STATE_ORDER = tuple(_EVERY_STEP) + tuple(_DETAIL)

_INF = float("inf")
#: every-step extremes kept pending before they are folded into the states (see RangeStats._fold)
_PENDING_MAX = 64
#: reduce over the contiguous inner axis first when it holds at least this many elements
_INNER_MIN = 16
#: a float32 sum of 0/1 values is exact while each reduced run is shorter than this
_EXACT_F32 = 1 << 24
#: CPU scratch buffers are kept between updates for tensors up to this many elements
_SCRATCH_MAX = 1 << 27
#: integer dtypes that float32 holds exactly; wider integers are handled in float64
_SMALL_INTS = {torch.bool, torch.uint8, torch.int8, torch.int16}
#: unsigned types most CPU reductions do not implement, and what they are reduced as
_WIDEN = {getattr(torch, n): w for n, w in (("uint16", torch.int32), ("uint32", torch.int64), ("uint64", torch.float64))
          if hasattr(torch, n)}


@dataclass
class RangeSummary:
    """Per-channel results of :meth:`RangeStats.compute` (float64 CPU tensors of shape ``(C,)``).

    ``min``/``max``/``mean``/``std`` cover every element seen (NaN once a NaN was seen);
    ``finite_min``/``finite_max``, ``nan``/``inf``/``nonfinite``, ``below``/``above`` come from
    ``detail=True`` updates, over ``detail_count`` elements per channel. ``below`` counts
    ``x < low`` and ``above`` counts ``x > high`` (values equal to a bound are inside).
    ``hist`` is ``(C, bins)`` with half-open bins ``[hist_edges[c, i], hist_edges[c, i+1])``;
    ``hist_underflow`` counts values below the first edge (``-inf`` included), ``hist_overflow``
    values at or above the last edge (``+inf`` included); NaN is in neither.
    """

    channels: int
    count: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    nonfinite_seen: torch.Tensor
    finite_min: torch.Tensor
    finite_max: torch.Tensor
    nan: torch.Tensor
    inf: torch.Tensor
    nonfinite: torch.Tensor
    below: torch.Tensor
    above: torch.Tensor
    detail_count: torch.Tensor
    hist: torch.Tensor | None
    hist_edges: torch.Tensor | None
    hist_underflow: torch.Tensor | None
    hist_overflow: torch.Tensor | None
    bounds: tuple[torch.Tensor, torch.Tensor] | None
    dtypes: tuple[str, ...]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def empty(self) -> bool:
        return self.channels == 0 or float(self.count.sum()) == 0

    @property
    def below_fraction(self) -> torch.Tensor:
        return self.below / self.detail_count.clamp(min=1)

    @property
    def above_fraction(self) -> torch.Tensor:
        return self.above / self.detail_count.clamp(min=1)

    @property
    def integer(self) -> bool:
        """True when every tensor seen had an integer (or bool) dtype."""
        return bool(self.dtypes) and all(not torch.empty(0, dtype=getattr(torch, d)).is_floating_point() for d in self.dtypes)

    @property
    def range_min(self) -> torch.Tensor:
        """Best available minimum: finite minimum from detail updates, else the plain minimum."""
        has = torch.isfinite(self.finite_min)
        return torch.where(has, self.finite_min, self.min)

    @property
    def range_max(self) -> torch.Tensor:
        has = torch.isfinite(self.finite_max)
        return torch.where(has, self.finite_max, self.max)


def _resolve_bounds(bounds: Any) -> Convention | tuple[tuple[float, ...], tuple[float, ...]] | None:
    if bounds is None:
        return None
    if isinstance(bounds, (str, Convention)):
        return get_convention(bounds)
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a convention (name) or a (low, high) pair, got {bounds!r}") from None
    lo_t = tuple(float(v) for v in (lo if isinstance(lo, Sequence) else (lo,)))
    hi_t = tuple(float(v) for v in (hi if isinstance(hi, Sequence) else (hi,)))
    return lo_t, hi_t


# ---------------------------------------------------------------------- float32 helpers (host side)
def _f32(values: Sequence[float], direction: str = "nearest") -> np.ndarray:
    """``values`` as float32, rounded to nearest, ``"up"`` (smallest float32 >= v) or ``"down"``."""
    v64 = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        f = v64.astype(np.float32)
        if direction == "up":
            f = np.where(f.astype(np.float64) < v64, np.nextafter(f, np.float32(np.inf)), f)
        elif direction == "down":
            f = np.where(f.astype(np.float64) > v64, np.nextafter(f, np.float32(-np.inf)), f)
    return f.astype(np.float32)


def _f32_from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of the order-preserving map float32 -> int (negative floats -> negative keys)."""
    bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _f32_keys(values: np.ndarray) -> np.ndarray:
    """The order-preserving map float32 -> int64 (-0.0 and +0.0 both map to 0)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits & 0x80000000, -(bits & 0x7FFFFFFF), bits)


def _bin_thresholds(lo32: np.ndarray, scale32: np.ndarray, bins: int, shift: int = 0) -> np.ndarray:
    """``(C, bins + 1)`` float64: for each channel and i, the smallest float32 ``x`` with
    ``float32(float32(x - lo) * scale) >= i - shift``, i.e. the exact edges of the device binning
    ``floor((x - lo) * scale) + shift`` done in float32 (monotone in ``x``: a binary search finds
    them, starting from a few float32 steps around the nominal edge)."""
    c = lo32.shape[0]
    target = np.broadcast_to(np.arange(-shift, bins + 1 - shift, dtype=np.float32), (c, bins + 1))
    lo_b, s_b = lo32[:, None], scale32[:, None]

    def pred(keys: np.ndarray) -> np.ndarray:
        t = (_f32_from_keys(keys) - lo_b) * s_b  # float32 arithmetic, as on the device
        return t >= target

    with np.errstate(over="ignore", invalid="ignore"):
        nominal = _f32_keys((lo_b.astype(np.float64) + target / s_b.astype(np.float64)).astype(np.float32))
        lo_k = np.clip(nominal - 64, -0x7F800000, 0x7F800000)
        hi_k = np.clip(nominal + 64, -0x7F800000, 0x7F800000)
        # widen to the full float32 range where the bracket does not hold (invariant: pred(lo_k)
        # false, pred(hi_k) true; -inf is always false and +inf always true)
        lo_k = np.where(pred(lo_k), -0x7F800000, lo_k)
        hi_k = np.where(pred(hi_k), hi_k, 0x7F800000)
        while True:
            open_ = hi_k - lo_k > 1
            if not open_.any():
                break
            mid = (lo_k + hi_k) // 2
            ok = pred(mid)
            hi_k = np.where(open_ & ok, mid, hi_k)
            lo_k = np.where(open_ & ~ok, mid, lo_k)
    return _f32_from_keys(hi_k).astype(np.float64)


@functools.lru_cache(maxsize=256)
def _group(rows: int, width: int) -> int:
    """Rows folded together when reducing over the outer axis of a ``(rows, width)`` block: a divisor
    ``g`` of ``rows`` with ``g * width`` around 128 columns (vectorised column reductions)."""
    best = 1
    for g in range(1, 1024 // max(width, 1) + 1):
        if g * 8 > rows:
            break
        if rows % g == 0:
            best = g
            if g * width >= 128:
                break
    return best


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _bincount_ok(device: torch.device) -> bool:
    """``torch.bincount`` is the fast scatter on CPU; CUDA's synchronises (it sizes its output from
    the data), so other devices use ``index_add_``."""
    return device.type == "cpu"


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small constant to ``device`` without a blocking copy (pinned + non_blocking on CUDA)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)


def _fused_kernel(rows: torch.Tensor) -> tuple[int, bool]:
    """Which fused CPU kernel takes ``rows`` ``(A, C, B)``: the opt-in compiled functions (their
    slice length ``k`` > 0), else the one-read C kernel (True), else neither ``(0, False)``."""
    k = stats_inductor.chunk_for(rows)
    return k, not k and stats_native.usable(rows)


def _outer(a: int, c: int, b: int) -> bool:
    """Whether an ``(A, C, B)`` block is reduced over its outer axis (short inner runs, e.g.
    channels-last ``B == 1``) rather than along its contiguous inner axis."""
    return not (b >= _INNER_MIN or a == 1 or b >= a)


def _reduce(t: torch.Tensor, op: str, acc: torch.dtype | None = None,
            scratch: Callable[[torch.Size, torch.dtype], torch.Tensor] | None = None) -> torch.Tensor:
    """Per-channel reduction of an ``(A, C, B)`` tensor to ``(C,)``.

    ``op``: ``amin``/``amax`` (in ``t``'s dtype), ``sum`` (accumulated in ``acc``), ``sumsq`` (sum
    of squares: per-row norms in ``acc`` combined in float64), ``count`` (sum of a 0/1 tensor,
    exact: float32 only while every accumulated run is shorter than 2**24).
    A long contiguous inner axis is reduced along memory (one kernel over dims 0 and 2 runs at the
    speed of a plain sum); a short one (e.g. channels-last: ``B == 1``) is reduced as the columns of
    ``(A/g, g*C*B)`` blocks instead (vectorised across columns), then the ``g*B`` partials.
    ``scratch(shape, dtype)`` provides the buffer of the squares in that case.
    """
    a, c, b = t.shape
    if not _outer(a, c, b):
        # one kernel over (0, 2) unless its C outputs split unevenly over the intra-op threads
        # (CPU reductions parallelise over outputs: 3 channels on 2 threads run at 2/3 speed)
        threads = torch.get_num_threads() if t.device.type == "cpu" else 1
        if threads == 1 or c == 1 or c % threads == 0 or a == 1:
            if op == "amin":
                return t.amin(dim=(0, 2))
            if op == "amax":
                return t.amax(dim=(0, 2))
            if op == "sum":
                return t.sum(dim=(0, 2), dtype=acc)
            if op == "count" and a * b < _EXACT_F32:
                return t.sum(dim=(0, 2), dtype=torch.float32)
        if op == "amin":
            return t.amin(dim=2).amin(dim=0)
        if op == "amax":
            return t.amax(dim=2).amax(dim=0)
        if op == "sum":
            return t.sum(dim=2, dtype=acc).sum(dim=0, dtype=torch.float64)
        if op == "count":
            p = t.sum(dim=2, dtype=torch.float32 if b < _EXACT_F32 else torch.float64)
            return p.sum(dim=0, dtype=torch.float64)
        # sumsq: vector_norm is fast over the inner axis only
        p = torch.linalg.vector_norm(t, dim=2, dtype=acc)
        return torch.linalg.vector_norm(p, dim=0, dtype=torch.float64).square()
    g = _group(a, c * b)
    v = t.reshape(a // g, g * c * b)
    runs = a // g
    if op == "amin":
        p = v.amin(dim=0)
    elif op == "amax":
        p = v.amax(dim=0)
    elif op == "sum":
        p = v.sum(dim=0, dtype=acc)
    elif op == "count":
        p = v.sum(dim=0, dtype=torch.float32 if runs < _EXACT_F32 else torch.float64)
    else:  # sumsq: vector_norm over an outer axis is slow on CPU; square blocks that stay in cache
        step = v.shape[0] if v.device.type != "cpu" else max(1, (1 << 18) // v.shape[1])
        p = torch.zeros(v.shape[1], dtype=torch.float64, device=v.device)
        for i in range(0, v.shape[0], step):
            blk = v[i : i + step]
            sq = scratch(blk.shape, acc) if scratch is not None else torch.empty(blk.shape, dtype=acc, device=v.device)
            if blk.dtype != acc:
                sq.copy_(blk)
                sq.mul_(sq)
            else:
                torch.mul(blk, blk, out=sq)
            p.add_(sq.sum(dim=0))
    p = p.view(g, c, b).transpose(1, 2).reshape(g * b, c)
    if op == "amin":
        return p.amin(dim=0)
    if op == "amax":
        return p.amax(dim=0)
    return p.sum(dim=0, dtype=torch.float64)


@dataclass
class _HistHost:
    """Histogram arithmetic of one channel count: ``bin = floor((x - origin) * scale) + shift``."""

    origin: np.ndarray  # (C,) float32
    scale: np.ndarray  # (C,) float32, bins per unit
    shift: int
    edges: np.ndarray  # (C, bins + 1) float64, exact
    below_slots: int  # > 0: x < lower bound  <=>  slot < below_slots (slot 0 is underflow)


@dataclass
class _Consts:
    """Per-(device, channels) constants of the detail path, built once on the host."""

    lo64: torch.Tensor | None  # (1, C, 1) float64 bounds
    hi64: torch.Tensor | None
    lo32: torch.Tensor | None  # (1, C, 1) float32 bounds rounded outward (same comparisons)
    hi32: torch.Tensor | None
    hist_lo: torch.Tensor | None  # (1, C, 1) float32 histogram origin
    hist_scale: torch.Tensor | None  # (1, C, 1) float32 bins per unit (1 / width)
    hist_off: torch.Tensor | None  # (1, C, 1) float32: c * (bins + 3) + 1 + shift
    hist_shift: int = 0
    below_slots: int = 0
    tiles: dict = field(default_factory=dict)

    def tile(self, t: torch.Tensor, g: int, c: int, b: int) -> torch.Tensor:
        """``(1, C, 1)`` constant repeated to ``(1, g*C*B)``: broadcasting against the
        ``(A/g, g*C*B)`` view of a short-inner-axis block keeps the elementwise loops vectorised."""
        key = (id(t), g, b)
        r = self.tiles.get(key)
        if r is None:
            r = self.tiles[key] = t.reshape(1, c, 1).expand(g, c, b).reshape(1, g * c * b)
        return r


@dataclass(frozen=True)
class _Plan:
    """How an every-step update (min, max and count only) reads tensors of one layout: the
    ``(A, C, B)`` view and whether one kernel over dims (0, 2) does (else inner axis first), or
    the one-read Triton kernel (``launch``; the view is then taken with ``strides``)."""

    shape: tuple[int, int, int]
    one_kernel: bool
    per_channel: int  # elements per channel
    dtype_name: str
    device: torch.device
    strides: tuple[int, int, int] | None = None
    launch: Any = None  # stats_triton.Launch
    compiled: bool = False  # the compiled CPU min/max (stats_inductor, opt-in)
    native: bool = False  # the one-read C kernel's min/max (stats_native)


class RangeStats(Metric):
    """Per-channel min/max/mean/std/non-finite/out-of-bounds accumulator on the tensor's device.

    Args:
        channel_dim: the channel dimension; ``None`` treats the whole tensor as one channel
            (a 0-d tensor is one channel either way).
        bounds: a convention (or its name) or per-channel ``(low, high)`` used by ``detail=True``
            updates to count values below/above the expected range.
        hist_bins: number of fixed histogram bins per channel filled by ``detail=True`` updates (0: off).
        hist_range: ``(low, high)`` of the histogram; default: ``bounds`` padded by half their span
            on each side, or (-1.5, 2.5) without bounds.
        dist_sync_fn: gather function for cross-process reduction (torchmetrics signature); the
            callback passes the Lightning strategy's ``all_gather``.
        **kwargs: torchmetrics options; ``sync_on_compute=False`` makes :meth:`compute` local
            (``compute(sync=...)`` overrides it per call), ``distributed_available_fn`` decides
            whether a sync is needed.

    ``update(x)`` costs four reductions over ``x`` (min, max, sum, sum of squares),
    ``update(x, moments=False)`` two (min and max, whose per-channel results are kept pending
    and folded into the states when these are next read); see ``benchmarks/README.md``. Empty
    tensors are ignored. On CPU, scratch buffers of the tensor's
    size (``detail=True``; half-precision and channels-last inputs) are kept between updates and
    freed by :meth:`reset`.

    Example:
        >>> import torch
        >>> s = RangeStats(bounds="unit")
        >>> s.update(torch.rand(2, 3, 8, 8) * 2 - 1, detail=True)
        >>> r = s.compute()
        >>> bool((r.min >= -1).all()) and bool((r.below > 0).all())
        True
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(
        self,
        channel_dim: int | None = 1,
        bounds: Any = None,
        hist_bins: int = 0,
        hist_range: tuple[float, float] | None = None,
        dist_sync_fn: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dist_sync_fn=dist_sync_fn, **kwargs)
        if channel_dim is not None and (not isinstance(channel_dim, int) or isinstance(channel_dim, bool)):
            raise TypeError(f"channel_dim must be an int or None, got {channel_dim!r}")
        if not isinstance(hist_bins, int) or isinstance(hist_bins, bool) or hist_bins < 0:
            raise ValueError(f"hist_bins must be a non-negative int, got {hist_bins!r}")
        if hist_range is not None and not (
            len(hist_range) == 2
            and math.isfinite(float(hist_range[0]))
            and math.isfinite(float(hist_range[1]))
            and float(hist_range[0]) < float(hist_range[1])
        ):
            raise ValueError(f"hist_range must be finite (low, high) with low < high, got {hist_range!r}")
        self.channel_dim = channel_dim
        self.bounds = _resolve_bounds(bounds)
        self.hist_bins = hist_bins
        self.hist_range = None if hist_range is None else (float(hist_range[0]), float(hist_range[1]))
        self.dtypes_seen: set[str] = set()
        for name, (red, _) in _ALL.items():
            self.add_state(name, default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx=red, persistent=True)
        self.add_state(
            "hist", default=torch.zeros(0, hist_bins + 2, dtype=torch.float64), dist_reduce_fx="sum", persistent=True
        )
        self._bounds_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._consts_cache: dict[tuple[str, int], _Consts] = {}
        self._edges_cache: dict[int, _HistHost] = {}
        self._scratch: dict[str, torch.Tensor] = {}
        self.__dict__["_rs_local"] = None  # local states kept by sync() for unsync()
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # see _fold
        self._pending_n = 0
        self._pending_moments: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sum, sumsq) partials
        self._pending_mn = 0
        # (shape, strides, dtype, device, threads) -> _Plan of the every-step min/max path
        self._plans: dict[tuple, _Plan | None] = {}
        # detail updates also keep a small value sample (check steps only): the evidence convention
        # inference uses (rangewatch.stats.evidence; read by infer_convention, cleared by reset)
        from .evidence import ValueSample

        self.value_sample = ValueSample(channel_dim=channel_dim)

    # ------------------------------------------------------------------ pending extremes
    # The every-step path appends its per-channel (min, max) to a short pending list instead of
    # folding them into the states right away (three tiny kernels a step, which cost as much as a
    # read of the batch inside a training step); ``min``, ``max`` and ``count`` are properties that
    # fold the pending entries first, so every read or assignment (compute, sync, state_dict,
    # reset, .to(), merge) sees them.
    def _fold(self) -> None:
        d = self.__dict__
        pending, n = d["_pending"], d["_pending_n"]
        moments, mn_n = d["_pending_moments"], d["_pending_mn"]
        d["_pending"], d["_pending_n"] = [], 0
        d["_pending_moments"], d["_pending_mn"] = [], 0
        if pending:
            mn, mx, cnt = d["_st_min"], d["_st_max"], d["_st_count"]
            c = mn.numel()
            if len(pending) == 1 and pending[0][0].dim() == 1:
                pmn, pmx = pending[0]
            else:  # entries are (C,) or (K, C) partials
                pmn = torch.cat([p[0].reshape(-1, c) for p in pending]).amin(dim=0)
                pmx = torch.cat([p[1].reshape(-1, c) for p in pending]).amax(dim=0)
            torch.minimum(mn, pmn, out=mn)  # NaN propagates, as intended
            torch.maximum(mx, pmx, out=mx)
            cnt.add_(n)
        if moments:
            sm, sq, mcnt = d["_st_sum"], d["_st_sumsq"], d["_st_moment_count"]
            c = sm.numel()
            sm.add_(torch.cat([p[0].reshape(-1, c) for p in moments]).sum(dim=0, dtype=torch.float64))
            sq.add_(torch.cat([p[1].reshape(-1, c) for p in moments]).sum(dim=0, dtype=torch.float64))
            mcnt.add_(mn_n)

    def _state(name: str) -> property:  # type: ignore[misc]  # noqa: N805
        key = "_st_" + name

        def get(self: "RangeStats") -> torch.Tensor:
            d = self.__dict__
            if d.get("_pending") or d.get("_pending_moments"):
                self._fold()
            return d[key]

        def set_(self: "RangeStats", value: torch.Tensor) -> None:
            d = self.__dict__
            if d.get("_pending") or d.get("_pending_moments"):
                self._fold()
            d[key] = value

        return property(get, set_, doc=f"``(C,)`` float64 state ``{name}`` (pending every-step updates folded in)")

    min = _state("min")
    max = _state("max")
    count = _state("count")
    sum = _state("sum")
    sumsq = _state("sumsq")
    moment_count = _state("moment_count")
    del _state

    # ------------------------------------------------------------------ helpers
    @property
    def nonfinite_seen(self) -> torch.Tensor:
        """``(C,)`` float64 state, 1.0 where a channel has seen NaN/Inf since the last reset.

        Derived when read, at no per-step cost: any NaN makes the running min/max NaN and any Inf
        makes one of them infinite, so ``min * 0 + max * 0`` is NaN exactly then. What is assigned
        (reset, load, sync, merge) is kept and or-ed in. No host sync either way.
        """
        d = self.__dict__
        if d.get("_pending") or d.get("_pending_moments"):
            self._fold()
        stored, mn, mx, cnt = d["_nonfinite_stored"], d.get("_st_min"), d.get("_st_max"), d.get("_st_count")
        if mn is None or mx is None or cnt is None or mn.numel() == 0:
            return stored
        # x * 0 is NaN exactly for NaN/Inf (min - max could overflow); fresh states (+inf, -inf): 0
        derived = torch.nan_to_num((mn * 0.0).add_(mx * 0.0), nan=1.0).mul_(cnt > 0)
        return derived if stored.shape != derived.shape else torch.maximum(stored, derived)

    @nonfinite_seen.setter
    def nonfinite_seen(self, value: torch.Tensor) -> None:
        self.__dict__["_nonfinite_stored"] = value

    @property
    def channels(self) -> int:
        return int(self.min.numel())

    def _init_states(self, channels: int, device: torch.device) -> None:
        for name in _STATE_ORDER:
            setattr(self, name, torch.full((channels,), _ALL[name][1], dtype=torch.float64, device=device))
        # per channel: [underflow, bins..., overflow]; NaN is counted in `nan`
        self.hist = torch.zeros(channels if self.hist_bins else 0, self.hist_bins + 2, dtype=torch.float64, device=device)

    def reset(self) -> None:
        super().reset()
        self.__dict__["_rs_local"] = None  # a reset drops the local states a sync() kept
        self._scratch.clear()
        if "value_sample" in self.__dict__:
            self.value_sample.clear()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: torchmetrics' ``forward`` (a batch value plus accumulation) relies on its
        private bookkeeping, which RangeStats does not keep. Call :meth:`update` and :meth:`compute`."""
        raise TypeError("RangeStats is not called like a module: use update(x) and compute()")

    def reset_with_bounds(self, bounds: Any) -> None:
        """:meth:`reset`, then count out-of-bounds values (and place the histogram) against
        ``bounds`` from the next update on: cheaper than a new accumulator."""
        resolved = _resolve_bounds(bounds)
        self.reset()
        self.bounds = resolved
        self._bounds_cache.clear()
        self._consts_cache.clear()
        self._edges_cache.clear()

    def _bounds_host(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if self.bounds is None:
            return None
        if isinstance(self.bounds, Convention):
            lo, hi = self.bounds.bounds(channels)
        else:
            lo, hi = self.bounds
            lo = lo * channels if len(lo) == 1 else lo
            hi = hi * channels if len(hi) == 1 else hi
            if len(lo) != channels or len(hi) != channels:
                raise ValueError(f"bounds give {len(lo)} channels but the tensor has {channels}")
        return tuple(lo), tuple(hi)

    def bounds_for(self, channels: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel ``(low, high)`` float64 bounds on ``device`` (``None`` without bounds)."""
        b = self._bounds_host(channels)
        if b is None:
            return None
        device = torch.device(device)
        key = (str(device), channels)
        if key not in self._bounds_cache:
            self._bounds_cache[key] = (
                _to_device(torch.tensor(b[0], dtype=torch.float64), device),
                _to_device(torch.tensor(b[1], dtype=torch.float64), device),
            )
        return self._bounds_cache[key]

    def _hist_host(self, channels: int) -> _HistHost:
        """Host-side histogram arithmetic of ``channels`` channels (cached)."""
        h = self._edges_cache.get(channels)
        if h is None:
            bins = self.hist_bins
            b = self._bounds_host(channels)
            if self.hist_range is not None:
                lo = np.full(channels, self.hist_range[0])
                hi = np.full(channels, self.hist_range[1])
            elif b is None:
                lo, hi = np.full(channels, -1.5), np.full(channels, 2.5)
            else:
                blo, bhi = np.asarray(b[0], dtype=np.float64), np.asarray(b[1], dtype=np.float64)
                span = bhi - blo
                lo, hi = blo - 0.5 * span, bhi + 0.5 * span
            scale32 = _f32(bins / (hi - lo))  # bins per unit: exact for power-of-two widths
            origin32, shift, from_bound = _f32(lo), 0, False
            if b is not None:
                # the lower bound on a bin edge (the default range puts it at bins/4): count from
                # there, so that this edge is exactly the bound and `below` comes with the histogram
                j = (np.asarray(b[0], dtype=np.float64) - lo) * (bins / (hi - lo))
                jr = np.round(j)
                low = _f32(b[0], "up")
                if (np.abs(j - jr) < 1e-9 * max(bins, 1)).all() and (jr == jr[0]).all() and 0 <= jr[0] <= bins \
                        and np.isfinite(low).all():
                    origin32, shift, from_bound = low, int(jr[0]), True
            if not (np.isfinite(origin32).all() and np.isfinite(scale32).all() and (scale32 > 0).all()):
                raise ValueError(f"histogram range {list(zip(lo, hi))} cannot be binned in float32")
            edges = _bin_thresholds(origin32, scale32, bins, shift)
            h = _HistHost(origin32, scale32, shift, edges, below_slots=shift + 1 if from_bound else 0)
            self._edges_cache[channels] = h
        return h

    def hist_edges_for(self, channels: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(C, bins + 1)`` float64 bin edges: bins are ``[e_i, e_{i+1})`` (see the module docstring)."""
        edges = torch.from_numpy(self._hist_host(channels).edges.copy())
        return _to_device(edges, torch.device(device))

    def _consts(self, channels: int, device: torch.device) -> _Consts:
        key = (str(device), channels)
        k = self._consts_cache.get(key)
        if k is None:
            k = _Consts(None, None, None, None, None, None, None)
            b = self._bounds_host(channels)
            shape = (1, channels, 1)
            if b is not None:
                k.lo64 = _to_device(torch.tensor(b[0], dtype=torch.float64).view(shape), device)
                k.hi64 = _to_device(torch.tensor(b[1], dtype=torch.float64).view(shape), device)
                k.lo32 = _to_device(torch.from_numpy(_f32(b[0], "up")).view(shape), device)
                k.hi32 = _to_device(torch.from_numpy(_f32(b[1], "down")).view(shape), device)
            if self.hist_bins:
                hh = self._hist_host(channels)
                # slot of channel c: c * (bins + 3) + 1 + bin, bin = floor(...) + shift
                off = np.arange(channels, dtype=np.float32) * np.float32(self.hist_bins + 3) + np.float32(1 + hh.shift)
                k.hist_lo = _to_device(torch.from_numpy(hh.origin.copy()).view(shape), device)
                k.hist_scale = _to_device(torch.from_numpy(hh.scale.copy()).view(shape), device)
                k.hist_off = _to_device(torch.from_numpy(off).view(shape), device)
                k.hist_shift = hh.shift
                k.below_slots = hh.below_slots
            self._consts_cache[key] = k
        return k

    def _buffer(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A scratch tensor; on CPU it is kept between updates (no page faults on every call)."""
        n = math.prod(shape)
        if device.type != "cpu" or n > _SCRATCH_MAX:
            return torch.empty(shape, dtype=dtype, device=device)
        buf = self._scratch.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype)
            self._scratch[name] = buf
        return buf[:n].view(shape)

    def _squares(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Buffer of the squares for the channels-last sum of squares (kept between updates on CPU)."""
        return self._buffer("q", shape, dtype, self.min.device)

    def _channels_of(self, x: torch.Tensor) -> int:
        if self.channel_dim is None or x.dim() == 0:
            return 1
        if not -x.dim() <= self.channel_dim < x.dim():
            raise ValueError(
                f"channel_dim={self.channel_dim} is out of range for a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
                "pass channel_dim=None to treat the whole tensor as one channel"
            )
        return int(x.shape[self.channel_dim])

    def _as_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``x`` as ``(A, C, B)`` with the channel axis in the middle: a view whenever ``x`` is dense
        in any dimension order (contiguous, channels-last, permuted), else a copy. The statistics do
        not depend on the order of the other axes, so they are taken in memory order."""
        if self.channel_dim is None or x.dim() == 0:
            cd = -1
            c = 1
        else:
            cd = self.channel_dim % x.dim()
            c = int(x.shape[cd])
        nd = x.dim()
        if x.is_contiguous():  # the common case, without the general permutation below
            if cd < 0:
                return x.view(1, 1, -1), 1, cd
            return x.view(math.prod(x.shape[:cd]), c, -1), c, cd
        perm = sorted(range(nd), key=lambda d: (-x.stride(d), d))
        p = x.permute(perm)
        if not p.is_contiguous():
            p, perm = x.contiguous(), list(range(nd))
        if cd < 0:
            return p.reshape(1, 1, -1), 1, cd
        k = perm.index(cd)
        a = math.prod(p.shape[:k])
        return p.reshape(a, c, -1), c, cd

    # ------------------------------------------------------------------ update
    def _wrap_update(self, update: Callable) -> Callable:
        """torchmetrics wraps ``update`` in a grad-mode context and its own bookkeeping;
        :meth:`update` detaches its input and never makes tensors that require grad, and it runs
        every training step (the wrapper costs more than min/max of a small tensor), so it stays
        unwrapped (see the module docstring)."""
        return update

    def _plan(self, x: torch.Tensor) -> _Plan | None:
        """The every-step plan for tensors laid out like ``x``; None where :meth:`update`'s general
        path is needed (non-contiguous, dtype conversions, channels-last-like short inner axes).
        On CUDA (float32/16, bfloat16, any dense layout) the plan is the one-read Triton kernel."""
        if x.numel() == 0:
            return None
        try:
            c = self._channels_of(x)
        except ValueError:
            return None
        if stats_triton.available(x):
            rows, c, _ = self._as_rows(x)
            lp = stats_triton.plan(*rows.shape)
            # a view of x (dense in some dimension order), so that the plan can re-take it with as_strided
            if stats_triton.usable(lp) and rows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                a, _, b = rows.shape
                return _Plan((a, c, b), False, a * b, _dtype_name(x.dtype), x.device,
                             strides=tuple(rows.stride()), launch=lp)
        if not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64, torch.uint8):
            return None
        rows, c, _ = self._as_rows(x)
        a, _, b = rows.shape
        if _outer(a, c, b):
            return None
        threads = torch.get_num_threads() if x.device.type == "cpu" else 1
        one = threads == 1 or c == 1 or c % threads == 0 or a == 1
        k, native = _fused_kernel(rows)
        compiled = k > 0
        return _Plan((a, c, b), one and not (compiled or native), a * b, _dtype_name(x.dtype), x.device,
                     compiled=compiled, native=native)

    def _launch(self, rows: torch.Tensor, lp: Any, n: int, moments: bool) -> torch.Tensor | None:
        """The one-read Triton kernel over ``rows`` (A, C, B); its partials ``(4, K, C)`` go to the
        pending lists (folded into the states when next read) and are returned. None if it cannot
        run here."""
        out = stats_triton.launch(rows, lp, moments)
        if out is None:
            return None
        d = self.__dict__
        pending = d["_pending"]
        pending.append((out[0], out[1]))
        d["_pending_n"] += n
        if moments:
            d["_pending_moments"].append((out[2], out[3]))
            d["_pending_mn"] += n
        if len(pending) >= _PENDING_MAX:
            self._fold()
        return out

    def update(self, x: torch.Tensor, detail: bool = False, moments: bool = True) -> None:  # type: ignore[override]
        """Accumulate statistics of ``x``; ``detail=True`` also counts non-finite / out-of-bounds
        values, finite min/max and the histogram. ``moments=False`` skips the sum and sum of squares
        (two of the four reads of ``x``): min, max, the count and the non-finite flag still cover
        the tensor, and mean/std come from the updates that had moments (``detail=True`` always
        has them). Never synchronises with the host: every decision below depends on shapes,
        dtypes and devices only."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"RangeStats.update takes a tensor, got {type(x).__name__}")
        if not (detail or moments):
            # the every-step path, planned once per layout: two reads of x; the extremes are folded in later
            key = (x.shape, x.stride(), x.dtype, x.device, torch.get_num_threads(), stats_inductor.enabled,
                   stats_native.enabled)
            plan = self._plans.get(key, False)
            if plan is False:
                if len(self._plans) >= 256:  # ever-changing shapes (variable-size batches): stay bounded
                    self._plans.clear()
                plan = self._plans[key] = self._plan(x)
            d = self.__dict__
            st_min = d["_st_min"]
            if plan is not None and st_min.numel() == plan.shape[1] and st_min.device == plan.device:
                if plan.launch is not None:  # the one-read kernel (CUDA)
                    rows = (x.detach() if x.requires_grad else x).as_strided(plan.shape, plan.strides)
                    if self._launch(rows, plan.launch, plan.per_channel, False) is not None:
                        self.dtypes_seen.add(plan.dtype_name)
                        return
                    self._plans.clear()  # the kernel cannot run here: re-plan without it
                    return self.update(x, detail, moments)
                rows = (x.detach() if x.requires_grad else x).view(plan.shape)
                if plan.native or plan.compiled:  # one read for both (stats_native; stats_inductor, opt-in): (P, C) partials
                    out = stats_native.minmax(rows) if plan.native else stats_inductor.minmax(rows)
                    if out is None:  # it failed (and is off now): re-plan without it
                        self._plans.clear()
                        return self.update(x, detail, moments)
                    mn, mx = out
                elif plan.one_kernel:
                    mn, mx = rows.amin(dim=(0, 2)), rows.amax(dim=(0, 2))
                else:  # (A, C) partials: their reduction over A happens once, when folded
                    mn, mx = rows.amin(dim=2), rows.amax(dim=2)
                pending = d["_pending"]
                pending.append((mn, mx))  # folded into the states when they are next read
                d["_pending_n"] += plan.per_channel
                if len(pending) >= _PENDING_MAX:
                    self._fold()
                self.dtypes_seen.add(plan.dtype_name)
                return
        if x.is_complex():
            raise TypeError("RangeStats does not handle complex tensors")
        x = x.detach()
        c = self._channels_of(x)
        if x.numel() == 0:
            return  # nothing to count (shape-only decision)
        if self.min.numel() == 0:
            self._init_states(c, x.device)
        elif self.min.numel() != c:
            raise ValueError(f"RangeStats saw {self.min.numel()} channels before and now {c} (shape {tuple(x.shape)})")
        elif self.min.device != x.device:
            raise ValueError(
                f"RangeStats keeps its states on {self.min.device} but got a tensor on {x.device}; "
                "move the metric (.to(device)) or reset() it first"
            )
        self.dtypes_seen.add(_dtype_name(x.dtype))

        rows, c, _ = self._as_rows(x)
        if rows.dtype == torch.bool:
            rows = rows.view(torch.uint8)
        elif rows.dtype in _WIDEN:
            rows = rows.to(_WIDEN[rows.dtype])
        elif rows.dtype in (torch.float16, torch.bfloat16) and rows.device.type == "cpu":
            # CPU kernels convert half types element by element in every reduction; one exact
            # conversion to float32 first is cheaper than four of them
            rows = self._buffer("w", rows.shape, torch.float32, rows.device).copy_(rows)
        floating = rows.is_floating_point()
        if floating:
            acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
            fr = rows
        else:  # integers: exact sums in float64
            acc = torch.float64
            fr = rows.to(torch.float64)
        with_moments = moments or detail
        n = rows.numel() // c
        if floating and stats_triton.available(rows):
            lp = stats_triton.plan(*rows.shape)
            out = self._launch(rows, lp, n, with_moments) if stats_triton.usable(lp) else None
            if out is not None:
                if detail:
                    self._update_detail(rows, c, n, out[0].amin(dim=0), out[1].amax(dim=0))
                return
        if floating and self._update_fused(rows, c, n, with_moments, detail):
            if detail:
                self.value_sample.update(x)
            return
        # the sum of squares is the costliest kernel: it goes first, while the first read of x
        # waits on memory anyway; the other three then find x in cache
        if with_moments:
            q = _reduce(fr, "sumsq", acc, self._squares)
        mn = _reduce(rows, "amin")
        mx = _reduce(rows, "amax")

        # states are updated in place: they are never shared (see _load_from_state_dict), and a
        # Module attribute assignment costs more than the small kernels here
        torch.minimum(self.min, mn, out=self.min)  # NaN propagates, as intended
        torch.maximum(self.max, mx, out=self.max)
        if with_moments:
            self.sum.add_(_reduce(fr, "sum", acc))
            self.sumsq.add_(q)
            self.moment_count.add_(n)
        self.count.add_(n)
        # nonfinite_seen needs no work here: it is derived from min/max when read (see below)

        if detail:
            self._update_detail(rows, c, n, mn, mx)
            self.value_sample.update(x)

    def _update_fused(self, rows: torch.Tensor, c: int, n: int, with_moments: bool, detail: bool) -> bool:
        """The update through a fused CPU kernel: the one-read C kernel (:mod:`rangewatch.stats.native`,
        the default) or the compiled functions (:mod:`rangewatch.stats.inductor`, opt-in): one read
        of ``rows`` for every reduction, one more for the histogram slots. False (nothing changed)
        where neither takes ``rows`` or the kernel fails."""
        k, native = _fused_kernel(rows)
        if not (k or native):
            return False
        if not with_moments:
            out = stats_native.minmax(rows) if native else stats_inductor.minmax(rows)
            if out is None:
                return False
            torch.minimum(self.min, out[0].amin(dim=0), out=self.min)
            torch.maximum(self.max, out[1].amax(dim=0), out=self.max)
            self.count.add_(n)
            return True
        consts = self._consts(c, rows.device) if detail else None
        if detail:
            out = (stats_native.detail(rows, consts.lo32, consts.hi32) if native
                   else stats_inductor.detail(rows, k, consts.lo32, consts.hi32))
        else:
            out = stats_native.moments(rows) if native else stats_inductor.moments(rows, k)
        if out is None:
            return False
        counts = None
        if detail and self.hist_bins:
            bins, j = self.hist_bins, consts.hist_shift
            fused = stats_native if native else stats_inductor
            counts = fused.histogram(rows, consts.hist_lo, consts.hist_scale, consts.hist_off, -1 - j, bins - j,
                                     bins + 1 - j, c * (bins + 3))
            if counts is None:
                return False
        red = (0, 2)
        f64 = torch.float64
        torch.minimum(self.min, out[0].amin(dim=red), out=self.min)  # NaN propagates, as intended
        torch.maximum(self.max, out[1].amax(dim=red), out=self.max)
        self.sum.add_(out[2].sum(dim=red, dtype=f64))
        self.sumsq.add_(out[3].sum(dim=red, dtype=f64))
        self.moment_count.add_(n)
        self.count.add_(n)
        if not detail:
            return True
        torch.minimum(self.finite_min, out[4].amin(dim=red), out=self.finite_min)
        torch.maximum(self.finite_max, out[5].amax(dim=red), out=self.finite_max)
        nonfinite, nan = out[6].sum(dim=red, dtype=f64), out[7].sum(dim=red, dtype=f64)
        self.nan.add_(nan)
        self.inf.add_(nonfinite - nan)
        self.detail_count.add_(n)
        if consts.lo32 is not None:
            self.below.add_(out[8].sum(dim=red, dtype=f64))
            self.above.add_(out[9].sum(dim=red, dtype=f64))
        if counts is not None:
            self.hist.add_(counts.view(c, self.hist_bins + 3)[:, : self.hist_bins + 2])
        return True

    def _update_detail(self, rows: torch.Tensor, c: int, n: int, mn: torch.Tensor, mx: torch.Tensor) -> None:
        device = rows.device
        floating = rows.is_floating_point()
        f32_exact = rows.dtype in (torch.float32, torch.float16, torch.bfloat16) or rows.dtype in _SMALL_INTS
        wd = torch.float32 if f32_exact else torch.float64  # the dtype the comparisons happen in
        k = self._consts(c, device)
        s = self._buffer("s", rows.shape, wd, device)
        # elementwise work on R/S (same memory as rows/s), reductions on the (A, C, B) views
        a, _, b = rows.shape
        if _outer(a, c, b):
            g = _group(a, c * b)
            R, S = rows.reshape(a // g, g * c * b), s.view(a // g, g * c * b)

            def tile(t: torch.Tensor) -> torch.Tensor:
                return k.tile(t, g, c, b)
        else:
            R, S = rows, s

            def tile(t: torch.Tensor) -> torch.Tensor:
                return t
        nan = None
        if floating:
            # finite extremes: non-finite -> -inf for the max, then -> +inf for the min
            if rows.dtype == wd:
                torch.nan_to_num(R, nan=-_INF, posinf=-_INF, neginf=-_INF, out=S)
            else:
                S.copy_(R)
                S.nan_to_num_(nan=-_INF, posinf=-_INF, neginf=-_INF)
            fmax = _reduce(s, "amax")
            S.nan_to_num_(nan=_INF, posinf=_INF, neginf=_INF)
            fmin = _reduce(s, "amin")
            S.eq_(_INF)  # 1.0 where x is NaN or +-inf
            nonfinite = _reduce(s, "count")
            if not self.hist_bins:  # with a histogram NaN has its own bin
                torch.ne(R, R, out=S)  # 1.0 where x is NaN
                nan = _reduce(s, "count")
        else:
            fmin, fmax = mn, mx
        torch.minimum(self.finite_min, fmin, out=self.finite_min)
        torch.maximum(self.finite_max, fmax, out=self.finite_max)
        self.detail_count.add_(n)

        counts = None
        if self.hist_bins:
            counts = self._histogram(R, S, wd, k, c, tile)
            self.hist.add_(counts[:, : self.hist_bins + 2])
            if floating:
                nan = counts[:, self.hist_bins + 2]

        if k.lo64 is not None:
            lo, hi = (k.lo32, k.hi32) if wd == torch.float32 else (k.lo64, k.hi64)
            if counts is not None and k.below_slots and wd == torch.float32:
                # the lower bound is a bin edge of the float32 binning: x < low <=> slot < below_slots
                self.below.add_(counts[:, : k.below_slots].sum(dim=1))
            else:
                torch.lt(R, tile(lo), out=S)
                self.below.add_(_reduce(s, "count"))
            torch.gt(R, tile(hi), out=S)
            self.above.add_(_reduce(s, "count"))
        if floating:
            self.nan.add_(nan)
            self.inf.add_(nonfinite - nan)

    def _histogram(self, rows: torch.Tensor, s: torch.Tensor, wd: torch.dtype, k: _Consts, c: int,
                   tile: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``(C, bins + 3)`` float64 counts: [underflow, bins..., overflow, NaN] per channel.

        Bin of ``x``: ``clamp(floor((x - origin) * scale) + shift, -1, bins)`` in float32, so the bins are
        exactly ``[e_i, e_{i+1})`` for the edges of :func:`_bin_thresholds`. float64 (and wide
        integer) inputs are first rounded *down* to float32, which keeps ``x >= e`` for every
        float32 edge ``e``. One scatter (``bincount`` on CPU, ``index_add_`` elsewhere: CUDA's
        bincount synchronises) counts all channels and slots at once.
        """
        device = rows.device
        bins = self.hist_bins
        slots = bins + 3
        if wd == torch.float32:
            h = s
            torch.sub(rows, tile(k.hist_lo), out=h)
        else:
            x64 = rows if rows.dtype == torch.float64 else rows.to(torch.float64)
            h = self._buffer("h", rows.shape, torch.float32, device)
            h.copy_(x64)  # round to nearest ...
            down = torch.nextafter(h, torch.full((), -_INF, dtype=torch.float32, device=device))
            h = torch.where(h.to(torch.float64) > x64, down, h)  # ... then down where it went up
            h.sub_(tile(k.hist_lo))
        j = k.hist_shift
        h.mul_(tile(k.hist_scale)).floor_().clamp_(-1 - j, bins - j)
        h.nan_to_num_(nan=bins + 1 - j)  # NaN slot
        h.add_(tile(k.hist_off))  # channel c, slot j -> c * slots + j
        if _bincount_ok(device):
            itype = torch.int16 if c * slots < (1 << 15) else torch.int32
            idx = self._buffer("i", rows.shape, itype, device)
            idx.copy_(h)
            counts = torch.bincount(idx.view(-1), minlength=c * slots).to(torch.float64)
        else:
            idx = h.reshape(-1).to(torch.int32 if c * slots < (1 << 31) else torch.int64)
            counts = torch.zeros(c * slots, dtype=torch.float64, device=device)
            counts.index_add_(0, idx, torch.ones((), dtype=torch.float64, device=device).expand(idx.numel()))
        return counts.view(c, slots)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for name in (*_STATE_ORDER, "hist"):  # own copies: update() works in place
            setattr(self, name, getattr(self, name).clone())

    # ------------------------------------------------------------------ sync / merge
    def _pack(self) -> torch.Tensor:
        parts = [getattr(self, n) for n in _STATE_ORDER]
        if self.hist_bins and self.hist.numel():
            parts.append(self.hist.reshape(-1))
        return torch.cat(parts)

    def _unpack(self, packed: torch.Tensor, channels: int) -> dict[str, torch.Tensor]:
        st = {n: packed[..., i * channels : (i + 1) * channels] for i, n in enumerate(_STATE_ORDER)}
        if self.hist_bins:
            rest = packed[..., len(_STATE_ORDER) * channels :]
            st["hist"] = rest.reshape(*packed.shape[:-1], channels, self.hist_bins + 2)
        return st

    def _channels_in(self, length: int) -> int:
        per = len(_STATE_ORDER) + (self.hist_bins + 2 if self.hist_bins else 0)
        if length % per:
            raise ValueError(f"cannot unpack {length} synced values into RangeStats states ({per} per channel)")
        return length // per

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        """One gather of all states packed together (instead of one per state); ranks that saw no
        data send an empty tensor and are left out of the reduction."""
        if dist_sync_fn is None:
            from torchmetrics.utilities.distributed import gather_all_tensors

            dist_sync_fn = gather_all_tensors
        local = self._pack()
        gathered = dist_sync_fn(local, group=process_group or self.process_group)
        parts = [g.reshape(-1).to(local.device) for g in gathered if g.numel()]
        if not parts:
            return
        if any(p.numel() != parts[0].numel() for p in parts):
            raise ValueError(f"ranks hold different RangeStats sizes {[p.numel() for p in parts]}: different channel counts?")
        c = self._channels_in(parts[0].numel())
        st = self._unpack(torch.stack(parts), c)
        for name, t in st.items():
            red = "sum" if name == "hist" else _ALL[name][0]
            if red == "min":
                v = t.amin(dim=0)
            elif red == "max":
                v = t.amax(dim=0)
            else:
                v = t.sum(dim=0)
            setattr(self, name, v)
        if not self.hist_bins:
            self.hist = torch.zeros(0, 2, dtype=torch.float64, device=local.device)

    def merge(self, other: "RangeStats") -> None:
        """Fold another accumulator's states into this one (same channels and histogram)."""
        if other.channels == 0:
            self.dtypes_seen |= other.dtypes_seen
            return
        if other.hist_bins != self.hist_bins:
            raise ValueError(f"cannot merge hist_bins={other.hist_bins} into hist_bins={self.hist_bins}")
        if self.channels == 0:
            self._init_states(other.channels, other.min.device)
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        for name in _STATE_ORDER:
            red = _ALL[name][0]
            a, b = getattr(self, name), getattr(other, name).to(self.min.device)
            setattr(self, name, torch.minimum(a, b) if red == "min" else torch.maximum(a, b) if red == "max" else a + b)
        if self.hist_bins:
            self.hist = self.hist + other.hist.to(self.hist.device)
        self.dtypes_seen |= other.dtypes_seen

    # ------------------------------------------------------------------ compute
    def _wrap_compute(self, compute: Callable) -> Callable:
        """torchmetrics wraps ``compute`` (caching, scalar squeezing, its own sync bookkeeping);
        RangeStats keeps its own :meth:`compute`, which does the sync itself (see the module docstring)."""
        return compute

    def _local_states(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in (*_STATE_ORDER, "hist")}

    @property
    def synced(self) -> bool:
        """True between :meth:`sync` (one that gathered) and :meth:`unsync`."""
        return self.__dict__.get("_rs_local") is not None

    def sync(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None, should_sync: bool = True,
             distributed_available: Callable[[], bool] | None = None) -> None:
        """Replace the local states by the reduction over all processes (one gather), keeping the
        local ones for :meth:`unsync`. Does nothing unless ``should_sync`` and running distributed
        (``distributed_available()``, default: the ``distributed_available_fn`` given to the
        constructor, else torchmetrics' check). Same signature as :meth:`torchmetrics.Metric.sync`."""
        if self.synced and should_sync:
            raise RuntimeError("RangeStats.sync: already synced (call unsync() first)")
        if not should_sync:
            return
        available = distributed_available or self.distributed_available_fn
        if available is None or not available():
            return
        local = self._local_states()
        self._sync_dist(dist_sync_fn or self.dist_sync_fn, process_group)
        self.__dict__["_rs_local"] = local

    def unsync(self, should_unsync: bool = True) -> None:
        """Restore the local states saved by :meth:`sync` (accumulation continues from them)."""
        if not should_unsync:
            return
        local = self.__dict__.get("_rs_local")
        if local is None:
            raise RuntimeError("RangeStats.unsync: not synced")
        self.__dict__["_rs_local"] = None
        for name, t in local.items():
            setattr(self, name, t)

    @contextlib.contextmanager
    def sync_context(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None,
                     should_sync: bool = True, should_unsync: bool = True,
                     distributed_available: Callable[[], bool] | None = None) -> Iterator[None]:
        """:meth:`sync` on entry, :meth:`unsync` on exit (also on an exception) if it gathered."""
        self.sync(dist_sync_fn, process_group, should_sync, distributed_available)
        try:
            yield
        finally:
            if self.synced and should_unsync:
                self.unsync()

    def compute(self, sync: bool | None = None) -> RangeSummary:  # type: ignore[override]
        """One host transfer of all states; call only on check/logging steps.

        Under ``torch.distributed`` the states are first reduced over all processes (one gather;
        every process must call it, also one that saw no data) and restored afterwards, so
        accumulation goes on locally. ``sync=False`` computes from this process's states alone
        (no collective: safe on a path only some ranks take); the default is the constructor's
        ``sync_on_compute`` (True). After a manual :meth:`sync` the synced states are used as they are.
        """
        if sync is None:
            sync = self.sync_on_compute
        if self.synced or not sync:
            return self._summary()
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, process_group=self.process_group):
            return self._summary()

    def _summary(self) -> RangeSummary:
        c = self.channels
        if c == 0:
            z = torch.zeros(0, dtype=torch.float64)
            return RangeSummary(0, z, z, z, z, z, z.bool(), z, z, z, z, z, z, z, z, None, None, None, None, None,
                                tuple(sorted(self.dtypes_seen)))
        packed = self._pack().cpu()  # the single host transfer
        st = self._unpack(packed, c)
        cnt = st["count"]
        mcnt = st["moment_count"]
        mean = st["sum"] / mcnt.clamp(min=1)
        var = (st["sumsq"] / mcnt.clamp(min=1) - mean * mean).clamp(min=0)
        hist_t = edges = under = over = None
        if self.hist_bins:
            h = st["hist"]
            under, hist_t, over = h[:, 0], h[:, 1:-1], h[:, -1]
            edges = self.hist_edges_for(c, "cpu")
        bounds = self.bounds_for(c, "cpu")
        return RangeSummary(
            channels=c,
            count=cnt,
            min=st["min"],
            max=st["max"],
            mean=torch.where(mcnt > 0, mean, torch.nan),
            std=torch.where(mcnt > 0, var.sqrt(), torch.nan),
            nonfinite_seen=st["nonfinite_seen"] > 0,
            finite_min=st["finite_min"],
            finite_max=st["finite_max"],
            nan=st["nan"],
            inf=st["inf"],
            nonfinite=st["nan"] + st["inf"],
            below=st["below"],
            above=st["above"],
            detail_count=st["detail_count"],
            hist=hist_t,
            hist_edges=edges,
            hist_underflow=under,
            hist_overflow=over,
            bounds=bounds,
            dtypes=tuple(sorted(self.dtypes_seen)),
        )
