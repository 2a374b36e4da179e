"""One-read per-channel min, max, sum and sum of squares on CUDA: the Triton kernels behind
:meth:`RangeStats.update <rangewatch.stats.range_stats.RangeStats.update>`.

A batch viewed as ``(A, C, B)`` (the channel axis in the middle, see ``RangeStats._as_rows``) is
read once; each Triton program reduces a slice of it and writes per-channel partials
``(4, K, C)`` float32: ``[min, max, sum, sum of squares]`` over its ``K`` slices. No value is read
back to the host: RangeStats keeps the partials pending and folds them into its float64 states
(min/max exactly, sums in float64) when the states are next read.

* Exactness: float32, float16 and bfloat16 values are exact in float32, so the partial extremes
  are the tensor's own values; a slice holding a NaN reports NaN as its min and max (whatever the
  hardware's min/max does with NaN), so NaN propagates as in the eager path; sums and sums of
  squares are float32 over at most ``_BLOCK`` lanes of a few thousand elements each, then float64
  (the module docstring of :mod:`rangewatch.stats.range_stats` states the resulting precision; float16 and
  bfloat16 values are squared in float32, so float16 never overflows).
* Layouts: ``rows`` kernel where the inner axis ``B`` is long (contiguous NCHW: one program per
  (row, split) along memory); ``cols`` kernel where it is short (channels-last: ``B == 1``), which
  loads ``(rows, C * B)`` tiles of whole pixels and reduces over the rows.
* Where it runs: CUDA tensors of those three dtypes when Triton imports. Everything else (CPU,
  other dtypes, wide short-inner layouts, Triton missing or failing to compile) takes the eager
  path in :mod:`rangewatch.stats.range_stats`. For tests, ``TRITON_INTERPRET=1`` together with
  ``RANGEWATCH_TRITON_CPU=1`` (both set before this module is imported) runs the same kernels on
  CPU tensors in Triton's interpreter (slow; tests only).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

__all__ = ["available", "Launch", "plan", "usable", "launch"]

#: lanes of one program's accumulators (rows kernel) / elements of one tile (cols kernel)
_BLOCK = 1024
#: the cols kernel handles at most this many columns (C * B) per tile
_MAX_COLS = 1024
#: aim for about this many programs per launch (a few waves on a large GPU)
_TARGET_PROGRAMS = 1024
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: run the kernels on CPU tensors through Triton's interpreter (tests only; read at import)
INTERPRET_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("RANGEWATCH_TRITON_CPU") == "1"

try:  # Triton ships with torch's CUDA builds; without it (or without a GPU) the eager path runs
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

_broken: set[str] = set()  # kernels that failed to compile or launch here: eager from then on
#: kernel launches so far in this process (tests check that the kernels, not the fallback, ran)
launches = 0


def available(x: torch.Tensor) -> bool:
    """Whether the one-read kernels take ``x`` (device, dtype and Triton; not the layout)."""
    if triton is None or x.dtype not in _DTYPES:
        return False
    return x.device.type == "cuda" or (INTERPRET_ON_CPU and x.device.type == "cpu")


if triton is not None:

    @triton.jit
    def _rows_kernel(x_ptr, out_ptr, C, B, sA, sC, sB, chunk, slots,
                     MOMENTS: tl.constexpr, BLOCK: tl.constexpr):
        # program (r, s): row r = a * C + c of the (A, C, B) view, elements [s*chunk, (s+1)*chunk) of it
        r = tl.program_id(0)
        s = tl.program_id(1)
        nsplit = tl.num_programs(1)
        a = r // C
        c = r - a * C
        base = a.to(tl.int64) * sA + c.to(tl.int64) * sC
        lo = s * chunk
        hi = tl.minimum(lo + chunk, B)
        lanes = tl.arange(0, BLOCK)
        acc_min = tl.full([BLOCK], float("inf"), tl.float32)
        acc_max = tl.full([BLOCK], float("-inf"), tl.float32)
        acc_nan = tl.zeros([BLOCK], tl.int32)
        acc_sum = tl.zeros([BLOCK], tl.float32)
        acc_sq = tl.zeros([BLOCK], tl.float32)
        for start in range(lo, hi, BLOCK):
            offs = start + lanes
            m = offs < hi
            x = tl.load(x_ptr + base + offs.to(tl.int64) * sB, mask=m, other=0.0).to(tl.float32)
            acc_min = tl.minimum(acc_min, tl.where(m, x, float("inf")))
            acc_max = tl.maximum(acc_max, tl.where(m, x, float("-inf")))
            acc_nan = tl.maximum(acc_nan, (x != x).to(tl.int32))
            if MOMENTS:
                acc_sum += x
                acc_sq += x * x
        nan = tl.max(acc_nan, axis=0) > 0
        mn = tl.where(nan, float("nan"), tl.min(acc_min, axis=0))
        mx = tl.where(nan, float("nan"), tl.max(acc_max, axis=0))
        # out is (4, A, nsplit, C): slot (a * nsplit + s) of channel c
        o = (a * nsplit + s) * C + c
        tl.store(out_ptr + o, mn)
        tl.store(out_ptr + slots + o, mx)
        if MOMENTS:
            tl.store(out_ptr + 2 * slots + o, tl.sum(acc_sum, axis=0))
            tl.store(out_ptr + 3 * slots + o, tl.sum(acc_sq, axis=0))

    @triton.jit
    def _cols_kernel(x_ptr, out_ptr, A, C, B, sA, sC, sB, chunk, slots,
                     MOMENTS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr):
        # program p: rows [p*chunk, (p+1)*chunk) of the (A, C, B) view, all C*B columns at once
        p = tl.program_id(0)
        k = tl.arange(0, BLOCK_K)
        cc = k // B
        bb = k - cc * B
        kmask = k < C * B
        coloff = cc.to(tl.int64) * sC + bb.to(tl.int64) * sB
        lo = p * chunk
        hi = tl.minimum(lo + chunk, A)
        rows = tl.arange(0, BLOCK_A)
        acc_min = tl.full([BLOCK_A, BLOCK_K], float("inf"), tl.float32)
        acc_max = tl.full([BLOCK_A, BLOCK_K], float("-inf"), tl.float32)
        acc_nan = tl.zeros([BLOCK_A, BLOCK_K], tl.int32)
        acc_sum = tl.zeros([BLOCK_A, BLOCK_K], tl.float32)
        acc_sq = tl.zeros([BLOCK_A, BLOCK_K], tl.float32)
        for start in range(lo, hi, BLOCK_A):
            a = start + rows
            m = (a < hi)[:, None] & kmask[None, :]
            ptrs = x_ptr + a.to(tl.int64)[:, None] * sA + coloff[None, :]
            x = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
            acc_min = tl.minimum(acc_min, tl.where(m, x, float("inf")))
            acc_max = tl.maximum(acc_max, tl.where(m, x, float("-inf")))
            acc_nan = tl.maximum(acc_nan, (x != x).to(tl.int32))
            if MOMENTS:
                acc_sum += x
                acc_sq += x * x
        nan = tl.max(acc_nan, axis=0) > 0
        mn = tl.where(nan, float("nan"), tl.min(acc_min, axis=0))
        mx = tl.where(nan, float("nan"), tl.max(acc_max, axis=0))
        # out is (4, P, B, C): slot (p * B + b) of channel c
        o = (p * B + bb) * C + cc
        tl.store(out_ptr + o, mn, mask=kmask)
        tl.store(out_ptr + slots + o, mx, mask=kmask)
        if MOMENTS:
            tl.store(out_ptr + 2 * slots + o, tl.sum(acc_sum, axis=0), mask=kmask)
            tl.store(out_ptr + 3 * slots + o, tl.sum(acc_sq, axis=0), mask=kmask)


@dataclass(frozen=True)
class Launch:
    """A planned launch for one ``(A, C, B)`` layout: kernel, grid and the partials' shape."""

    kind: str  # "rows" or "cols"
    grid: tuple[int, ...]
    chunk: int
    slots_per_channel: int  # K: partials per channel
    block_a: int = 0
    block_k: int = 0


