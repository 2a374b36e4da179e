"""Device-side per-channel range statistics (:class:`RangeStats`).

``update`` only queues reductions on the tensor's own device: no ``.item()``, ``.cpu()``,
``bool(tensor)`` or branch on tensor values. ``compute`` is the single host transfer.
The accumulator is a torchmetrics :class:`~torchmetrics.Metric`, so every state carries its
cross-process reduction (min, max or sum) and ``compute`` synchronises once under DDP.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torchmetrics import Metric

from .conventions import Convention, get_convention

__all__ = ["RangeStats", "RangeSummary"]

BoundsLike = "Convention | str | tuple[float | Sequence[float], float | Sequence[float]] | None"

# name -> (reduction, fill value of a fresh per-channel state)
_EVERY_STEP = {
    "min": ("min", float("inf")),
    "max": ("max", float("-inf")),
    "sum": ("sum", 0.0),
    "sumsq": ("sum", 0.0),
    "count": ("sum", 0.0),
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
_STATE_ORDER = tuple(_EVERY_STEP) + tuple(_DETAIL)


@dataclass
class RangeSummary:
    """Per-channel results of :meth:`RangeStats.compute` (float64 CPU tensors of shape ``(C,)``).

    ``min``/``max``/``mean``/``std`` cover every element seen (NaN once a NaN was seen);
    ``finite_min``/``finite_max``, ``nan``/``inf``/``nonfinite``, ``below``/``above`` come from
    ``detail=True`` updates, over ``detail_count`` elements per channel.
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


