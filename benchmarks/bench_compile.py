"""RangeWatch's module taps and tracer on a ``torch.compile``d model, against the same model without them.

A small conv net (3 convs + head, 8x3x32x32 batches) whose body is compiled in place
(``nn.Module.compile``) trains in real Lightning fits: without RangeWatch ("off"), with module taps
(``RangeWatch(modules=["body.0:input", "body.4:output"])``), with the tracer
(``RangeWatch(trace_modules="all")``) and with both; and the same four arms in eager mode for the
normal overhead. Each repeat runs the eight arms in a shuffled order (interleaved, side by side in one
process); before each compiled arm ``torch._dynamo.reset()`` clears dynamo's caches and inductor's
on-disk caches are off, so every compiled arm pays its own compilation, as a fresh run does.

Printed per arm: the time of the first ``--steps`` steps (compilation and any recompiles included:
the issue-14 figure, 7.7 s against 1.2 s before the hooks were hidden from dynamo), the steady
steps/s over the next ``--steady`` steps, and both as ratios to "off" of the same mode (median over
repeats), the median step time of the steady window and its ratio (a load spike on the shared machine
moves it less than the mean), the same in the process's CPU time (``time.process_time``: other
processes on the machine move it least; with ``--threads 1`` it is the step's compute), plus the dynamo graph count and the graph breaks.

    python benchmarks/bench_compile.py [--repeats 3] [--steps 12] [--steady 40] [--backend inductor] [--threads 1]
                                       [--arms taps,tracer,taps+tracer] [--modes compiled,eager] [--before] [--loop]
                                       [--interleave]

``--interleave`` runs the same Lightning fits step by step side by side: each arm's fit in its own
process (started one at a time), one training step per turn, the arms' turns shuffled every round,
``--repeats`` rounds of fresh processes; per arm the median steady step in the process's CPU time
and its ratio to "off" of the same mode within each round (median over rounds). Load drift on a
shared machine then falls on all arms alike, which the sequential fits above cannot promise (run it
under ``taskset -c N`` so that every arm shares one core's conditions).

``--before`` adds each compiled arm with the hooks as they were before the rangewatch operator
(``torch.compiler.disable``d: a graph break per call), interleaved with the rest. ``--loop`` measures
the hooks alone in a plain training loop (ModuleTaps into RangeStats' every-step update, ModuleTracer
with ``exact=False``; no Lightning): every arm's model is built and warmed up first, then the arms'
steps are interleaved one at a time in shuffled order for ``--steady`` rounds, so load drift on a
shared machine falls on all arms alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os

os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")  # every compiled arm compiles (no reuse of an earlier arm's code)
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # compile in the arm's own process (the machine is shared)
import platform
import random
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rangewatch import RangeWatch

ARMS = {
    "off": None,
    "taps": {"modules": ["body.0:input", "body.4:output"]},
    "tracer": {"trace_modules": "all"},
    "taps+tracer": {"modules": ["body.0:input", "body.4:output"], "trace_modules": "all"},
}


BREAKS = " (breaks)"


class _Batches(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(8, 8, 3, 32, 32, generator=g) * 2 - 1
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i % len(self.x)]


class Net(pl.LightningModule):
    def __init__(self, backend: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1)
        )
        self.head = nn.Linear(3, 1)
        if backend:
            self.body.compile(backend=backend)

    def training_step(self, batch, batch_idx):
        return self.head(self.body(batch).mean(dim=(2, 3))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Clock(pl.Callback):
    """Wall clock and this process's CPU time at the start of the first step and the end of each."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        if not self.t:
            self.t.append(time.perf_counter())
            self.cpu.append(time.process_time())

    def on_train_batch_end(self, *args) -> None:
        self.t.append(time.perf_counter())
        self.cpu.append(time.process_time())


def run_arm(arm: str, backend: str | None, steps: int, steady: int) -> tuple[float, float, int, float, int, float]:
    import torch._dynamo as dynamo

    from rangewatch.taps import compiled as compile_hooks

    breaks = arm.endswith(BREAKS)  # the hooks as before: torch.compiler.disable'd, a graph break per call
    arm = arm.removesuffix(BREAKS)
    available = compile_hooks.AVAILABLE
    compile_hooks.AVAILABLE = available and not breaks  # read when the hooks are placed
    try:
        return _run_arm(arm, backend, steps, steady)
    finally:
        compile_hooks.AVAILABLE = available


