"""Cost of watching loss networks and metrics (rangewatch.integrations.LossWatch), measured side by side.

For each object, an unwatched and a watched copy are called alternately (interleaved pairs, after the
first call, which is judged at once and costs one host transfer); the ratio watched / unwatched of the
median pair is printed. No assertion: figures only.

    python benchmarks/bench_loss_networks.py [--pairs 30] [--side 64]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _time(fn, *a, **k) -> float:
    t = time.perf_counter()
    fn(*a, **k)
    return time.perf_counter() - t


def bench(name: str, make, call, pairs: int) -> None:
    from rangewatch import LossWatch

    plain = make()
    watched = copy.deepcopy(plain)
    watch = LossWatch(functions=False).attach(watched)
    call(watched)  # the first call: judged at once
    call(plain)
    ratios, base, extra = [], [], []
    for _ in range(pairs):
        a = _time(call, plain)
        b = _time(call, watched)
        ratios.append(b / a)
        base.append(a)
        extra.append(b - a)
    watch.detach()
    print(f"{name:42s} unwatched {1e3 * statistics.median(base):8.2f} ms/call, watching adds {1e3 * statistics.median(extra):+.3f} ms; watched/unwatched {statistics.median(ratios):.3f}"
          f"  (pairs {pairs}, IQR {statistics.quantiles(ratios, n=4)[0]:.3f}..{statistics.quantiles(ratios, n=4)[2]:.3f})")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--side", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.rand(4, 3, args.side, args.side)
    y = x.flip(-1)
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    bench("torchmetrics PeakSignalNoiseRatio", lambda: PeakSignalNoiseRatio(data_range=1.0), lambda m: m(x, y), args.pairs)
    bench("torchmetrics StructuralSimilarityIndexMeasure", lambda: StructuralSimilarityIndexMeasure(data_range=1.0),
          lambda m: m.update(x, y), args.pairs)
    try:
        import lpips
    except ImportError:
        print("lpips not installed: skipped")
        return
    net = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
    with torch.no_grad():
        bench("lpips.LPIPS(net='alex')", lambda: net, lambda m: m(x, y, normalize=True), args.pairs)


if __name__ == "__main__":
    main()
