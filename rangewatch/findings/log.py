"""The findings log: every finding reported once, and the policy applied, in one place.

A finding is identified by :attr:`~rangewatch.Finding.key` (kind, where, observed, expected: the
step is not part of it), so a problem seen at every check is reported at the first one only.
``policy`` says what a fresh finding does: ``"warn"`` (one warning each), ``"raise"``
(:class:`~rangewatch.RangeMismatchError` for the findings that are not ``info``), ``"log"`` (kept,
written to the sinks, nothing said). Notes and internal errors never raise.

Under several processes with ``policy="raise"``, stopping is a collective decision (as Lightning's
``strategy.reduce_boolean_decision``): the ranks exchange what would stop them, and every rank raises
the same error, or none does. A rank that raised alone would leave the others waiting in their next
collective.

Example::

    >>> from rangewatch import Finding
    >>> from rangewatch.findings.log import FindingsLog
    >>> log = FindingsLog(policy="log")
    >>> f = Finding("mismatch", "batch.image", "unit", "symmetric", "min 0, max 1", "x * 2 - 1", step=0)
    >>> [g.where for g in log.report([f, f])]
    ['batch.image']
    >>> log.report([f])  # already reported
    []
    >>> log.problems == [f]
    True
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Literal

from .finding import Finding, FindingKey, RangeMismatchError, first_seen

__all__ = ["FindingsLog", "Policy", "POLICIES", "QUIET_KINDS"]

Policy = Literal["warn", "raise", "log"]
POLICIES = ("warn", "raise", "log")
QUIET_KINDS = ("note", "internal")  # never raise for these; not counted as problems

Key = FindingKey


def _say_nothing(text: str) -> None:
    pass


class FindingsLog:
    """The findings so far, each once, with ``policy`` applied to fresh ones.

    Args:
        policy: ``"warn"``, ``"raise"`` or ``"log"``.
        warn: called with the text of each fresh finding to warn about (default: nothing).
    """

    def __init__(self, policy: Policy = "warn", warn: Callable[[str], None] | None = None) -> None:
        self.policy: Policy = policy
        self.warn = warn or _say_nothing
        self.findings: list[Finding] = []
        self.reported: set[Key] = set()

    # ------------------------------------------------------------------ the log
    def add(self, f: Finding) -> bool:
        """Keep ``f`` unless a finding with its key was reported; True when it is new."""
        new = first_seen([f], self.reported)
        self.findings.extend(new)
        return bool(new)

    def withdraw(self, kind: str, where: str) -> None:
        """Take back the findings of ``kind`` at ``where`` (their keys stay reported)."""
        self.findings = [f for f in self.findings if not (f.kind == kind and f.where == where)]

    @property
    def problems(self) -> list[Finding]:
        """The findings that are problems (notes and internal errors aside)."""
        return [f for f in self.findings if f.kind not in QUIET_KINDS]

    def flagged(self, new: Iterable[Finding] = ()) -> set[str]:
        """Taps (``where``) with a problem, counting ``new`` ones too."""
        return {f.where for f in [*self.findings, *new] if f.kind not in QUIET_KINDS}

    def counts(self, new: Iterable[Finding] = ()) -> dict[str, float]:
        """Problems per kind (kind -> number, in the order first seen), counting the ``new`` ones not reported
        yet; the sinks write them as ``rangewatch/findings/<kind>`` and their sum as ``.../total``."""
        out: dict[str, float] = {}
        for f in [*self.findings, *(f for f in new if f.key not in self.reported)]:
            if f.kind not in QUIET_KINDS:
                out[f.kind] = out.get(f.kind, 0.0) + 1
        return out

    # ------------------------------------------------------------------ the policy
    def report(self, new: Iterable[Finding], gather: Callable[[bytes], list[bytes]] | None = None,
               on_fresh: Callable[[list[Finding]], None] | None = None) -> list[Finding]:
        """Log the new findings, warn or raise as the policy says; returns the fresh ones.

        ``gather`` (every rank's bytes, a collective) makes stopping a decision of all ranks under
        ``policy="raise"``: every rank must then call this together. ``on_fresh`` hears of the fresh
        findings before the policy acts (the sinks write them)."""
        new = list(new)
        together = self.policy == "raise" and gather is not None
        agreed: list[Finding] = []
        if together:
            mine = [f for f in new if f.key not in self.reported and f.kind not in QUIET_KINDS and f.severity != "info"]
            agreed = self._stop_together(mine, gather)  # type: ignore[arg-type]
            new = new + [f for f in agreed if f not in new]
        fresh = first_seen(new, self.reported)
        self.findings.extend(fresh)
        if fresh and on_fresh is not None:
            on_fresh(fresh)
        loud = [f for f in fresh if f.kind not in QUIET_KINDS]
        if self.policy in ("warn", "raise"):
            from ..sinks.console import finding_text  # short lines, code never cut, a pointer to the evidence

            for f in loud:
                if self.policy == "warn" or f.severity == "info":
                    self.warn(finding_text(f))
        stop = agreed if together else [f for f in loud if f.severity != "info"]
        if self.policy == "raise" and stop:
            raise RangeMismatchError(stop)
        return fresh

    @staticmethod
    def _stop_together(stop: list[Finding], gather: Callable[[bytes], list[bytes]]) -> list[Finding]:
        payload = json.dumps([f.to_dict() for f in stop]).encode()
        return first_seen((Finding(**d) for part in gather(payload) for d in json.loads(part.decode())), set())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"reported": [list(k) for k in self.reported], "findings": [f.to_dict() for f in self.findings]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reported = {tuple(k) for k in state.get("reported", [])}  # type: ignore[misc]
        self.findings = [Finding(**f) for f in state.get("findings", [])]