def _run_arm(arm: str, backend: str | None, steps: int, steady: int) -> tuple[float, float, int, float, int, float]:
    import torch._dynamo as dynamo

    if backend:
        dynamo.reset()
    dynamo.utils.counters.clear()
    opts = ARMS[arm]
    clock = _Clock()
    callbacks: list = [clock] + ([RangeWatch(**opts, log_every_n_steps=50)] if opts is not None else [])
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps + steady, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=callbacks)
    trainer.fit(Net(backend), train_dataloaders=DataLoader(_Batches(steps + steady), batch_size=None))
    t = clock.t
    first = t[steps] - t[0]
    rate = steady / (t[steps + steady] - t[steps])
    step_median = statistics.median(b - a for a, b in zip(t[steps:steps + steady], t[steps + 1:steps + steady + 1]))
    c = clock.cpu
    cpu_median = statistics.median(b - a for a, b in zip(c[steps:steps + steady], c[steps + 1:steps + steady + 1]))
    breaks = int(sum(dynamo.utils.counters["graph_break"].values()))
    return first, rate, int(dynamo.utils.counters["stats"]["unique_graphs"]), step_median, breaks, cpu_median


# ------------------------------------------------------------------------------------------------ --interleave
class _Turns(pl.Callback):
    """Step-interleaved Lightning fits: each fit runs in its own process and takes one training step
    per turn (the scheduler hands the turn round in a shuffled order), so load drift on a shared
    machine falls on all arms alike. Per step: the process's CPU time (``time.process_time``; one
    thread with ``--threads 1``) and the wall time, from the end of one step to the end of the next
    (a full period of the loop, every callback included), the wait for the next turn left out."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._c = self._w = 0.0

    def begin(self) -> None:
        self.conn.recv()
        self._c, self._w = time.process_time(), time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        c, w = time.process_time(), time.perf_counter()
        self.cpu.append(c - self._c)
        self.wall.append(w - self._w)
        self.conn.send("step")
        self.conn.recv()
        self._c, self._w = time.process_time(), time.perf_counter()


def _interleaved_fit(conn, mode: str, arm: str, backend: str | None, n_steps: int, threads: int) -> None:
    """One arm's process: a real Lightning fit, one training step per turn; sends its step times at the end."""
    conn.send("ready")  # imported: the next arm's process may start
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import torch._dynamo as dynamo

    from rangewatch.taps import compiled as compile_hooks

    breaks = arm.endswith(BREAKS)
    arm = arm.removesuffix(BREAKS)
    compile_hooks.AVAILABLE = compile_hooks.AVAILABLE and not breaks  # read when the hooks are placed
    t = _Turns(conn)
    t.begin()
    opts = ARMS[arm]
    cbs: list = [t] + ([RangeWatch(**opts, log_every_n_steps=50)] if opts is not None else [])
    trainer = pl.Trainer(accelerator="cpu", max_steps=n_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=cbs)
    with contextlib.redirect_stdout(io.StringIO()):  # RangeWatch's console summary, once per arm
        trainer.fit(Net(backend if mode == "compiled" else None), train_dataloaders=DataLoader(_Batches(n_steps), batch_size=None))
    conn.send(("result", t.cpu, t.wall, int(dynamo.utils.counters["stats"]["unique_graphs"]),
               int(sum(dynamo.utils.counters["graph_break"].values()))))


