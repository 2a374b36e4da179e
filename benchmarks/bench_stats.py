"""Benchmark RangeStats.update against one ``x.sum()`` over the same tensor.

Run from the repository root::

    .venv/bin/python benchmarks/bench_stats.py            # CPU (and CUDA when available)
    .venv/bin/python benchmarks/bench_stats.py --repeats 400 --threads 1

Every candidate is timed once per round, rounds interleave the candidates in a shuffled order (so
background load and cache state hit them all alike), and the report gives the median over the rounds,
its ratio to the median of ``x.sum()``, and the median of the per-round ratios (each call against the
``x.sum()`` of the same round). Candidates:

* ``x.sum()``                    - the yardstick: one full reduction
* ``update(x)``                  - the default update (min, max, sum, sumsq, count, non-finite flag)
* ``update(x, moments=False)``   - what RangeWatch runs every step: min, max, count, non-finite flag
* ``naive per-channel loop``     - separate min/max/mean/std/count ops per channel in a Python loop
* ``update(x, detail=True)``     - with ``bounds`` (finite min/max, NaN/Inf counts, below/above counts)
* ``... + hist_bins=64``         - the same plus a 64-bin per-channel histogram
* ``... [eager]``                - with ``--eager``: the same updates with the one-read C kernel off
  (``rangewatch.stats.native``, on by default since issue 17): the eager reductions, interleaved
  with the rest (before/after in one run)
* ``... [compiled]``             - with ``--cpu-compile``: the same updates through the opt-in compiled
  CPU functions (``rangewatch.stats.inductor``, ``RANGEWATCH_CPU_COMPILE=1``), interleaved with the rest
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rangewatch.stats import inductor as stats_inductor
from rangewatch.stats import native as stats_native  # noqa: E402
from rangewatch.stats.range_stats import RangeStats  # noqa: E402

SHAPE = (16, 3, 256, 256)
#: the CUDA yardstick of issue 17: one batch of 16 images at 512 px
CUDA_SHAPE = (16, 3, 512, 512)


def naive_per_channel(x: torch.Tensor, channel_dim: int = 1) -> list[tuple[float, ...]]:
    """What a hand-written range check usually does: one op per statistic per channel, each
    result pulled to the host."""
    out = []
    for c in range(x.shape[channel_dim]):
        xc = x.select(channel_dim, c)
        out.append(
            (
                xc.min().item(),
                xc.max().item(),
                xc.mean().item(),
                xc.std().item(),
                xc.numel(),
                int((~torch.isfinite(xc)).sum().item()),
            )
        )
    return out


def with_flag(module: object, value: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``module.enabled`` set to ``value`` (put back after the call)."""
    def call() -> object:
        before = module.enabled
        module.enabled = value
        try:
            return fn()
        finally:
            module.enabled = before
    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(cands: dict[str, Callable[[], object]], device: torch.device, repeats: int, inner: int,
          cache: str = "interleaved") -> dict[str, list[float]]:
    """Seconds per call of each candidate in each of ``repeats`` rounds; every round runs every
    candidate once, in a shuffled order. ``cache``: ``interleaved`` (whatever the previous
    candidate left in the caches), ``warm`` (an untimed call of the same candidate first) or
    ``cold`` (64 MiB written first, evicting the tensor from every cache level)."""
    names = list(cands)
    for fn in cands.values():  # warm-up: allocator, caches, lazy init
        for _ in range(3):
            fn()
    _sync(device)
    flush = torch.empty(16 << 20, device=device) if cache == "cold" else None
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(names)
        for n in names:
            fn = cands[n]
            if cache == "warm":
                fn()
            elif flush is not None:
                flush.add_(1.0)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            times[n].append((time.perf_counter() - t0) / inner)
    return times


