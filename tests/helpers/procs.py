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
