"""Short text of numbers, ranges and shares for findings and messages (tag text: rangewatch.sinks.tags.tag_safe)."""

from __future__ import annotations

import math
from typing import Sequence


def fmt_num(v: float) -> str:
    """``1`` for 1.0, four significant digits otherwise: ``fmt_num(0.5) == "0.5"``."""
    v = float(v)
    if math.isfinite(v) and v == round(v):
        return str(int(round(v)))
    return f"{v:.4g}"


def fmt_pair(p: Sequence[float]) -> str:
    """``(-1, 1)``: a range as Python writes the tuple."""
    return f"({fmt_num(p[0])}, {fmt_num(p[1])})"


def fmt_pct(f: float) -> str:
    """A share as a percentage: one decimal from 1%, two significant digits below."""
    return f"{100 * f:.1f}%" if f >= 0.01 or f == 0 else f"{100 * f:.2g}%"
