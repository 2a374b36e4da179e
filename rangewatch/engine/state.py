"""The engine's checkpoint state: what :meth:`rangewatch.Watch.state_dict` writes and how a saved one is read back.

A state holds its ``version`` (:data:`STATE_VERSION`), the training batch count, the findings log
(:class:`~rangewatch.findings.log.FindingsLog`) and each tap's open window (:meth:`TapSet.state_dict
<rangewatch.engine.tapset.TapSet.state_dict>`). :func:`read_state` checks a saved one before anything is changed:
a foreign or tampered dict raises ``ValueError`` (the engine says so once and resumes from an empty state).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..config import _short
from ..findings.log import FindingsLog, Policy

__all__ = ["STATE_VERSION", "engine_state", "read_state"]

#: the version of :meth:`Watch.state_dict <rangewatch.Watch.state_dict>` this rangewatch writes and reads
STATE_VERSION = 1


def engine_state(train_batches: int, log: FindingsLog, taps: dict[str, Any]) -> dict[str, Any]:
    """The state of an engine that has seen ``train_batches`` training batches."""
    return {"version": STATE_VERSION, "train_batches": train_batches, **log.state_dict(), "taps": taps}


def read_state(state: Any, policy: Policy) -> tuple[int, Mapping[str, Mapping[str, Any]], FindingsLog]:
    """A saved state's batch count, saved windows by tap and findings log (a fresh one, under ``policy``); raises
    ``ValueError`` (or the findings log's error) for a state this version cannot read."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a {type(state).__name__}, not a mapping")
    version = state.get("version")
    if version != STATE_VERSION:
        raise ValueError(f"version {_short(version)}; this rangewatch reads version {STATE_VERSION}")
    batches = state.get("train_batches", 0)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise ValueError(f"train_batches = {_short(batches)} is not a count")
    taps = state.get("taps") or {}
    if not isinstance(taps, Mapping) or not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in taps.items()):
        raise ValueError(f"taps = {_short(taps)} is not a mapping of tap names to saved windows")
    log = FindingsLog(policy)
    log.load_state_dict(state)  # into a fresh log first: a bad findings list changes nothing
    return batches, taps, log