def run(device: torch.device, repeats: int, inner: int, dtype: torch.dtype = torch.float32,
        channels_last: bool = False, cache: str = "interleaved", shape: tuple[int, ...] = SHAPE,
        naive: bool = True, compiled: bool = False, eager: bool = False) -> dict[str, float]:
    """Print the table for one tensor; returns each candidate's median per-round ratio to ``x.sum()``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    every = RangeStats(bounds="imagenet")
    minmax = RangeStats(bounds="imagenet")
    det = RangeStats(bounds="imagenet")
    hist = RangeStats(bounds="imagenet", hist_bins=64)
    cands: dict[str, Callable[[], object]] = {
        "x.sum()": lambda: x.sum(),
        "update(x)": lambda: every.update(x),
        "update(x, moments=False)": lambda: minmax.update(x, moments=False),
        "update(x, detail=True) bounds": lambda: det.update(x, detail=True),
        "update(x, detail=True) bounds+hist64": lambda: hist.update(x, detail=True),
    }
    if device.type == "cpu" and naive:
        cands["naive per-channel loop"] = lambda: naive_per_channel(x)
    if device.type == "cpu" and eager:
        def off(fn: Callable[[], object]) -> Callable[[], object]:
            return with_flag(stats_native, False, fn)

        e_every, e_minmax = RangeStats(bounds="imagenet"), RangeStats(bounds="imagenet")
        e_det, e_hist = RangeStats(bounds="imagenet"), RangeStats(bounds="imagenet", hist_bins=64)
        cands.update({
            "update(x) [eager]": off(lambda: e_every.update(x)),
            "update(x, moments=False) [eager]": off(lambda: e_minmax.update(x, moments=False)),
            "update(x, detail=True) bounds [eager]": off(lambda: e_det.update(x, detail=True)),
            "update(x, detail=True) bounds+hist64 [eager]": off(lambda: e_hist.update(x, detail=True)),
        })
    if device.type == "cpu":
        print(f"  (one-read C kernel: {'on' if stats_native.available() else 'off: ' + str(stats_native._broken)})")
    if device.type == "cpu" and compiled:
        def on(fn: Callable[[], object]) -> Callable[[], object]:
            return with_flag(stats_inductor, True, fn)

        c_every, c_minmax = RangeStats(bounds="imagenet"), RangeStats(bounds="imagenet")
        c_det, c_hist = RangeStats(bounds="imagenet"), RangeStats(bounds="imagenet", hist_bins=64)
        t0 = time.perf_counter()
        for fn in (lambda: c_every.update(x), lambda: c_minmax.update(x, moments=False),
                   lambda: c_det.update(x, detail=True), lambda: c_hist.update(x, detail=True)):
            on(fn)()
        print(f"  (compiled CPU functions ready in {time.perf_counter() - t0:.1f} s, {stats_inductor.calls} calls;"
              f" failure: {stats_inductor._broken})")
        cands.update({
            "update(x) [compiled]": on(lambda: c_every.update(x)),
            "update(x, moments=False) [compiled]": on(lambda: c_minmax.update(x, moments=False)),
            "update(x, detail=True) bounds [compiled]": on(lambda: c_det.update(x, detail=True)),
            "update(x, detail=True) bounds+hist64 [compiled]": on(lambda: c_hist.update(x, detail=True)),
        })
    times = bench(cands, device, repeats, inner, cache)
    med = {n: statistics.median(v) for n, v in times.items()}
    base = med["x.sum()"]
    # ratio to the x.sum() of the same round: robust to load that comes and goes between rounds
    paired = {n: statistics.median(a / b for a, b in zip(v, times["x.sum()"])) for n, v in times.items()}
    layout = "channels_last" if channels_last else "contiguous"
    print(f"\n{device.type} {str(dtype).replace('torch.', '')} {layout} {tuple(x.shape)}"
          f"  (threads={torch.get_num_threads()}, rounds={repeats}, inner={inner}, caches {cache})")
    print(f"  {'candidate':51s} {'median':>11s} {'/ x.sum()':>10s} {'per-round':>10s}")
    for n in cands:
        print(f"  {n:51s} {med[n] * 1e6:9.1f}us {med[n] / base:9.2f}x {paired[n]:9.2f}x")
    return paired


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200, help="interleaved rounds (default 200)")
    ap.add_argument("--inner", type=int, default=1, help="calls per timing (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--extra", action="store_true", help="also fp16 and channels_last on CPU")
    ap.add_argument("--cache", choices=["interleaved", "warm", "cold", "all"], default="interleaved",
                    help="cache state before each timed call (default interleaved; all: the three in turn)")
    ap.add_argument("--cpu-compile", action="store_true",
                    help="also time the opt-in compiled CPU updates (rangewatch.stats.inductor; compiles first)")
    ap.add_argument("--eager", action="store_true",
                    help="also time the updates with the one-read C kernel off (the eager reductions)")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--cuda-only", action="store_true", help="skip the CPU tables")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    if not args.cuda_only:
        for cache in (["interleaved", "warm", "cold"] if args.cache == "all" else [args.cache]):
            run(torch.device("cpu"), args.repeats, args.inner, cache=cache, compiled=args.cpu_compile,
                eager=args.eager)
        if args.extra:
            run(torch.device("cpu"), max(args.repeats // 4, 20), args.inner, channels_last=True)
            run(torch.device("cpu"), max(args.repeats // 4, 20), args.inner, dtype=torch.float16)
    if torch.cuda.is_available() and not args.no_cuda:
        run_cuda(args.repeats, max(args.inner, 10))
    return 0


def run_cuda(repeats: int, inner: int) -> dict[str, dict[str, float]]:
    """The CUDA tables: 16x3x512x512 float32 and bfloat16 (contiguous; bfloat16 also channels-last)."""
    dev = torch.device("cuda")
    print(f"\nCUDA: {torch.cuda.get_device_name(dev)}; target: update(x, moments=False) <= 1.3x of x.sum()")
    out = {}
    for dtype, cl in ((torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, True)):
        name = f"{str(dtype).replace('torch.', '')} {'channels_last' if cl else 'contiguous'}"
        out[name] = run(dev, repeats, inner, dtype=dtype, channels_last=cl, shape=CUDA_SHAPE)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
