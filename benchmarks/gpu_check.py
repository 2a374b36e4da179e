"""The Python half of ``benchmarks/gpu_check.sh``: rangewatch's GPU claims, checked and measured.

Parts (each prints its lines and appends them to ``--out``; a part that fails is reported and the
others still run; the exit status is non-zero if any check failed):

1. ``nosync``: real Lightning ``Trainer`` runs with ``RangeWatch()`` and
   ``RangeWatch(trace_modules="all")`` on a small conv autoencoder; every non-check training step
   (from batch start to batch end: RangeWatch's hooks, its module and tracer hooks, forward,
   backward, optimizer) runs under ``torch.cuda.set_sync_debug_mode("error")``, so any
   synchronising call raises. A sync from outside rangewatch is reported with its frame.
2. ``fp16``: the fp16-black case (``tests/helpers/models.py``'s ``OverflowModule``: its third layer overflows float16)
   under CUDA AMP ``precision="16-mixed"``: the NaN/Inf finding must name ``net.2``.
3. ``bench_stats``: ``benchmarks/bench_stats.py``'s CUDA tables (16x3x512x512 float32 and
   bfloat16); target: the every-step ``update(x, moments=False)`` <= 1.3x of one ``x.sum()``.
4. ``overhead``: a Stable-Diffusion-VAE-width conv autoencoder (channels 128/256/512/512, GroupNorm
   + SiLU ResNet blocks) trained at 256 px in bf16 mixed precision by a real ``Trainer``: steps
   timed without and with ``RangeWatch()`` (and ``trace_modules="all"``), arms alternated (ABBA),
   GPU synchronised only at the ends of the timed window; target <= 1% for ``RangeWatch()``.
5. ``tracer``: the same training step in a plain loop, untraced, with rangewatch's
   ``ModuleTracer`` (what ``trace_modules="all"`` attaches) and with transformers'
   ``DebugUnderflowOverflow``, interleaved repeats.

    python benchmarks/gpu_check.py --out OUT.txt                 # on a GPU machine (gpu_check.sh)
    python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/x.txt   # CPU smoke run, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from rangewatch import RangeWatch  # noqa: E402

FAILED: list[str] = []


def mixed(device: str) -> str:
    """bf16 mixed precision on CUDA; float32 on CPU (CPU bf16 autocast is slow and not what is measured)."""
    return "bf16-mixed" if device == "cuda" else "32-true"


class Report:
    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


# ---------------------------------------------------------------------------- models
class ResBlock(nn.Module):
    """A CompVis/SD-VAE ``ResnetBlock``: GroupNorm(32) -> SiLU -> conv3x3, twice, plus a skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class Encoder(nn.Module):
    def __init__(self, ch: int, mult: tuple[int, ...], z: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        cin = ch
        for i, m in enumerate(mult):
            blocks.append(ResBlock(cin, ch * m))
            cin = ch * m
            if i < len(mult) - 1:
                blocks.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))  # Downsample
        self.down = nn.Sequential(*blocks)
        self.mid = ResBlock(cin, cin)
        self.norm_out = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.mid(self.down(self.conv_in(x))))))


class Decoder(nn.Module):
    def __init__(self, ch: int, mult: tuple[int, ...], z: int):
        super().__init__()
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        self.mid = ResBlock(cin, cin)
        blocks: list[nn.Module] = []
        for i, m in reversed(list(enumerate(mult))):
            blocks.append(ResBlock(cin, ch * m))
            cin = ch * m
            if i > 0:
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
        self.up = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.up(self.mid(self.conv_in(z))))))


