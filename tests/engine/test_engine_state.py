"""The engine's checkpoint format (rangewatch/engine/state.py), without Lightning or an engine: a state written and
read back, and the states a resume must refuse before anything is changed."""

from __future__ import annotations

import pytest

from rangewatch.engine.state import STATE_VERSION, engine_state, read_state
from rangewatch.findings.finding import mismatch_finding
from rangewatch.findings.log import FindingsLog


def test_a_state_reads_back_with_its_findings_and_windows():
    log = FindingsLog("log")
    f = mismatch_finding(where="batch.image", observed="unit", expected="symmetric", evidence="e", fix="f", step=2)
    log.add(f)
    state = engine_state(7, log, {"batch.image": {"stats": {}, "steps_checked": 1}})
    assert state["version"] == STATE_VERSION and state["train_batches"] == 7
    batches, taps, back = read_state(state, "raise")
    assert batches == 7 and dict(taps) == {"batch.image": {"stats": {}, "steps_checked": 1}}
    assert back.findings == [f] and back.policy == "raise"
    assert not back.add(f)  # reported once, across the resume


@pytest.mark.parametrize("state,says", [
    ([1, 2], "a list, not a mapping"),
    ({"version": 99}, "version 99; this rangewatch reads version 1"),
    ({"version": STATE_VERSION, "train_batches": -1}, "train_batches = -1 is not a count"),
    ({"version": STATE_VERSION, "train_batches": True}, "train_batches = True is not a count"),
    ({"version": STATE_VERSION, "taps": {"batch.image": 3}}, "is not a mapping of tap names to saved windows"),
])
def test_a_state_this_version_cannot_read_is_refused(state, says):
    with pytest.raises(ValueError, match=says.replace("[", r"\[")):
        read_state(state, "warn")
