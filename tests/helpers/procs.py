"""Running a test file as its own multi-process script: a fresh session (so that a hang is killed with
every rank it started), the repository on ``PYTHONPATH``, no inherited rank variables, and a timeout that
fails the test instead of hanging CI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

_RANK_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GLOBAL_RANK")
ROOT = str(Path(__file__).resolve().parents[2])


def run_script(script: str | Path, args: list[str], cwd: Path, timeout_s: float, what: str) -> tuple[int, str]:
    """Run ``python script *args`` in ``cwd``; returns (exit code, stderr). A run past ``timeout_s`` is killed
    with its whole process group (the ranks it spawned) and fails the test, naming ``what``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in _RANK_VARS:
        env.pop(k, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, str(Path(script).resolve()), *args], env=env, cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the spawned ranks too: they are in this session
        _, stderr = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout_s}s (a collective on one rank only?):\n{stderr[-5000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, stderr


def run_ranks(script: str | Path, scenario: str, out: Path, world: int, timeout_s: float, what: str) -> tuple[list[dict], str]:
    """Run ``python script scenario out`` (a multi-process script that writes ``out/rank<r>.json`` per rank)
    and read every rank's record; a rank that wrote none fails the test with the run's stderr."""
    import json

    rc, stderr = run_script(script, [scenario, str(out)], out, timeout_s, f"{scenario}: {what}")
    files = [out / f"rank{r}.json" for r in range(world)]
    assert all(f.exists() for f in files), f"{scenario}: rc {rc}, a rank did not finish:\n{stderr[-5000:]}"
    return [json.loads(f.read_text()) for f in files], stderr


def free_port() -> int:
    """A free TCP port on the loopback address (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(fn, args: tuple, out: Path, nprocs: int, timeout_s: float, what: str) -> list[dict]:
    """``torch.multiprocessing`` spawns ``fn(rank, *args)`` in ``nprocs`` processes that each write
    ``out/rank<r>.json``; a run past ``timeout_s`` kills them and fails the test. Returns every rank's record."""
    import json
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not finish in {timeout_s:g} s (a rank waits for the other?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nprocs)]
