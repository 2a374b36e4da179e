"""What a watcher keeps of one observed call: a :class:`VisRecord`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..findings.finding import Finding
from ..checks.inference import Inference
from ..stats.range_stats import RangeSummary

if TYPE_CHECKING:
    from .drawing import Preview

__all__ = ["VisRecord"]


@dataclass
class VisRecord:
    """One observed call, as one watcher saw it.

    ``below_fraction`` / ``above_fraction``: share of all values the call clamps below / above
    its assumed range (0 when it does not clamp); ``inference``: the convention the data follows
    (``None`` when the call takes the data as is and nothing was measured).
    """

    call: str
    where: str
    assumption: str
    mode: str
    assumed_range: tuple[float, float] | None
    below_fraction: float = 0.0
    above_fraction: float = 0.0
    nan_fraction: float = 0.0
    count: int = 0
    inference: Inference | None = None
    summary: RangeSummary | None = field(default=None, repr=False)
    flagged: bool = False  # crossed the threshold (also when its finding was a duplicate)
    findings: tuple[Finding, ...] = ()  # new findings this call produced
    message: str = ""
    step: int | None = None
    preview: "Preview | None" = field(default=None, repr=False)

    @property
    def clamped_fraction(self) -> float:
        return self.below_fraction + self.above_fraction

    @property
    def convention(self) -> str | None:
        return None if self.inference is None else self.inference.name