def interleave_main(args: argparse.Namespace, arms: list[str], modes: dict[str, str | None]) -> None:
    """Every arm a real Lightning fit in its own process; one training step per turn, the arms' turns
    in a shuffled order each round; ``--repeats`` rounds of fresh fits (fresh processes), compilation
    in each compiled arm's first turns."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    specs = [(m, a) for m in modes for a in arms + ([a + BREAKS for a in arms if a != "off"] if args.before and m == "compiled" else [])]
    n_steps = args.steps + args.steady
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {args.threads} thread(s), backend {args.backend}; "
          f"Lightning fits interleaved step by step, one process per arm: {args.repeats} repeats x {len(specs)} arms, "
          f"{args.steady} steady steps after {args.steps}; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    cpu: dict[tuple[str, str], list[float]] = {s: [] for s in specs}
    wall: dict[tuple[str, str], list[float]] = {s: [] for s in specs}
    first: dict[tuple[str, str], list[float]] = {s: [] for s in specs}
    graphs: dict[tuple[str, str], int] = {s: 0 for s in specs}
    breaks: dict[tuple[str, str], int] = {s: 0 for s in specs}
    rng = random.Random(args.seed)
    for r in range(args.repeats):
        conns, procs = {}, {}
        for spec in specs:
            here, there = ctx.Pipe()
            procs[spec] = ctx.Process(target=_interleaved_fit, args=(there, *spec, args.backend, n_steps, args.threads), daemon=True)
            procs[spec].start()
            conns[spec] = here
            here.recv()  # one process importing at a time: the machine is shared
        live = list(specs)
        while live:
            rng.shuffle(live)
            for spec in list(live):
                conns[spec].send("go")
                msg = conns[spec].recv()
                if msg != "step":
                    _, c, w, g, b = msg
                    cpu[spec].append(statistics.median(c[args.steps:]))
                    wall[spec].append(statistics.median(w[args.steps:]))
                    first[spec].append(sum(w[:args.steps]))
                    graphs[spec], breaks[spec] = max(graphs[spec], g), max(breaks[spec], b)
                    live.remove(spec)
        for p in procs.values():
            p.join()
        print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(f"{'mode':9s} {'arm':21s} {'first ' + str(args.steps) + ' steps':>16s} {'CPU ms/step':>12s} {'ratio':>6s} "
          f"{'added ms':>9s} {'wall ms/step':>13s} {'ratio':>6s} {'graphs':>6s} {'breaks':>6s}")
    for m, a in specs:
        base = (m, "off")
        c, c0 = statistics.median(cpu[(m, a)]), statistics.median(cpu[base])
        w = statistics.median(wall[(m, a)])
        ratio = statistics.median(x / y for x, y in zip(cpu[(m, a)], cpu[base]))
        wratio = statistics.median(x / y for x, y in zip(wall[(m, a)], wall[base]))
        print(f"{m:9s} {a:21s} {statistics.median(first[(m, a)]):14.2f} s {c * 1e3:12.2f} {ratio:6.3f} {(c - c0) * 1e3:9.2f} "
              f"{w * 1e3:13.2f} {wratio:6.3f} {graphs[(m, a)]:6d} {breaks[(m, a)]:6d}")
    print("\nCPU ms/step: the median steady step in the fit's process CPU time (median over repeats); ratio: the arm's over\n"
          "'off' of the same mode within each repeat (median over repeats); added: what the arm adds to 'off' per step (CPU);\n"
          "wall: the same in wall time; first steps: wall time of the first steps, compilation included")


# ------------------------------------------------------------------------------------------------ --loop
def _loop_arm(arm: str, backend: str | None, breaks: bool):
    """One arm of the step-interleaved plain loop: its own copy of the body (same init), its hooks
    (ModuleTaps into RangeStats' every-step update, as RangeWatch does; ModuleTracer(exact=False),
    RangeWatch's default), its optimiser; compiled after the hooks are placed."""
    from rangewatch.taps import compiled as compile_hooks
    from rangewatch.checks.numerics import ModuleTracer
    from rangewatch.stats.range_stats import RangeStats
    from rangewatch.taps.hooks import ModuleTaps

    net = Net(None)
    stats: dict[str, RangeStats] = {}
    hooks: list = []
    available = compile_hooks.AVAILABLE
    compile_hooks.AVAILABLE = available and not breaks
    try:
        if "taps" in arm:
            def on_tensor(tap: str, t: torch.Tensor) -> None:
                s = stats.get(tap)
                if s is None:
                    s = stats[tap] = RangeStats(channel_dim=1)
                s.update(t, moments=False)

            taps = ModuleTaps(on_tensor)
            taps.attach(net, {"body.0": {"input"}, "body.4": {"output"}})
            hooks.append(taps)
        tracer = None
        if "tracer" in arm:
            tracer = ModuleTracer(net, "all", auto_step=False, exact=False).attach()
            hooks.append(tracer)
    finally:
        compile_hooks.AVAILABLE = available
    if backend:
        net.body.compile(backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    step_no = [0]

    def step(x: torch.Tensor) -> None:
        if tracer is not None:
            tracer.start_step(step_no[0])
        loss = net.training_step(x, step_no[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_no[0] += 1

    return step, hooks


def loop_main(args: argparse.Namespace, arms: list[str]) -> None:
    """Every arm's model built and warmed up, then the arms' training steps interleaved one step at
    a time in a shuffled order, for ``--steady`` rounds: machine load drifts over all arms alike."""
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)  # one entry per arm's body
    specs = [(f"{m} {a}{' (breaks)' if br else ''}", a, b, br)
             for m, b in (("compiled", args.backend), ("eager", None)) if m in args.modes.split(",")
             for a in arms for br in ((False, True) if (args.before and a != "off") else (False,))]
    x = _Batches(1).x
    steps = {}
    for name, a, b, br in specs:
        steps[name] = _loop_arm(a, b, br)[0]
        for i in range(args.steps):  # warm-up: compilation, the first steps' bookkeeping
            steps[name](x[i % len(x)])
    print(f"torch {torch.__version__}, {args.threads} thread(s), backend {args.backend}; plain loop, {len(specs)} arms, "
          f"{args.steady} interleaved rounds after {args.steps} warm-up steps; load average at start {os.getloadavg()[0]:.1f}")
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    rng = random.Random(args.seed)
    names = list(steps)
    for r in range(args.steady):
        rng.shuffle(names)
        for n in names:
            xb = x[r % len(x)]
            t0, c0 = time.perf_counter(), time.process_time()
            steps[n](xb)
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(f"{'arm':30s} {'median ms/step':>15s} {'ratio':>6s} {'CPU ms/step':>12s} {'ratio':>6s}")
    for name, a, b, br in specs:
        base = f"{name.split()[0]} off"
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        w0, c0 = statistics.median(wall[base]), statistics.median(cpu[base])
        print(f"{name:30s} {w * 1e3:15.3f} {w / w0:6.3f} {c * 1e3:12.3f} {c / c0:6.3f}")
    print("\nratio: median step of the arm / median step without hooks, same mode; '(breaks)': the hooks "
          "torch.compiler.disable'd, as before the rangewatch operator (in eager mode: the disable wrapper's cost)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="first steps, timed with compilation (default 12)")
    ap.add_argument("--steady", type=int, default=40, help="steady-state steps timed after them (default 40)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor; 'eager' or 'aot_eager' skip code generation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)} ('off' is always run)")
    ap.add_argument("--modes", default="compiled,eager", help="compiled, eager or both (default both)")
    ap.add_argument("--loop", action="store_true",
                    help="a plain training loop instead of Lightning fits, the arms interleaved step by step (--steady rounds): the hooks' cost alone")
    ap.add_argument("--interleave", action="store_true",
                    help="Lightning fits in threads, interleaved step by step (one step per turn, shuffled each round): "
                         "load drift on a shared machine falls on all arms alike")
    ap.add_argument("--before", action="store_true",
                    help="also run each compiled arm with the hooks as before this change: torch.compiler.disable'd (graph breaks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    arms = ["off"] + [a for a in args.arms.split(",") if a in ARMS and a != "off"]
    modes = {m: b for m, b in (("compiled", args.backend), ("eager", None)) if m in args.modes.split(",")}
    if args.loop:
        return loop_main(args, arms)
    if args.interleave:
        return interleave_main(args, arms, modes)

    def arms_of(m: str) -> list[str]:
        return arms + ([a + BREAKS for a in arms if a != "off"] if args.before and m == "compiled" else [])

    res: dict[tuple[str, str], list[tuple[float, float, int, float, int, float]]] = {(m, a): [] for m in modes for a in arms_of(m)}
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), backend {args.backend}; {args.repeats} repeats x {len(res)} arms, interleaved; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    rng = random.Random(args.seed)
    for r in range(args.repeats):
        order = list(res)
        rng.shuffle(order)
        for m, a in order:
            res[(m, a)].append(run_arm(a, modes[m], args.steps, args.steady))
        print(f"  repeat {r + 1}/{args.repeats} done", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"\n{'mode':9s} {'arm':21s} {'first ' + str(args.steps) + ' steps':>16s} {'ratio':>6s} {'steady steps/s':>15s} "
          f"{'ratio':>6s} {'median ms/step':>15s} {'ratio':>6s} {'CPU ms/step':>12s} {'ratio':>6s} {'graphs':>6s} {'breaks':>6s}")
    for m in modes:
        base_first = statistics.median(x[0] for x in res[(m, "off")])
        base_rate = statistics.median(x[1] for x in res[(m, "off")])
        base_step = statistics.median(x[3] for x in res[(m, "off")])
        base_cpu = statistics.median(x[5] for x in res[(m, "off")])
        for a in arms_of(m):
            first = statistics.median(x[0] for x in res[(m, a)])
            rate = statistics.median(x[1] for x in res[(m, a)])
            step = statistics.median(x[3] for x in res[(m, a)])
            cpu = statistics.median(x[5] for x in res[(m, a)])
            graphs = max(x[2] for x in res[(m, a)])
            breaks = max(x[4] for x in res[(m, a)])
            print(f"{m:9s} {a:21s} {first:14.2f} s {first / base_first:6.3f} {rate:15.1f} {base_rate / rate:6.3f} "
                  f"{step * 1e3:15.2f} {step / base_step:6.3f} {cpu * 1e3:12.2f} {cpu / base_cpu:6.3f} {graphs:6d} {breaks:6d}")
    print("\nratio: time with the arm / time without RangeWatch, same mode (steady: steps/s without / with; median ms/step:\n"
          "the median step of the steady window, median over repeats, which a load spike moves less; CPU ms/step: the same in this\n"
          "process's CPU time, which other processes on the machine move least); breaks: dynamo graph breaks;\n"
          f"'{BREAKS.strip()}': the hooks torch.compiler.disable'd, as before the rangewatch operator (--before)")


if __name__ == "__main__":
    main()