class AutoencoderModule(pl.LightningModule):
    """An SD-VAE-shaped autoencoder (``ch=128, ch_mult=(1, 2, 4, 4)``, 4 latent channels, one
    ResNet block per level) trained to reconstruct [-1, 1] images (L1 + KL-free)."""

    def __init__(self, ch: int = 128, mult: tuple[int, ...] = (1, 2, 4, 4), z: int = 4):
        super().__init__()
        self.encoder = Encoder(ch, mult, z)
        self.decoder = Decoder(ch, mult, z)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(x))
        mean, _ = moments.chunk(2, dim=1)
        return self.decoder(self.post_quant_conv(mean))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        return (self(x).float() - x).abs().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def images(n: int, px: int, seed: int = 0) -> torch.Tensor:
    """[-1, 1] images (what an SD VAE is fed), uint8-quantised like decoded photos."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, px, px), generator=g).float() / 127.5 - 1.0)


def trainer(device: str, steps: int, callbacks: list, precision: str) -> pl.Trainer:
    return pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, precision=precision, callbacks=callbacks)


def fit(module: pl.LightningModule, data: torch.Tensor, bs: int, device: str, steps: int, callbacks: list,
        precision: str) -> pl.Trainer:
    t = trainer(device, steps, callbacks, precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, DataLoader(TensorDataset(data), batch_size=bs, shuffle=False, drop_last=True))
    return t


# ---------------------------------------------------------------------------- 1. no host sync
class SyncGuard(pl.Callback):
    """First callback: ``set_sync_debug_mode("error")`` from batch start on non-check steps;
    :class:`SyncRelease` (last callback) restores it at batch end."""

    def __init__(self, rw: RangeWatch, enabled: bool):
        self.rw, self.enabled, self.guarded, self.open, self.traced = rw, enabled, 0, 0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        tracer = self.rw.engine.tracer  # attached at fit start, detached at fit end
        self.traced = max(self.traced, len(tracer.names) if tracer is not None else 0)
        if self.rw.engine.is_check_step(int(trainer.global_step)):  # check steps read their figures back, by design
            self.open += 1
            return
        self.guarded += 1
        if self.enabled:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")


class SyncRelease(pl.Callback):
    def on_train_batch_end(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}rangewatch{os.sep}" in f.filename]
    f = (ours or frames)[-1]
    return f"{'rangewatch' if ours else 'outside rangewatch'}: {f.filename}:{f.lineno} ({f.name})"


def part_nosync(rep: Report, device: str, dry: bool) -> None:
    px, n, steps = (16, 16, 6) if dry else (64, 48, 12)
    for label, kw in (("RangeWatch()", {}), ('RangeWatch(trace_modules="all")', {"trace_modules": "all"})):
        rw = RangeWatch(log_every_n_steps=5, **kw)
        guard = SyncGuard(rw, enabled=device == "cuda")
        torch.manual_seed(0)
        module = AutoencoderModule(ch=32, mult=(1, 2), z=4)
        try:
            fit(module, images(n, px), 4, device, steps, [guard, rw, SyncRelease()], mixed(device))
        except RuntimeError as e:
            FAILED.append(f"nosync {label}")
            rep(f"nosync {label}: FAILED, synchronising call under set_sync_debug_mode('error') at {_where(e)}: {e}")
            continue
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        internal = [f for f in rw.findings if f.kind == "internal"]
        traced = guard.traced > 0 if kw else True
        ok = guard.guarded > 0 and not internal and traced and all(not t.disabled for t in rw.taps.values())
        if not ok:
            FAILED.append(f"nosync {label}")
        rep(f"nosync {label}: {'ok' if ok else 'FAILED'}: {guard.guarded} non-check steps guarded "
            f"({'sync debug mode error' if device == 'cuda' else 'no guard on cpu'}), {guard.open} check steps open, "
            f"taps {sorted(rw.taps)}, modules traced {guard.traced}, "
            f"internal findings {len(internal)}")


# ---------------------------------------------------------------------------- 2. fp16-black under AMP
def part_fp16(rep: Report, device: str, dry: bool) -> None:
    from helpers.models import OverflowModule as Model

    w = RangeWatch(trace_modules="all", policy="log", log_every_n_steps=1)
    data = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    precision = "16-mixed" if device == "cuda" else "16-true"  # CUDA AMP; CPU: the test suite's case
    torch.manual_seed(0)
    fit(Model(third_scale=20000.0), data, 4, device, 2, [w], precision)
    nf = [f for f in w.findings if f.kind == "nonfinite"]
    ok = bool(nf) and nf[0].where.startswith("net.2")
    if not ok:
        FAILED.append("fp16")
    rep(f"fp16-black precision={precision}: {'ok' if ok else 'FAILED'}: first NaN/Inf finding at "
        f"{nf[0].where if nf else None!r} (expected net.2); kinds {sorted({f.kind for f in w.findings})}")


# ---------------------------------------------------------------------------- 3. bench_stats on CUDA
def part_bench_stats(rep: Report, device: str, dry: bool) -> None:
    import bench_stats

    if device == "cuda":
        tables = bench_stats.run_cuda(repeats=60, inner=10)
    else:
        tables = {"float32 contiguous (cpu, 2x3x32x32)": bench_stats.run(torch.device("cpu"), 5, 1, shape=(2, 3, 32, 32),
                                                                          naive=False)}
    for name, ratios in tables.items():
        every = ratios["update(x, moments=False)"]
        flag = ("met" if every <= 1.3 else "NOT met") if device == "cuda" else "n/a on cpu"
        rep(f"bench_stats {name}: every-step update(x, moments=False) {every:.2f}x of x.sum() (target <= 1.3x: {flag}); "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if k not in ("x.sum()", "update(x, moments=False)")))


# ---------------------------------------------------------------------------- 4. callback overhead
class WindowTimer(pl.Callback):
    """Wall time of steps ``[first, last]``, the GPU synchronised only at the two ends."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.seconds = first, last, float("nan")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.first:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.last + 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.t0


