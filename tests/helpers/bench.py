"""``benchmarks/eval_detection.py`` imported for the tests that check its figures and cases."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

EVAL_DETECTION = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_detection.py"


@contextlib.contextmanager
def eval_detection() -> Iterator[Any]:
    """The benchmark script as the module ``eval_detection`` for the block (registered in ``sys.modules``: its
    dataclasses look their module up), unregistered after."""
    spec = importlib.util.spec_from_file_location("eval_detection", EVAL_DETECTION)
    ev = importlib.util.module_from_spec(spec)
    sys.modules["eval_detection"] = ev
    try:
        spec.loader.exec_module(ev)
        yield ev
    finally:
        sys.modules.pop("eval_detection", None)
