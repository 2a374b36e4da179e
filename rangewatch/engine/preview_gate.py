"""The engine's preview watch: which image-conversion calls are measured, what they found, and stopping it.

:class:`PreviewGate` is a collaborator of :class:`rangewatch.Watch`: it owns the
:class:`~rangewatch.visualization.VisualizationWatch` (made at the first start), decides which calls to
``make_grid`` / ``save_image`` / ``tensor2img`` / ``add_image`` it measures (at check steps, and each call site's
first call; never rangewatch's own logging), and holds the findings of those calls until the engine reports
them. The engine's public side is ``Watch.watch_previews`` / ``preview_step`` / ``flush_previews``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..findings.finding import Finding
from ..sinks.loggers import LoggerSink

if TYPE_CHECKING:
    from .reporter import FindingsReporter
    from .surroundings import Surroundings

__all__ = ["PreviewGate"]

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the rangewatch package
_OWN_LOGGING = tuple(os.path.join(*p.split("/")) for p in (  # rangewatch's own image logging, not observed
    "checks/latents.py", "sinks/loggers.py", "visualization.py"))


class PreviewGate:
    """The preview watch the engine drives: :meth:`start`, :meth:`at` (step, phase, judge everything now?),
    :meth:`take` (the findings since the last take), :meth:`pop_previews` (the corrected previews) and :meth:`halt`;
    with the engine's reporter and surroundings given: :meth:`watch` (start, or report why not), :meth:`flush` (report
    the findings due, log the corrected previews) and :meth:`stop` (the last flush, then halt)."""

    def __init__(self) -> None:
        self.vis: Any = None  # the VisualizationWatch, made at the first start
        #: findings of the calls measured since the last :meth:`take` (the watch appends to this list)
        self.pending: list[Finding] = []
        self._sites: set[str] = set()  # call sites seen (each one's first call is measured)
        self._judge = False  # measure every call now (check steps, epoch ends)

    def gate(self, site: str, filename: str) -> bool:
        """Measure this call? At check steps, and at the first call of each call site."""
        if filename.startswith(_OWN_DIR) and filename[len(_OWN_DIR):] in _OWN_LOGGING:
            return False  # rangewatch's own previews
        first = site not in self._sites
        if first:
            self._sites.add(site)
        return first or self._judge

    def start(self, *, threshold: float, hist_bins: int, context: str, step: int | None) -> None:
        """Observe the image-conversion calls (from now until :meth:`halt`), stamped with ``step`` and ``context``."""
        if self.vis is None:
            from ..visualization import VisualizationWatch

            self.vis = VisualizationWatch(threshold=threshold, context=context, on_finding=self.pending.append,
                                          warn=False, hist_bins=hist_bins, gate=self.gate)
        self.vis.context = context
        self.vis.step = step
        if not self.vis.active:
            self.vis.start()

    def at(self, step: int | None, context: str | None = None, judge: bool | None = None) -> None:
        """Keep the watch's step (and phase) current, so a call is stamped with the step it was made at; ``judge``:
        measure every call from now on (a check step) or only each site's first."""
        if self.vis is not None:
            self.vis.step = step
            if context is not None:
                self.vis.context = context
        if judge is not None:
            self._judge = judge

    @property
    def active(self) -> bool:
        return self.vis is not None and self.vis.active

    def idle(self, log: bool) -> bool:
        """Nothing to report, and (with ``log``) no preview to log: the per-step flush stays cheap."""
        return not self.pending and (not log or self.vis is None or not self.vis.has_previews)

    def take(self) -> list[Finding]:
        """The findings since the last take (the list the watch appends to is kept)."""
        out, self.pending[:] = list(self.pending), []
        return out

    def pop_previews(self) -> list[Any]:
        return [] if self.vis is None else self.vis.pop_previews()

    def log(self, sink: LoggerSink | None, now: int) -> None:
        """Write the corrected previews made since the last call through ``sink`` (at the step of each call, else ``now``)."""
        previews = self.pop_previews()
        if previews and sink is not None:
            sink.previews(previews, now)  # each at its call's step; TensorBoard, W&B and MLflow alike

    def halt(self) -> None:
        """Stop observing (every nested start)."""
        if self.vis is not None:
            while self.vis.active:
                self.vis.stop()

    # ------------------------------------------------------------------ driven by the engine
    def watch(self, reporter: FindingsReporter, surroundings: Surroundings, *, threshold: float, hist_bins: int,
              context: str) -> bool:
        """:meth:`start`; False when it failed (reported as an internal error: previews are not observed)."""
        try:
            self.start(threshold=threshold, hist_bins=hist_bins, context=context, step=surroundings.now())
            return True
        except Exception as e:
            reporter.internal("visualization", e, None, what="starting the visualisation watch (previews are not observed)")
            return False

    def flush(self, reporter: FindingsReporter, surroundings: Surroundings, *, log: bool, final: bool) -> None:
        """Report the findings of the calls measured since the last flush and, with ``log``, write their corrected
        previews through the sinks (at the step of each call). Under several processes preview calls happen on some
        ranks only, so their findings wait for the next check, or the ``final`` flush at teardown, where every rank
        takes part (a collective decision, ``policy="raise"``, is safe there)."""
        if surroundings.collectives.world_size == 1:
            if self.pending:
                reporter.report(self.take(), surroundings.now())
        elif final:
            reporter.report(self.take(), surroundings.now())
        if not log:
            return
        try:
            self.log(surroundings.sink, surroundings.now())
        except Exception as e:
            reporter.internal("visualization", e, None, what="logging the corrected previews")

    def stop(self, reporter: FindingsReporter, surroundings: Surroundings) -> None:
        """Report the last previews' findings (may raise under ``policy="raise"``), then halt."""
        if not self.active:
            return
        try:
            if not self.idle(True):
                self.flush(reporter, surroundings, log=True, final=True)
        finally:
            try:
                self.halt()
            except Exception as e:
                reporter.internal("visualization", e, None, what="stopping the visualisation watch")
