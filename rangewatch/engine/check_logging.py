"""The engine's logging at check steps, through its :class:`~rangewatch.sinks.loggers.LoggerSink` (rank zero only).

:class:`CheckLogging` is a collaborator of :class:`rangewatch.Watch` that writes a check's histograms, its overview (the
findings count per kind, TensorBoard's custom-scalars layout) and the latent previews. Which loggers take what
(TensorBoard, W&B, MLflow) is the sink's business.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..findings.finding import Finding
from ..findings.log import FindingsLog
from ..sinks.loggers import LoggerSink
from ..stats.range_stats import RangeSummary

__all__ = ["CheckLogging"]


class CheckLogging:
    """What a check writes beyond the taps' scalars (a collaborator of :class:`~rangewatch.engine.watch.Watch`, rank
    zero only): the per-channel histograms, the findings counts and TensorBoard's custom-scalars layout (rewritten only
    when the taps or their flags change: the one piece of state it keeps), and the latent previews; all through the
    sink."""

    def __init__(self) -> None:
        self._layout_taps: dict[str, Any] = {}  # what the custom-scalars layout last showed

    def write(self, sink: LoggerSink, log: FindingsLog, taps: Mapping[str, Any], summaries: list[tuple[str, RangeSummary]],
              new: list[Finding], step: int, histograms: bool | str) -> None:
        """A check's writes after the scalars: ``taps`` the engine's taps by name (``latent``: a latent tap's
        monitor), ``summaries`` the ones computed at this check, ``new`` its findings not reported yet."""
        if histograms:
            flagged = log.flagged(new)
            for name, s in summaries:
                if taps[name].latent is None and (histograms == "all" or name in flagged):
                    sink.histograms(name, s, step)
        self._overview(sink, log, taps, summaries, new, step)
        for name, s in summaries:
            if taps[name].latent is not None:
                sink.latent_tap(name, taps[name].latent, s, step)

    def _overview(self, sink: LoggerSink, log: FindingsLog, taps: Mapping[str, Any], summaries: list[tuple[str, RangeSummary]],
                  new: list[Finding], step: int) -> None:
        """The findings count per kind (``rangewatch/findings/<kind>``, ``.../total``) and, when the
        taps or their flags changed, TensorBoard's custom-scalars layout (flagged taps first:
        :func:`~rangewatch.sinks.loggers.scalars_layout`)."""
        sink.finding_counts(log.counts(new), step)
        if not sink.has_tensorboard:
            return
        flagged = log.flagged(new)
        shown = {k: v for k, v in self._layout_taps.items() if not k.startswith("\0")}
        layout = dict(shown)
        for name, s in summaries:
            if taps[name].latent is None:
                layout[name] = (s.channels, name in flagged)
        layout = {n: (c, n in flagged) for n, (c, _) in layout.items()}
        # the findings at no tap (a preview call) get a category of their own
        elsewhere = tuple(sorted(w for w in flagged if w not in layout and w not in taps))
        key = {**layout, "\0elsewhere": (len(elsewhere), elsewhere)}
        if key != self._layout_taps:
            from ..sinks.loggers import scalars_layout

            sink.layout(scalars_layout(layout, elsewhere=elsewhere), step)
            self._layout_taps = key
