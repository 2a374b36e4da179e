"""The engine's step cadence as a collaborator (rangewatch/engine/cadence.py), without Lightning or an engine: which
steps are check steps, a step closed without being opened, and the end of the check window."""

from __future__ import annotations

from rangewatch.engine.cadence import StepCadence


def test_the_first_batches_and_every_nth_step_are_check_steps():
    c = StepCadence(every=5)
    checks = []
    for step in range(12):
        checks.append(c.begin(step, first_n=3))
        assert c.open and c.at == step
        c.close(lambda: 99, first_n=3)  # an opened step keeps its own step
        assert not c.open and c.at == step
    assert [s for s, ch in enumerate(checks) if ch] == [0, 1, 2, 5, 10]
    assert c.batches == 12


def test_a_step_never_opened_is_judged_at_the_clocks_step_and_the_window_closes_once_counted():
    c = StepCadence(every=4)
    assert not c.window_closed(first_n=0) and not c.window_closed(first_n=2)
    c.batches = 2  # two batches already seen (a resume)
    calls = []
    c.close(lambda: calls.append(1) or 8, first_n=2)
    assert (c.at, c.check, c.batches, calls) == (8, True, 3, [1])  # 8 is a multiple of 4
    c.close(lambda: 9, first_n=2)
    assert (c.at, c.check) == (9, False)
    assert c.window_closed(first_n=2) and c.window_closed(first_n=0)  # one batch at least
