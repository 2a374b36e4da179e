"""Fused one-read updates of :class:`~rangewatch.stats.range_stats.RangeStats` on CPU, compiled by
``torch.compile`` (inductor's C++ backend). Opt-in: ``RANGEWATCH_CPU_COMPILE=1`` in the environment
(read at import) or ``rangewatch.stats.inductor.enabled = True``.

Eager PyTorch has no fused multi-reduction on CPU (``aminmax``/``var_mean`` over a dimension are
slower than separate reductions), so the eager update reads a tensor once per statistic: two reads
every step (min, max), four for a full update, about twenty for ``detail=True``. The functions here
compute the same statistics of a float32 ``(A, C, B)`` view in one generated loop nest each:

* ``minmax``: per-``(A, C)`` min and max (the every-step path; folded later, as the eager partials);
* ``moments``: min, max, sum and sum of squares over slices of ``k`` elements (``k`` divides ``B``,
  at most 1024: float32 sums of at most 1024 values, combined in float64 by the caller);
* ``detail``: the same plus finite min/max and the NaN, non-finite, below and above counts
  (float32 counts of at most 1024 zeros and ones: exact);
* ``histogram``: the histogram counts, with the eager path's float32 slot arithmetic
  (``floor((x - origin) * scale)``, clamped, NaN in its own slot, plus the channel's offset) and
  the counting (int64 ``index_add_``) in the same loop: no slot tensor is written.

Exactness is the eager path's (the tests compare both against the numpy float64 reference):
extremes and counts are exact, sums are float32 over short slices then float64, and the slot
arithmetic is elementwise float32 without contraction (inductor's default ``-ffp-contract=off``).

Cost: the first call compiles (seconds to tens of seconds on a small CPU; cached on disk by
inductor for later processes), and a call with a new shape can compile again (20-45 s each for
four shapes on the loaded 2-core development VM), so the path is off by default and taken only for
tensors of at least :data:`MIN_NUMEL` elements. Anything it cannot take (other dtypes, short inner axes such as
channels-last, ``B`` without a divisor in :data:`CHUNKS`, no C++ compiler, a compile error, inside a
``torch.compile`` trace) stays on the eager path; a failure is logged once and switches the path off
for the process.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

__all__ = ["enabled", "MIN_NUMEL", "CHUNKS", "chunk_for", "minmax", "moments", "detail", "histogram"]

log = logging.getLogger(__name__)

#: whether RangeStats uses the compiled CPU functions (``RANGEWATCH_CPU_COMPILE=1``; default off)
enabled = os.environ.get("RANGEWATCH_CPU_COMPILE", "0") == "1"
#: smaller tensors stay eager (a compiled call costs tens of microseconds of guards)
MIN_NUMEL = 1 << 20
#: slice lengths of the float32 partial sums, tried in this order (each must divide ``B``)
CHUNKS = (1024, 512, 256, 128)
_INF = float("inf")

_broken: str | None = None  # the first failure; the path is off from then on
_compiled: dict[str, Callable] = {}
#: compiled calls so far in this process (tests check that the path, not the fallback, ran)
calls = 0


def chunk_for(rows: torch.Tensor) -> int:
    """Slice length ``k`` for ``rows`` ``(A, C, B)`` if the compiled path takes it, else 0."""
    if not enabled or _broken is not None or rows.device.type != "cpu" or rows.dtype != torch.float32:
        return 0
    if rows.numel() < MIN_NUMEL or not rows.is_contiguous() or rows.requires_grad:
        return 0
    if torch.compiler.is_compiling():
        return 0
    b = rows.shape[2]
    for k in CHUNKS:
        if b % k == 0:
            return k
    return 0


def _minmax(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return r.amin(2), r.amax(2)


def _moments(r: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    a, c, b = r.shape
    v = r.view(a, c, b // k, k)
    return v.amin(3), v.amax(3), v.sum(3), (v * v).sum(3)


def _detail(r: torch.Tensor, k: int, lo: torch.Tensor | None, hi: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    a, c, b = r.shape
    v = r.view(a, c, b // k, k)
    fin = v.isfinite()
    f32 = torch.float32
    out = (v.amin(3), v.amax(3), v.sum(3), (v * v).sum(3),
           torch.where(fin, v, _INF).amin(3), torch.where(fin, v, -_INF).amax(3),
           (~fin).sum(3, dtype=f32), (v != v).sum(3, dtype=f32))
    if lo is not None and hi is not None:
        out = out + ((v < lo.unsqueeze(-1)).sum(3, dtype=f32), (v > hi.unsqueeze(-1)).sum(3, dtype=f32))
    return out


def _histogram(r: torch.Tensor, origin: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
               low: int, high: int, nan_slot: int, size: int) -> torch.Tensor:
    h = ((r - origin) * scale).floor().clamp(low, high)
    h = torch.where(r != r, float(nan_slot), h) + offset
    idx = h.to(torch.int64).view(-1)
    return torch.zeros(size, dtype=torch.int64, device=r.device).index_add_(0, idx, torch.ones_like(idx))


_FUNCS = {"minmax": _minmax, "moments": _moments, "detail": _detail, "histogram": _histogram}


def _call(name: str, *args: Any) -> Any:
    """The compiled ``name`` on ``args``; None (and the path switched off) if it fails."""
    global _broken, calls
    fn = _compiled.get(name)
    try:
        if fn is None:
            fn = _compiled[name] = torch.compile(_FUNCS[name], fullgraph=True, options={"compile_threads": 1})
        out = fn(*args)
    except Exception as e:  # no compiler, a compile or runtime error: eager from now on
        _broken = f"{type(e).__name__}: {e}"[:500]
        log.warning("rangewatch: the compiled CPU statistics failed (%s); using the eager path from now on", _broken)
        return None
    calls += 1
    return out


def minmax(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, C)`` float32 min and max of ``rows`` ``(A, C, B)`` (NaN propagated), or None."""
    return _call("minmax", rows)


def moments(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, ...] | None:
    """``(A, C, B/k)`` partial min, max, sum, sum of squares (float32), or None."""
    return _call("moments", rows, k)


def detail(rows: torch.Tensor, k: int, lo: torch.Tensor | None, hi: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
    """``(A, C, B/k)`` partials: min, max, sum, sum of squares, finite min, finite max, non-finite
    count, NaN count, and with ``lo``/``hi`` ``(1, C, 1)`` float32 the ``x < lo`` and ``x > hi``
    counts; or None."""
    return _call("detail", rows, k, lo, hi)


def histogram(rows: torch.Tensor, origin: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, low: int,
              high: int, nan_slot: int, size: int) -> torch.Tensor | None:
    """``(size,)`` int64 counts of the histogram slots of ``rows``, with the slot arithmetic of
    ``RangeStats._histogram`` (``origin``/``scale``/``offset`` ``(1, C, 1)`` float32); or None."""
    return _call("histogram", rows, origin, scale, offset, low, high, nan_slot, size)