def part_overhead(rep: Report, device: str, dry: bool) -> None:
    if dry:
        ch, mult, px, bs, first, last, pairs = 32, (1, 2), 16, 2, 2, 5, 1
    else:  # SD-VAE width at 256 px; the window holds the check step at 50 (log_every_n_steps default)
        ch, mult, px, bs, first, last, pairs = 128, (1, 2, 4, 4), 256, 4, 5, 64, 3
    data = images(bs * (last + 2), px)
    torch.manual_seed(0)
    base = AutoencoderModule(ch, mult).state_dict()
    arms: dict[str, Callable[[], list]] = {
        "none": lambda: [],
        "RangeWatch()": lambda: [RangeWatch()],
        'RangeWatch(trace_modules="all")': lambda: [RangeWatch(trace_modules="all")],
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    order = list(arms)
    for i in range(pairs * 2):
        for name in (order if i % 2 == 0 else order[::-1]):  # ABC CBA ...
            m = AutoencoderModule(ch, mult)
            m.load_state_dict(base)
            timer = WindowTimer(first, last)
            fit(m, data, bs, device, last + 1, [timer, *arms[name]()], mixed(device))
            times[name].append(timer.seconds / (last - first + 1))
    none = statistics.median(times["none"])
    rep(f"overhead ({'dry run, ' if dry else ''}ch={ch} mult={mult} {px}px batch {bs}, {mixed(device)}, AdamW; "
        f"steps {first}..{last}, {pairs * 2} runs per arm, ABBA): no callback {none * 1e3:.1f} ms/step")
    for name in order[1:]:
        ratios = [a / b for a, b in zip(times[name], times["none"])]
        med = statistics.median(ratios)
        target = " (target <= 1.01: " + ("met)" if med <= 1.01 else "NOT met)") if name == "RangeWatch()" else ""
        rep(f"overhead {name}: {statistics.median(times[name]) * 1e3:.1f} ms/step, median of run ratios {med:.4f}, "
            f"ratio of medians {statistics.median(times[name]) / none:.4f}{target}")


# ---------------------------------------------------------------------------- 5. tracer vs DebugUnderflowOverflow
def part_tracer(rep: Report, device: str, dry: bool) -> None:
    from rangewatch.checks.numerics import ModuleTracer

    try:
        from transformers.debug_utils import DebugUnderflowOverflow
    except Exception as e:  # pragma: no cover - depends on the environment
        DebugUnderflowOverflow = None
        rep(f"tracer: transformers' DebugUnderflowOverflow not importable ({type(e).__name__}: {e})")
    ch, mult, px, bs, repeats, iters = (32, (1, 2), 16, 2, 2, 1) if dry else (128, (1, 2, 4, 4), 256, 4, 7, 3)
    torch.manual_seed(0)
    base = AutoencoderModule(ch, mult).to(device)
    x = images(bs, px).to(device)
    variants: dict[str, nn.Module] = {"none": base, "ModuleTracer (trace_modules='all')": copy.deepcopy(base)}
    tracer = ModuleTracer(variants["ModuleTracer (trace_modules='all')"], exact=False).attach()
    if DebugUnderflowOverflow is not None:
        variants["DebugUnderflowOverflow"] = copy.deepcopy(base)
        DebugUnderflowOverflow(variants["DebugUnderflowOverflow"])
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in variants.items()}
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step(name: str) -> float:
        m, opt = variants[name], opts[name]
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(iters):
            if name.startswith("ModuleTracer"):
                tracer.start_step(i)
            with amp:
                loss = (m(x).float() - x).abs().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters

    for k in variants:
        step(k)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(variants)
        rng.shuffle(order)
        for k in order:
            times[k].append(step(k))
    tracer.report()
    tracer.detach()
    none = statistics.median(times["none"])
    rep(f"tracer ({'dry run, ' if dry else ''}same autoencoder, plain loop, {'bf16 autocast' if device == 'cuda' else 'fp32'}, "
        f"{repeats} interleaved repeats "
        f"x {iters} steps): untraced {none * 1e3:.1f} ms/step")
    for k in list(variants)[1:]:
        rep(f"tracer {k}: {statistics.median(times[k]) * 1e3:.1f} ms/step, {statistics.median(times[k]) / none:.3f}x "
            f"(fastest {min(times[k]) / min(times['none']):.3f}x)")


PARTS = {"nosync": part_nosync, "fp16": part_fp16, "bench_stats": part_bench_stats, "overhead": part_overhead,
         "tracer": part_tracer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="append the figures to this file")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes and few steps (a smoke run of the script)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = ap.parse_args(argv)
    rep = Report(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        rep("gpu_check.py: no CUDA device (torch.cuda.is_available() is False); use --device cpu --dry-run")
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # a shared CPU: OpenMP threads spinning against other load cost more than they give
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rep(f"gpu_check.py: device {dev}, torch {torch.__version__}, lightning {pl.__version__}"
        f"{', dry run' if args.dry_run else ''}")
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            PARTS[name](rep, args.device, args.dry_run)
        except Exception as e:
            FAILED.append(name)
            rep(f"{name}: FAILED with {type(e).__name__}: {e}")
            traceback.print_exc()
        rep(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
    rep(f"gpu_check.py: {'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
