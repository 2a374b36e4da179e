"""The engine's step cadence: which training steps are check steps, and the step open now.

:class:`StepCadence` is a collaborator of :class:`rangewatch.Watch`: it counts the training batches closed so far
(across a resume), keeps the check interval, and holds the step that ``Watch.begin_step`` (or the first ``batch`` /
``tensor`` of a step) opened until ``Watch.end_step`` closes it. A check step is one of the first ``check_first_n``
training batches, or a multiple of the interval; the check window closes after ``check_first_n`` batches (one at least).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["StepCadence"]


class StepCadence:
    """``batches`` (training batches closed), ``every`` (the check interval) and the open step: ``open``, ``at`` (its
    step) and ``check`` (whether it is a check step)."""

    def __init__(self, every: int) -> None:
        self.batches = 0
        self.every = every
        self.open = False
        self.at = 0
        self.check = False

    def is_check_step(self, step: int, first_n: int) -> bool:
        """Whether ``step`` is a check step: one of the first ``first_n`` batches, or a multiple of ``every``."""
        return self.batches < first_n or step % self.every == 0

    def begin(self, step: int, first_n: int) -> bool:
        """Open ``step``; returns whether it is a check step."""
        self.at, self.check, self.open = step, self.is_check_step(step, first_n), True
        return self.check

    def close(self, now: Callable[[], int], first_n: int) -> None:
        """Close the open step (one that was never opened is the clock's step ``now()``, judged all the same): one
        more batch."""
        if not self.open:
            self.at = now()
            self.check = self.is_check_step(self.at, first_n)
        self.batches += 1
        self.open = False

    def window_closed(self, first_n: int) -> bool:
        """Whether the check window (the first ``first_n`` batches, one at least) is over."""
        return self.batches >= max(1, first_n)