@functools.lru_cache(maxsize=256)
def plan(a: int, c: int, b: int) -> Launch | None:
    """How to read an ``(A, C, B)`` view in one pass (None: no kernel fits, use the eager path)."""
    if a * c * b == 0 or max(a, b) >= 1 << 31:  # program offsets along a row or down the rows are int32
        return None
    if b >= 64 or c * b > _MAX_COLS:
        rows = a * c
        max_split = math.ceil(b / _BLOCK)
        split = max(1, min(max_split, math.ceil(_TARGET_PROGRAMS / rows)))
        chunk = math.ceil(math.ceil(b / split) / _BLOCK) * _BLOCK
        split = math.ceil(b / chunk)
        if rows >= 1 << 31 or split >= 1 << 16:
            return None
        return Launch("rows", (rows, split), chunk, a * split)
    block_k = triton.next_power_of_2(c * b) if triton is not None else 1 << (c * b - 1).bit_length()
    block_a = max(1, min(_BLOCK // block_k, 1 << (a - 1).bit_length()))
    progs = max(1, min(_TARGET_PROGRAMS, math.ceil(a / block_a)))
    chunk = math.ceil(math.ceil(a / progs) / block_a) * block_a
    progs = math.ceil(a / chunk)
    return Launch("cols", (progs,), chunk, progs * b, block_a, block_k)


def usable(lp: Launch | None) -> bool:
    """A planned launch whose kernel has not failed in this process."""
    return lp is not None and lp.kind not in _broken


def launch(rows: torch.Tensor, lp: Launch, moments: bool) -> torch.Tensor | None:
    """Queue the one-read kernel over the ``(A, C, B)`` view ``rows``; returns the partials
    ``(4, K, C)`` float32 (rows 2 and 3 unset without ``moments``), or None if the kernel cannot
    run here (then it is not tried again in this process)."""
    global launches
    if lp.kind in _broken:
        return None
    a, c, b = rows.shape
    k = lp.slots_per_channel
    out = torch.empty((4, k, c), dtype=torch.float32, device=rows.device)
    sa, sc, sb = rows.stride()
    try:
        if lp.kind == "rows":
            _rows_kernel[lp.grid](rows, out, c, b, sa, sc, sb, lp.chunk, k * c,
                                  MOMENTS=moments, BLOCK=_BLOCK, num_warps=4)
        else:
            _cols_kernel[lp.grid](rows, out, a, c, b, sa, sc, sb, lp.chunk, k * c,
                                  MOMENTS=moments, BLOCK_A=lp.block_a, BLOCK_K=lp.block_k, num_warps=4)
    except Exception:  # compile/launch failure on this machine: the eager path takes over
        _broken.add(lp.kind)
        return None
    launches += 1
    return out
