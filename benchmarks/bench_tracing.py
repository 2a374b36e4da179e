"""Cost of rangewatch's ModuleTracer against no tracing and transformers' DebugUnderflowOverflow.

Copies of the same model (same weights) run in one process: untraced, traced by
``rangewatch.checks.numerics.ModuleTracer`` (all leaf modules; default ``exact=True`` and the one-pass
``exact=False``) and traced by
``transformers.debug_utils.DebugUnderflowOverflow`` (skipped when transformers is not importable).
Timings are interleaved (each repeat runs every variant, in a shuffled order) and the report gives
the fastest and the median repeat per variant and their ratios to the untraced copy, for an MLP and a conv net, in
inference (``no_grad`` forward) and training (forward + backward) mode.

    python benchmarks/bench_tracing.py [--repeats 15] [--iters 2] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import time

import torch
from torch import nn

from rangewatch.checks.numerics import ModuleTracer

try:  # noqa: SIM105
    from transformers.debug_utils import DebugUnderflowOverflow
except Exception as exc:  # pragma: no cover - depends on the environment
    DebugUnderflowOverflow = None
    _DUO_ERR = f"{type(exc).__name__}: {exc}"
else:
    _DUO_ERR = ""


def mlp(width: int = 1024, depth: int = 8) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def convnet(ch: int = 64, depth: int = 6) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
    for _ in range(depth):
        layers += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 10))


def build(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        return mlp(), torch.randn(64, 1024)
    return convnet(), torch.randn(8, 3, 64, 64)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def run_once(model: nn.Module, x: torch.Tensor, train: bool, iters: int) -> float:
    _sync(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        if train:
            model.zero_grad(set_to_none=True)
            model(x).float().square().mean().backward()
        else:
            with torch.no_grad():
                model(x)
    _sync(x)
    return (time.perf_counter() - t0) / iters


def bench(kind: str, train: bool, repeats: int, iters: int, device: str = "cpu") -> dict[str, list[float]]:
    base, x = build(kind)
    base, x = base.to(device), x.to(device)
    variants: dict[str, nn.Module] = {
        "none": base,
        "rangewatch": copy.deepcopy(base),
        "rangewatch exact=False": copy.deepcopy(base),
    }
    tracer = ModuleTracer(variants["rangewatch"]).attach()
    fast = ModuleTracer(variants["rangewatch exact=False"], exact=False).attach()
    if DebugUnderflowOverflow is not None:
        variants["DebugUnderflowOverflow"] = copy.deepcopy(base)
        DebugUnderflowOverflow(variants["DebugUnderflowOverflow"])
    for m in variants.values():  # warm-up
        run_once(m, x, train, 2)
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(variants)
        rng.shuffle(order)
        for k in order:
            times[k].append(run_once(variants[k], x, train, iters))
    for t in (tracer, fast):
        rep = t.report()
        assert not rep.nonfinite and len(rep.peaks) == len(t.names)
        t.detach()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--models", default="mlp,conv")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        + f", {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats} interleaved repeats x {args.iters} iterations"
    )
    if DebugUnderflowOverflow is None:
        print(f"transformers DebugUnderflowOverflow: skipped (not importable: {_DUO_ERR})")
    print("best = fastest repeat (least disturbed by other load), median = median repeat; ratios to the untraced copy")
    print(f"{'model':<6} {'mode':<8} {'variant':<24} {'best ms':>9} {'x untraced':>10} {'median ms':>10} {'x untraced':>10}")
    for kind in args.models.split(","):
        for train in (False, True):
            res = bench(kind, train, args.repeats, args.iters, args.device)
            b0, m0 = min(res["none"]), statistics.median(res["none"])
            for k, v in res.items():
                b, m = min(v), statistics.median(v)
                print(
                    f"{kind:<6} {'train' if train else 'forward':<8} {k:<24} {b * 1e3:9.2f} {b / b0:9.2f}x "
                    f"{m * 1e3:10.2f} {m / m0:9.2f}x"
                )


if __name__ == "__main__":
    main()
