"""Wall-clock overhead of ``RangeWatch()`` (default settings) on a reference Lightning training run.

A small conv net trains on CPU on synthetic uint8-quantised [0, 1] images, 16x3x128x128 per batch,
for ``--steps`` steps, without and with the callback. Runs alternate in one process, ABBA order
(pair i: A B if i is even, B A if odd), after one untimed warm-up run of each; the figure is the
median of the per-pair time ratios (with / without), and the ratio of medians is printed too.

Both arms use the same Trainer settings: ``logger=False`` (``--logger tb`` gives both a
TensorBoardLogger instead), no progress bar, checkpointing or model summary. The time spent inside
RangeWatch's own hooks is also measured directly (perf_counter around them), which is a less noisy
figure than the difference of two run times on a shared machine.

Lightning Bolts' ``TrainingDataMonitor`` is tried as a third arm; lightning-bolts 0.7.0 (the latest
release) does not import with Lightning 2.x, which is then printed together with the reason.

    python benchmarks/bench_overhead.py [--steps 100] [--pairs 20] [--logger none|tb] [--threads N]
                                        [--breakdown] [--profile]

``--breakdown`` times ``RangeStats.update``/``compute`` on their own; ``--profile`` adds a cProfile
of the callback's hooks over one extra run and prints the top entries. On a shared machine the
CPU-time ratio (``time.process_time``) is steadier than the wall-clock one; ``--threads 1`` avoids
OpenMP threads spinning against other processes' load.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rangewatch import RangeWatch  # noqa: E402

BATCH, C, SIZE = 16, 3, 128
POOL = 64  # distinct images, reused (keeps memory small; the loader still collates every batch)


class Images(Dataset):
    def __init__(self, length: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randint(0, 256, (POOL, C, SIZE, SIZE), generator=g, dtype=torch.uint8).float() / 255
        self.labels = torch.randint(0, 10, (POOL,), generator=g)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.pool[i % POOL], self.labels[i % POOL]


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(C, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        )

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        x, y = batch
        return F.cross_entropy(self.body(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class HookTimer:
    """Times a callback's train-batch hooks (the only ones that run every step by default) by
    wrapping them on the instance; ``profiler`` (cProfile) is enabled only inside them.
    ``per_step`` holds (hook seconds, was a check step) per training step."""

    def __init__(self, callback: pl.Callback, profiler: cProfile.Profile | None = None) -> None:
        self.callback = callback
        self.profiler = profiler
        self.per_step: list[tuple[float, bool]] = []
        start, end = callback.on_train_batch_start, callback.on_train_batch_end

        engine = getattr(callback, "engine", None)  # RangeWatch's public engine

        def on_start(trainer, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            check = engine.is_check_step(int(trainer.global_step)) if engine is not None else False
            dt = self._timed(start, trainer, *args, **kwargs)
            self.per_step.append((dt, check))

        def on_end(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            dt = self._timed(end, *args, **kwargs)
            if self.per_step:
                t, check = self.per_step[-1]
                self.per_step[-1] = (t + dt, check)

        callback.on_train_batch_start = on_start
        callback.on_train_batch_end = on_end

    @property
    def seconds(self) -> float:
        return sum(t for t, _ in self.per_step)

    def _timed(self, fn, *args, **kwargs) -> float:  # noqa: ANN001
        if self.profiler is not None:
            self.profiler.enable()
        t = time.perf_counter()
        fn(*args, **kwargs)
        dt = time.perf_counter() - t
        if self.profiler is not None:
            self.profiler.disable()
        return dt


def run(steps: int, callbacks: list, logger: str, workdir: str) -> tuple[float, float]:
    if logger == "tb":
        from lightning.pytorch.loggers import TensorBoardLogger

        lg = TensorBoardLogger(workdir, name="bench")
    else:
        lg = False
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=lg,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    loader = DataLoader(Images(steps * BATCH), batch_size=BATCH, shuffle=False, num_workers=0)
    model = Net()
    t, c = time.perf_counter(), time.process_time()
    trainer.fit(model, loader)
    return time.perf_counter() - t, time.process_time() - c


def breakdown(reps: int = 7, n: int = 48) -> None:
    """Per-call cost of the per-step work, outside Lightning: a pool of distinct batches (larger
    than the caches, as in training) cycled through; best of ``reps`` rounds of ``n`` calls."""
    from rangewatch import RangeStats

    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(0, 256, (BATCH, C, SIZE, SIZE), generator=g, dtype=torch.uint8).float() / 255 for _ in range(24)]

    def best(fn) -> float:  # noqa: ANN001
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(n):
                fn(xs[i % len(xs)])
            out.append((time.perf_counter() - t) / n * 1e3)
        return min(out)

    plain = RangeStats(channel_dim=1, bounds=None, hist_bins=64)
    detail = RangeStats(channel_dim=1, bounds=None, hist_bins=64)
    one_pass = best(lambda x: x.sum())
    rows = [
        ("x.sum() (one read of the batch)", one_pass),
        ("x.amin(dim=(0, 2, 3))", best(lambda x: x.amin(dim=(0, 2, 3)))),
        ("RangeStats.update(x) (every step)", best(lambda x: plain.update(x))),
        ("RangeStats.update(x, detail=True) (check steps)", best(lambda x: detail.update(x, detail=True))),
        ("RangeStats.compute() (check steps)", best(lambda x: detail.compute())),
    ]
    print(f"\nbreakdown ({BATCH}x{C}x{SIZE}x{SIZE} float32, {torch.get_num_threads()} thread(s), best of {reps}x{n} calls):")
    for name, ms in rows:
        print(f"  {name:50s} {ms:7.3f} ms  ({ms / one_pass:5.1f} x one read)")


def _quartile(xs: list[float]) -> float:
    """Lower quartile: other load on a shared machine only ever adds time, so the faster runs
    are the less disturbed ones."""
    return statistics.quantiles(xs, n=4, method="inclusive")[0] if len(xs) > 1 else xs[0]


def try_bolts() -> tuple[type | None, str]:
    try:
        from pl_bolts.callbacks import TrainingDataMonitor  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001
        try:
            from importlib.metadata import version

            v = version("lightning-bolts")
        except Exception:  # noqa: BLE001
            v = "not installed"
        return None, f"lightning-bolts {v}: `from pl_bolts.callbacks import TrainingDataMonitor` fails: {type(e).__name__}: {e}"
    return TrainingDataMonitor, "ok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=20, help="ABBA pairs; pair ratios scatter by several percent on a shared machine")
    ap.add_argument("--logger", choices=("none", "tb"), default="none")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="cProfile the callback's hooks over one more run")
    ap.add_argument("--breakdown", action="store_true", help="time RangeStats.update/compute outside Lightning")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)

    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} torch threads={torch.get_num_threads()}; "
          f"python {platform.python_version()}, torch {torch.__version__}, lightning {pl.__version__}")
    print(f"run: {args.steps} steps of {BATCH}x{C}x{SIZE}x{SIZE}, logger={args.logger}, {args.pairs} ABBA pairs (+1 warm-up pair)")

    bolts_cls, bolts_msg = try_bolts()
    arms = ["without", "rangewatch"] + (["bolts"] if bolts_cls is not None else [])

    def callbacks(arm: str) -> tuple[list, HookTimer | None]:
        if arm == "rangewatch":
            timer = HookTimer(RangeWatch())
            return [timer.callback], timer
        if arm == "bolts":
            return [bolts_cls(log_every_n_steps=50)], None
        return [], None

    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    timers: list[HookTimer] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:  # warm-up, untimed
            run(min(args.steps, 20), callbacks(arm)[0], args.logger, tmp)
        for i in range(args.pairs):
            order = arms if i % 2 == 0 else arms[::-1]
            for arm in order:
                cbs, timer = callbacks(arm)
                w, c = run(args.steps, cbs, args.logger, tmp)
                wall[arm].append(w)
                cpu[arm].append(c)
                if timer is not None:
                    timers.append(timer)
            print(f"pair {i}: " + ", ".join(f"{a} {wall[a][-1]:.2f}s (cpu {cpu[a][-1]:.2f}s)" for a in arms), flush=True)

        med = statistics.median
        base = wall["without"]
        print()
        print(f"without callback: median {med(base):.2f}s wall ({med(base) / args.steps * 1e3:.1f} ms/step), {med(cpu['without']):.2f}s cpu")
        for arm in arms[1:]:
            name = "RangeWatch()" if arm == "rangewatch" else "TrainingDataMonitor()"
            for kind, t in (("wall", wall), ("cpu", cpu)):
                ratios = [x / y for x, y in zip(t[arm], t["without"])]
                print(f"{name} {kind}-time ratio with/without: median of pair ratios {med(ratios):.3f} "
                      f"(pairs {', '.join(f'{r:.3f}' for r in ratios)}); ratio of medians {med(t[arm]) / med(t['without']):.3f}; "
                      f"ratio of the fastest runs {min(t[arm]) / min(t['without']):.3f}; "
                      f"of the lower quartiles {_quartile(t[arm]) / _quartile(t['without']):.3f}")
        if timers:
            share = [tm.seconds / w for tm, w in zip(timers, wall["rangewatch"])]
            plain = [t * 1e3 for tm in timers for t, check in tm.per_step if not check]
            checks = [t * 1e3 for tm in timers for t, check in tm.per_step if check]
            n_checks = sum(1 for _, c in timers[0].per_step if c)
            print(f"time inside RangeWatch's hooks: median {med(share):.2%} of the run; {med(share) * med(wall['rangewatch']) / args.steps * 1e3:.2f} ms/step "
                  f"on average; ordinary step {med(plain):.2f} ms (median), check step {med(checks):.2f} ms (median, {n_checks} per run); "
                  f"hooks vs. the run without the callback: {1 + med(share) * med(wall['rangewatch']) / med(base):.3f}")
        if bolts_cls is None:
            print(f"TrainingDataMonitor: not run. {bolts_msg}")

        if args.breakdown:
            breakdown()
        if args.profile:
            prof = cProfile.Profile()
            timer = HookTimer(RangeWatch(), profiler=prof)
            run(args.steps, [timer.callback], args.logger, tmp)
            out = io.StringIO()
            st = pstats.Stats(prof, stream=out)
            st.sort_stats("cumulative").print_stats(r"rangewatch", 25)  # where in rangewatch
            st.sort_stats("tottime").print_stats(15)  # which primitives
            print(f"\ncProfile of RangeWatch's train-batch hooks over {args.steps} steps ({timer.seconds:.3f}s inside them):")
            print(out.getvalue())


if __name__ == "__main__":
    main()