class RangeStats(Metric):
    """Per-channel min/max/mean/std/non-finite/out-of-bounds accumulator on the tensor's device.

    Args:
        channel_dim: the channel dimension; ``None`` treats the whole tensor as one channel.
        bounds: a convention (or its name) or per-channel ``(low, high)`` used by ``detail=True``
            updates to count values below/above the expected range.
        hist_bins: number of fixed histogram bins per channel filled by ``detail=True`` updates (0: off).
        hist_range: ``(low, high)`` of the histogram; default: ``bounds`` padded by half their span
            on each side, or (-1.5, 2.5) without bounds.
        dist_sync_fn: gather function for cross-process reduction (torchmetrics signature); the
            callback passes the Lightning strategy's ``all_gather``.

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
        if channel_dim is not None and not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int or None, got {channel_dim!r}")
        if not isinstance(hist_bins, int) or hist_bins < 0:
            raise ValueError(f"hist_bins must be a non-negative int, got {hist_bins!r}")
        if hist_range is not None and not (len(hist_range) == 2 and float(hist_range[0]) < float(hist_range[1])):
            raise ValueError(f"hist_range must be (low, high) with low < high, got {hist_range!r}")
        self.channel_dim = channel_dim
        self.bounds = _resolve_bounds(bounds)
        self.hist_bins = hist_bins
        self.hist_range = None if hist_range is None else (float(hist_range[0]), float(hist_range[1]))
        self.dtypes_seen: set[str] = set()
        for name, (red, _) in {**_EVERY_STEP, **_DETAIL}.items():
            self.add_state(name, default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx=red, persistent=True)
        self.add_state("hist", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum", persistent=True)
        self._bounds_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def channels(self) -> int:
        return int(self.min.numel())

    def _init_states(self, channels: int, device: torch.device) -> None:
        for name in _STATE_ORDER:
            fill = {**_EVERY_STEP, **_DETAIL}[name][1]
            setattr(self, name, torch.full((channels,), fill, dtype=torch.float64, device=device))
        if self.hist_bins:
            # per channel: [underflow, bins..., overflow]; NaN is counted in `nan`
            self.hist = torch.zeros(channels, self.hist_bins + 2, dtype=torch.float64, device=device)

    def bounds_for(self, channels: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.bounds is None:
            return None
        key = (str(device), channels)
        if key not in self._bounds_cache:
            if isinstance(self.bounds, Convention):
                lo, hi = self.bounds.bounds(channels)
            else:
                lo, hi = self.bounds
                lo = lo * channels if len(lo) == 1 else lo
                hi = hi * channels if len(hi) == 1 else hi
                if len(lo) != channels or len(hi) != channels:
                    raise ValueError(f"bounds give {len(lo)} channels but the tensor has {channels}")
            self._bounds_cache[key] = (
                torch.tensor(lo, dtype=torch.float64, device=device),
                torch.tensor(hi, dtype=torch.float64, device=device),
            )
        return self._bounds_cache[key]

    def hist_edges_for(self, channels: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(C, bins + 1)`` float64 bin edges."""
        if self.hist_range is not None:
            lo = torch.full((channels,), self.hist_range[0], dtype=torch.float64, device=device)
            hi = torch.full((channels,), self.hist_range[1], dtype=torch.float64, device=device)
        else:
            b = self.bounds_for(channels, device)
            if b is None:
                lo = torch.full((channels,), -1.5, dtype=torch.float64, device=device)
                hi = torch.full((channels,), 2.5, dtype=torch.float64, device=device)
            else:
                span = b[1] - b[0]
                lo, hi = b[0] - 0.5 * span, b[1] + 0.5 * span
        steps = torch.linspace(0, 1, self.hist_bins + 1, dtype=torch.float64, device=device)
        return lo[:, None] + (hi - lo)[:, None] * steps[None, :]

    def _as_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """A view (A, C, B) of ``x`` (or its copy) with the channel axis in the middle; reductions go
        over dim 2 first (contiguous) and then dim 0."""
        if self.channel_dim is None or x.dim() == 0:
            return x.reshape(1, 1, -1), 1, 0
        cd = self.channel_dim
        if not -x.dim() <= cd < x.dim():
            raise ValueError(
                f"channel_dim={self.channel_dim} is out of range for a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            )
        cd %= x.dim()
        c = x.shape[cd]
        if x.dim() == 4 and cd == 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return x.permute(0, 2, 3, 1).reshape(-1, c, 1), c, cd  # a view: channel innermost
        a = 1
        for s in x.shape[:cd]:
            a *= s
        return x.reshape(a, c, -1), c, cd

    # ------------------------------------------------------------------ update
    def update(self, x: torch.Tensor, detail: bool = False) -> None:  # type: ignore[override]
        """Accumulate statistics of ``x``; ``detail=True`` also counts non-finite / out-of-bounds
        values, finite min/max and the histogram. Never synchronises with the host."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"RangeStats.update takes a tensor, got {type(x).__name__}")
        if x.is_complex():
            raise TypeError("RangeStats does not handle complex tensors")
        rows, c, _ = self._as_rows(x.detach())
        if x.numel() == 0:
            return  # nothing to count; shape-only decision, no sync
        if self.min.numel() == 0:
            self._init_states(c, x.device)
        elif self.min.numel() != c:
            raise ValueError(f"RangeStats saw {self.min.numel()} channels before and now {c} (shape {tuple(x.shape)})")
        self.dtypes_seen.add(str(x.dtype).replace("torch.", ""))

        if rows.dtype == torch.bool:
            rows = rows.to(torch.uint8)
        if rows.is_floating_point():
            acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
            fr = rows
        else:
            acc = torch.float32
            fr = rows.to(torch.float32)

        mn = rows.amin(dim=2).amin(dim=0).to(torch.float64)
        mx = rows.amax(dim=2).amax(dim=0).to(torch.float64)
        s = fr.sum(dim=2, dtype=acc).to(torch.float64).sum(dim=0)
        q = torch.linalg.vector_norm(fr, dim=2, dtype=acc).to(torch.float64).square().sum(dim=0)
        n = rows.shape[0] * rows.shape[2]

        self.min = torch.minimum(self.min, mn)  # NaN propagates, as intended
        self.max = torch.maximum(self.max, mx)
        self.sum = self.sum + s
        self.sumsq = self.sumsq + q
        self.count = self.count + n
        # any NaN makes min/max NaN and any Inf makes one of them infinite: a free non-finite flag
        seen = (~(torch.isfinite(mn) & torch.isfinite(mx))).to(torch.float64)
        self.nonfinite_seen = torch.maximum(self.nonfinite_seen, seen)

        if detail:
            self._update_detail(rows, fr, c, n)

    def _update_detail(self, rows: torch.Tensor, fr: torch.Tensor, c: int, n: int) -> None:
        device = rows.device
        if rows.is_floating_point():
            fin = torch.isfinite(rows)
            nan = torch.isnan(rows)
            inf_ = ~(fin | nan)
            fmin = torch.where(fin, rows, torch.inf).amin(dim=2).amin(dim=0).to(torch.float64)
            fmax = torch.where(fin, rows, -torch.inf).amax(dim=2).amax(dim=0).to(torch.float64)
            self.nan = self.nan + nan.sum(dim=(0, 2), dtype=torch.float64)
            self.inf = self.inf + inf_.sum(dim=(0, 2), dtype=torch.float64)
        else:
            fmin = rows.amin(dim=2).amin(dim=0).to(torch.float64)
            fmax = rows.amax(dim=2).amax(dim=0).to(torch.float64)
        self.finite_min = torch.minimum(self.finite_min, fmin)
        self.finite_max = torch.maximum(self.finite_max, fmax)
        self.detail_count = self.detail_count + n

        b = self.bounds_for(c, device)
        if b is not None:
            lo = b[0].to(fr.dtype if fr.dtype == torch.float64 else torch.float32).view(1, c, 1)
            hi = b[1].to(lo.dtype).view(1, c, 1)
            self.below = self.below + (fr < lo).sum(dim=(0, 2), dtype=torch.float64)
            self.above = self.above + (fr > hi).sum(dim=(0, 2), dtype=torch.float64)

        if self.hist_bins:
            edges = self.hist_edges_for(c, device)
            lo = edges[:, 0].to(torch.float32).view(1, c, 1)
            width = ((edges[:, -1] - edges[:, 0]) / self.hist_bins).to(torch.float32).view(1, c, 1)
            t = ((fr.to(torch.float32) - lo) / width).floor_().clamp_(-1, self.hist_bins)
            # bin 0 = underflow (also -inf), bins+1 = overflow (also +inf); NaN goes to a discard slot
            slot = self.hist_bins + 2
            idx = torch.nan_to_num(t, nan=float(slot - 1)).long() + 1
            idx = torch.where(torch.isnan(t), slot, idx) if rows.is_floating_point() else idx
            idx = idx + torch.arange(c, device=device).view(1, c, 1) * (slot + 1)
            counts = torch.zeros(c * (slot + 1), dtype=torch.float64, device=device)
            counts.index_add_(0, idx.reshape(-1), torch.ones(1, dtype=torch.float64, device=device).expand(idx.numel()))
            self.hist = self.hist + counts.view(c, slot + 1)[:, :slot]

    # ------------------------------------------------------------------ compute
    def _wrap_compute(self, compute: Callable) -> Callable:
        """Sync across processes around ``compute`` (once), without torchmetrics' caching and
        scalar squeezing (a one-channel summary keeps its channel axis)."""

        @functools.wraps(compute)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.min.numel() == 0:
                return compute(*args, **kwargs)
            with self.sync_context(
                dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
            ):
                return compute(*args, **kwargs)

        return wrapped

    def compute(self) -> RangeSummary:  # type: ignore[override]
        """One host transfer of all states; call only on check/logging steps."""
        c = self.channels
        device = self.min.device
        if c == 0:
            z = torch.zeros(0, dtype=torch.float64)
            return RangeSummary(0, z, z, z, z, z, z, z, z, z, z, z, z, z, z, None, None, None, None, None, tuple(sorted(self.dtypes_seen)))
        parts = [getattr(self, n) for n in _STATE_ORDER]
        hist = self.hist if self.hist_bins and self.hist.numel() else None
        if hist is not None:
            parts.append(hist.reshape(-1))
        packed = torch.cat(parts).cpu()  # the single host transfer
        st = {n: packed[i * c : (i + 1) * c] for i, n in enumerate(_STATE_ORDER)}
        cnt = st["count"]
        mean = st["sum"] / cnt.clamp(min=1)
        var = (st["sumsq"] / cnt.clamp(min=1) - mean * mean).clamp(min=0)
        hist_t = edges = under = over = None
        if hist is not None:
            h = packed[len(_STATE_ORDER) * c :].view(c, self.hist_bins + 2)
            under, hist_t, over = h[:, 0], h[:, 1:-1], h[:, -1]
            edges = self.hist_edges_for(c, "cpu")
        bounds = self.bounds_for(c, "cpu")
        return RangeSummary(
            channels=c,
            count=cnt,
            min=st["min"],
            max=st["max"],
            mean=torch.where(cnt > 0, mean, torch.nan),
            std=torch.where(cnt > 0, var.sqrt(), torch.nan),
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

    def merge(self, other: "RangeStats") -> None:
        """Fold another accumulator's states into this one (same channels)."""
        if other.channels == 0:
            return
        if self.channels == 0:
            self._init_states(other.channels, other.min.device)
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        for name in _STATE_ORDER:
            red = {**_EVERY_STEP, **_DETAIL}[name][0]
            a, b = getattr(self, name), getattr(other, name).to(self.min.device)
            setattr(self, name, torch.minimum(a, b) if red == "min" else torch.maximum(a, b) if red == "max" else a + b)
        if self.hist_bins and other.hist.numel():
            self.hist = self.hist + other.hist.to(self.hist.device) if self.hist.numel() else other.hist.clone()
        self.dtypes_seen |= other.dtypes_seen
