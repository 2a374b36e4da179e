"""The one small type every check produces: :class:`Finding`, its builders, and the error ``policy="raise"`` throws.

A check builds the kinds whose shape is fixed through one builder each, so that the kind, the severity
and the parts every such finding shares are written once:

* :func:`nonfinite_finding`: NaN/Inf values (always an ``error``; ``expected`` defaults to "finite values");
* :func:`internal_finding`: rangewatch itself failed on a piece and switched it off (``info``; the
  exception is the observation);
* :func:`note_finding`: something skipped or worth knowing (``info``).

:func:`first_seen` is the one de-duplication rule: a finding is reported once per :attr:`Finding.key`
(kind, where, observed, expected; the step is not part of it).

>>> f = nonfinite_finding("decoder", observed="NaN/Inf", evidence="3 NaN", fix="run in bf16", step=7)
>>> (f.kind, f.severity, f.expected, f.step)
('nonfinite', 'error', 'finite values', 7)
>>> e = internal_finding("tap x", ValueError("odd shape"), evidence="switched off")
>>> (e.kind, e.severity, e.observed)
('internal', 'info', 'ValueError: odd shape')
>>> seen: set = set()
>>> [g.step for g in first_seen([f, f, e], seen)], len(first_seen([f], seen))
([7, None], 0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "Finding",
    "FindingKey",
    "RangeMismatchError",
    "Severity",
    "FINDING_KINDS",
    "nonfinite_finding",
    "mismatch_finding",
    "clipping_finding",
    "internal_finding",
    "note_finding",
    "unseen_finding",
    "first_seen",
]

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
    "unseen",  # a declared tap (expect= / modules= key, tensor name) never seen in the check window
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


#: what makes two findings the same report (see :attr:`Finding.key`)
FindingKey = tuple[str, str, str, str]


def nonfinite_finding(where: str, *, observed: str, evidence: str, fix: str, expected: str = "finite values",
                      step: int | None = None, source: str = "") -> Finding:
    """A ``nonfinite`` finding: NaN/Inf values seen at ``where`` (severity ``error``)."""
    return Finding(kind="nonfinite", where=where, observed=observed, expected=expected, evidence=evidence,
                   fix=fix, severity="error", step=step, source=source)


def mismatch_finding(where: str, *, observed: str, expected: str, evidence: str, fix: str,
                     severity: Severity = "warning", step: int | None = None, source: str = "") -> Finding:
    """A ``mismatch`` finding: ``where`` carries values in another range (``observed``) than ``expected``."""
    return Finding("mismatch", where, observed, expected, evidence, fix, severity, step, source)


def clipping_finding(where: str, *, observed: str, expected: str, evidence: str, fix: str,
                     severity: Severity = "warning", step: int | None = None, source: str = "") -> Finding:
    """A ``clipping`` finding: a preview or decode clamps a meaningful share of the values at ``where``."""
    return Finding("clipping", where, observed, expected, evidence, fix, severity, step, source)


def internal_finding(where: str, error: BaseException, *, evidence: str, fix: str = "report this to rangewatch",
                     step: int | None = None, source: str = "") -> Finding:
    """An ``internal`` finding: rangewatch failed at ``where`` with ``error`` (severity ``info``).

    ``evidence`` says what rangewatch switched off and that the user's run goes on."""
    return Finding(kind="internal", where=where, observed=f"{type(error).__name__}: {error}", expected="",
                   evidence=evidence, fix=fix, severity="info", step=step, source=source)


def note_finding(where: str, observed: str, *, evidence: str, fix: str = "", expected: str = "",
                 step: int | None = None, source: str = "") -> Finding:
    """A ``note`` finding: something skipped or worth knowing, not a problem (severity ``info``)."""
    return Finding(kind="note", where=where, observed=observed, expected=expected, evidence=evidence, fix=fix,
                   severity="info", step=step, source=source)


def unseen_finding(where: str, *, declared: str, batches: int, evidence: str, fix: str, raising: bool,
                   step: int | None = None) -> Finding:
    """An ``unseen`` finding: the tap ``where``, declared as ``declared``, never appeared in the first
    ``batches`` training batches (severity ``warning``; ``error`` under ``policy="raise"``, which stops the run).
    What it observed does not depend on the rank (the details are in ``evidence``), so that the ranks stop
    together on one finding."""
    return Finding(kind="unseen", where=where, observed=f"never seen in the first {batches} training batch{'es' if batches != 1 else ''}",
                   expected=f"declared: {declared}", evidence=evidence, fix=fix,
                   severity="error" if raising else "warning", step=step)


def first_seen(findings: Iterable[Finding], seen: set[FindingKey]) -> list[Finding]:
    """The findings whose :attr:`~Finding.key` is not in ``seen`` yet, in order, each key once.

    ``seen`` is updated in place: pass the same set to report every finding once over a run."""
    out: list[Finding] = []
    for f in findings:
        if f.key not in seen:
            seen.add(f.key)
            out.append(f)
    return out


class RangeMismatchError(RuntimeError):
    """Raised under ``policy="raise"``; carries the findings that caused it."""

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        lines = "\n".join(f"  - {f}" for f in self.findings)
        super().__init__(f"rangewatch found {len(self.findings)} value-range problem(s):\n{lines}")
