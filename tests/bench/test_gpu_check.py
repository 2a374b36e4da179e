"""benchmarks/gpu_check.py's CPU smoke mode: the prepared GPU check runs end to end (tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "figures.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--dry-run",
                        "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = out.read_text()
    assert p.returncode == 0, text + p.stderr[-3000:]
    for part in ("nosync RangeWatch(): ok", 'nosync RangeWatch(trace_modules="all"): ok', "fp16-black", "net.2",
                 "bench_stats float32", "overhead RangeWatch():", "tracer ModuleTracer", "all checks passed"):
        assert part in text, (part, text)
    assert "modules traced 0," not in text.split("trace_modules")[1]  # the tracer attached to the autoencoder
