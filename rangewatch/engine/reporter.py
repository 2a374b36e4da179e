"""The engine's findings reporting: through its findings log, to the sinks, and the internal-error rule.

:class:`FindingsReporter` is a collaborator of :class:`rangewatch.Watch`: it owns the
:class:`~rangewatch.findings.log.FindingsLog` (each finding once, the policy applied, every rank together under
``policy="raise"``) and the notes said once; it sends the fresh findings to the sinks, and reports an internal error
once, switching off only the tap it hit. It reads the collectives, the sinks, the clock and the voice from the
engine's :class:`~rangewatch.engine.surroundings.Surroundings`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING, Callable

from ..findings.finding import Finding, internal_finding
from ..findings.log import QUIET_KINDS, FindingsLog, Policy
from ..rng import rng_kept
from .surroundings import Surroundings

if TYPE_CHECKING:
    from .tapset import _Tap

__all__ = ["FindingsReporter"]

# what an internal error at a place that is no tap interrupted
_INTERNAL_WHAT = {
    "transform inspection": "predicting what the data loaders produce from their transforms (no loader prediction)",
    "derive_expectations": "reading what the model expects from its metadata (no derived expectations)",
    "trace_modules": "tracing the modules' NaN/Inf and fp16 headroom",
    "logging": "writing statistics or findings to the loggers",
    "visualization": "observing the preview calls",
    "ddp": "agreeing on the taps across ranks",
}


class FindingsReporter:
    """Where the engine's findings and notes go: :meth:`report` (through the findings log, the fresh ones to the
    sinks), :meth:`internal` (an internal error, reported once; only the tap it hit switched off), :meth:`note_once`."""

    def __init__(self, policy: Policy, surroundings: Surroundings) -> None:
        self._at = surroundings
        #: each finding once, the policy applied (:class:`~rangewatch.findings.log.FindingsLog`)
        self.log = FindingsLog(policy, warn=surroundings.warn)
        #: what was said once, by key
        self.notes: dict[str, str] = {}

    @rng_kept
    def report(self, new: list[Finding], step: int) -> list[Finding]:
        """Through the findings log (each finding once, the policy applied); the fresh ones to the sinks.
        Under several processes with ``policy="raise"``, every rank must call this together."""
        coll = self._at.collectives
        gather = coll.all_gather_bytes if self.log.policy == "raise" and coll.world_size > 1 else None

        def write(fresh: list[Finding]) -> None:
            sink = self._at.sink
            if sink is not None:
                try:
                    sink.findings(self.log.findings, step)
                except Exception as e:
                    self.internal("logging", e, None)

        return self.log.report(new, gather=gather, on_fresh=write)

    def report_as_warnings(self, found: Callable[[], list[Finding]], step: int) -> list[Finding]:
        """Findings at the end of a run (``unseen`` ones when the run ended before its check window closed), made by
        ``found()``: logged as warnings and said on rank zero, never raised, nothing exchanged between ranks; returns
        the fresh ones (none when making or writing them failed: an internal error at ``console``)."""
        try:
            from ..sinks.console import finding_text  # said as the findings log says every finding

            fresh = []
            for f in found():
                f = dataclasses.replace(f, severity="warning")
                if self.log.add(f):
                    fresh.append(f)
                    if self.log.policy != "log":
                        self._at.warn(finding_text(f))
            if fresh and self._at.sink is not None:
                self._at.sink.findings(self.log.findings, step)
            return fresh
        except Exception as e:  # noqa: BLE001
            self.internal("console", e, None)
            return []

    def say(self, line: Callable[[], str]) -> None:
        """Say the line that ``line()`` builds (rank zero); a failure to build it is an internal error at ``console``."""
        try:
            self._at.info(line())
        except Exception as e:  # noqa: BLE001
            self.internal("console", e, None)

    def summary_line(self, checked: int, batches: int) -> str:
        """One line for the end of a fit: ``checked`` taps over ``batches`` training batches, findings by kind."""
        problems = [f for f in self.log.findings if f.kind not in QUIET_KINDS]
        counts = Counter(f.kind for f in problems)
        found = (f"{len(problems)} finding{'s' if len(problems) != 1 else ''} (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"
                 if problems else "no findings")
        internal = sum(f.kind == "internal" for f in self.log.findings)
        extra = f"; {internal} tap{'s' if internal != 1 else ''} switched off after an internal error" if internal else ""
        return (f"rangewatch: {checked} tap{'s' if checked != 1 else ''} checked over {batches} "
                f"training batch{'es' if batches != 1 else ''}: {found}{extra}")

    @rng_kept
    def internal(self, where: str, error: BaseException, tap: _Tap | None = None, what: str | None = None,
                 consequence: str | None = None) -> None:
        """``where`` failed with ``error`` while doing ``what``: an ``internal`` finding and one warning, once; ``tap``
        (the tap it hit, if any) is switched off."""
        if tap is not None:
            tap.disabled = True
            if tap.error is None:
                tap.error = f"{type(error).__name__}: {error}"
        # say what failed; "switched this tap off" only when a tap was
        what = what or _INTERNAL_WHAT.get(where) or f"watching {where}"
        if tap is not None:
            evidence = f"rangewatch failed while {what} and switched this tap off; training goes on"
            consequence = "this tap is switched off"
        elif consequence is not None:  # a front end's own piece (watch_pipeline's decode, say)
            evidence = f"rangewatch failed while {what}; {consequence}"
        else:
            evidence = f"rangewatch failed while {what}; that step is skipped, training goes on"
            consequence = "no tap is switched off; training goes on"
        f = internal_finding(where, error, evidence=evidence, fix="please report this with the tensor's shape and dtype",
                             step=self._at.step())
        if self.log.add(f):
            self._at.warn(f"rangewatch: internal error at {where} while {what} ({type(error).__name__}: {error}); {consequence}")

    def note_once(self, key: str, text: str) -> None:
        """Say ``text`` once per ``key``."""
        if key in self.notes:
            return
        self.notes[key] = text
        self._at.info(text)
