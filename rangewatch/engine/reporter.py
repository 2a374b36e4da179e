"""The engine's findings reporting: through its findings log, to the sinks, and the internal-error rule.

FindingsReporting (a mixin) is the part of :class:`rangewatch.Watch` that sends a check's findings through the
:class:`~rangewatch.findings.log.FindingsLog` (each finding once, the policy applied, every rank together under
``policy="raise"``) and the fresh ones to the sinks; reports an internal error once and switches off only the
tap it hit; and says a note once.
"""

from __future__ import annotations

from ..rng import rng_kept
from .tapset import _Tap
from ..findings.finding import Finding, internal_finding

__all__ = ["FindingsReporting"]

# what an internal error at a place that is no tap interrupted
_INTERNAL_WHAT = {
    "transform inspection": "predicting what the data loaders produce from their transforms (no loader prediction)",
    "derive_expectations": "reading what the model expects from its metadata (no derived expectations)",
    "trace_modules": "tracing the modules' NaN/Inf and fp16 headroom",
    "logging": "writing statistics or findings to the loggers",
    "visualization": "observing the preview calls",
    "ddp": "agreeing on the taps across ranks",
}


class FindingsReporting:
    """The engine's findings reporting (a mixin of :class:`~rangewatch.engine.watch.Watch`): the findings log and
    the sinks, internal errors (each reported once, only the tap it hit switched off) and notes said once."""

    @rng_kept
    def _report(self, new: list[Finding], step: int) -> list[Finding]:
        """Through the findings log (each finding once, the policy applied); the fresh ones to the sinks.
        Under several processes with ``policy="raise"``, every rank must call this together."""
        coll = self.collectives
        gather = coll.all_gather_bytes if self.policy == "raise" and coll.world_size > 1 else None

        def write(fresh: list[Finding]) -> None:
            if self._sink is not None:
                try:
                    self._sink.findings(self.findings, step)
                except Exception as e:
                    self._internal("logging", e, None)

        return self._log.report(new, gather=gather, on_fresh=write)

    @rng_kept
    def _internal(self, where: str, error: BaseException, tap: _Tap | None, what: str | None = None,
                  consequence: str | None = None) -> None:
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
                             step=self._clock())
        if self._log.add(f):
            self._warn(f"rangewatch: internal error at {where} while {what} ({type(error).__name__}: {error}); {consequence}")

    def _note_once(self, key: str, text: str) -> None:
        if key in self._notes:
            return
        self._notes[key] = text
        self._info(text)
