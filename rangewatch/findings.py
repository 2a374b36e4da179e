"""The one small type every check produces: :class:`Finding`, and the error ``policy="raise"`` throws."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Finding", "RangeMismatchError", "Severity", "FINDING_KINDS"]

Severity = Literal["info", "warning", "error"]

#: kinds of finding produced by rangewatch's checks
FINDING_KINDS = (
    "mismatch",  # observed convention differs from the expected one
    "clipping",  # a visualisation call clamps a meaningful share of values
    "nonfinite",  # NaN / Inf values
    "fp16_headroom",  # activations close to the fp16 limit
    "latent_scale",
    "latent_shift",
    "color_cast",
    "latent_outliers",
    "internal",  # rangewatch itself failed on a tap and switched it off
    "note",  # something skipped or worth knowing, not a problem
)


@dataclass(frozen=True)
class Finding:
    """Where a value-range problem was seen, what was seen, what was expected, evidence and fix."""

    kind: str
    where: str
    observed: str
    expected: str
    evidence: str
    fix: str
    severity: Severity = "warning"
    step: int | None = None
    source: str = field(default="", compare=False)  # where the expectation came from

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity used to report a finding once (the step is not part of it)."""
        return (self.kind, self.where, self.observed, self.expected)

    def __str__(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        exp = f"; expected {self.expected}" if self.expected else ""
        src = f" ({self.source})" if self.source else ""
        return f"[{self.kind}] {self.where}{at}: saw {self.observed}{exp}{src}. {self.evidence}. Fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RangeMismatchError(RuntimeError):
    """Raised under ``policy="raise"``; carries the findings that caused it."""

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        lines = "\n".join(f"  - {f}" for f in self.findings)
        super().__init__(f"rangewatch found {len(self.findings)} value-range problem(s):\n{lines}")
