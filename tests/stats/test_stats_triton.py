"""The one-read Triton kernels (``rangewatch/stats/triton.py``) on CPU, through Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the checks run in a subprocess:
``tests/stats/_triton_interp.py`` (kernel-specific cases, and a check that the kernels ran rather than
the eager fallback) and the numpy-reference property tests of ``test_stats.py``, which then take
the kernel path for float32/float16/bfloat16 inputs. On CUDA the same kernels run compiled
(``test_stats_cuda.py``, marked ``gpu``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
TESTS, ROOT = HERE.parent, HERE.parent.parent


@pytest.mark.slow
def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "RANGEWATCH_TRITON_CPU": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(HERE / "_triton_interp.py"),
           str(HERE / "test_stats.py"), "-k",
           "kernel or matches_numpy_reference or every_step_path_matches or large_layouts"]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = (p.stdout + p.stderr)[-4000:]
    assert p.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.split("passed")[-1], tail
