"""Where the engine runs: its collectives, its sinks, its step clock and its voice.

:class:`Surroundings` is the one small object that :meth:`rangewatch.Watch.connect` sets and the engine's
collaborators share (instead of a reference to the whole :class:`~rangewatch.Watch`): the cross-process
operations (:mod:`rangewatch.engine.collectives`), the sinks the loggers became (rank zero only), the step clock
(the engine's own counter when none is given) and the voice that says a line on rank zero only.
"""

from __future__ import annotations

from typing import Any, Callable

from ..rng import rng_kept
from ..sinks.loggers import LoggerSink
from .collectives import Collectives, SingleProcess

__all__ = ["Surroundings"]


def _says(level: str, text: str) -> None:
    """The default voice (the engine gates on its rank): a warning that points at the user's code, or a line
    said once (the ``rangewatch`` logger when the program configured logging, else stderr)."""
    from ..sinks import console

    (console.warn if level == "warn" else console.info)(text)


class Surroundings:
    """The engine's surroundings (set by ``Watch.connect``): ``collectives``, ``sink``, the step ``clock`` (None: the
    engine's own counter, ``own_step``, advanced by ``Watch.end_step``) and ``messages`` (``fn(level, text)``; None:
    the default voice); :meth:`step` / :meth:`now` read the clock, :meth:`info` / :meth:`warn` speak on rank zero."""

    def __init__(self, messages: Callable[[str, str], None] | None = None) -> None:
        self.collectives: Collectives = SingleProcess()
        self.sink: LoggerSink | None = None
        self.clock: Callable[[], int | None] | None = None
        self.own_step = 0
        self.messages = messages

    def connect(self, collectives: Collectives | None, loggers: list[Any] | None, clock: Callable[[], int | None] | None) -> bool:
        """Run under ``collectives`` (None: one process) and ``clock`` (None: the own counter); the ``loggers`` become
        the sink on rank zero (Lightning loggers, and ``SummaryWriter`` objects: histograms, text and images directly,
        scalars through ``add_scalar``). Returns whether these loggers can show histograms."""
        from ..sinks.loggers import takes_histograms

        self.collectives = collectives if collectives is not None else SingleProcess()
        self.clock = clock
        loggers = list(loggers or [])
        self.sink = LoggerSink(loggers) if self.collectives.rank == 0 else None  # a SummaryWriter among them too
        return takes_histograms(loggers)

    def picklable_messages(self) -> Callable[[str, str], None] | None:
        """``messages`` when it can be pickled (a lambda cannot: a pickle falls back to the default voice)."""
        import pickle

        if self.messages is not None:
            try:
                pickle.dumps(self.messages)
            except Exception:  # noqa: BLE001
                return None
        return self.messages

    def step(self) -> int | None:
        """The clock's step (None when the given clock has none)."""
        return self.own_step if self.clock is None else self.clock()

    def now(self) -> int:
        """The clock's step, 0 when it has none."""
        step = self.step()
        return int(step) if step is not None else 0

    @rng_kept
    def say(self, level: str, text: str) -> None:
        if self.collectives.rank != 0:
            return
        (self.messages or _says)(level, text)

    def info(self, text: str) -> None:
        self.say("info", text)

    def warn(self, text: str) -> None:
        self.say("warn", text)
