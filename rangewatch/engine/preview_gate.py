"""The engine's preview watch, private side: which image-conversion calls are measured, and stopping the watch.

:class:`PreviewGate` is the part of :class:`rangewatch.Watch` that decides which calls to ``make_grid`` /
``save_image`` / ``tensor2img`` / ``add_image`` the :class:`~rangewatch.visualization.VisualizationWatch` measures
(at check steps, and each call site's first call; never rangewatch's own logging), and stops the watch at the end.
"""

from __future__ import annotations

import os

__all__ = ["PreviewGate"]

_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the rangewatch package
_OWN_LOGGING = tuple(os.path.join(*p.split("/")) for p in (  # rangewatch's own image logging, not observed
    "checks/latents.py", "sinks/loggers.py", "visualization.py"))


class PreviewGate:
    """The engine's private side of the preview watch (a mixin of :class:`~rangewatch.engine.watch.Watch`): which
    image-conversion calls are measured, and stopping the watch; the public side is ``Watch.watch_previews`` /
    ``preview_step`` / ``flush_previews``."""

    def _vis_gate(self, site: str, filename: str) -> bool:
        """Measure this call? At check steps, and at the first call of each call site."""
        if filename.startswith(_OWN_DIR) and filename[len(_OWN_DIR):] in _OWN_LOGGING:
            return False  # rangewatch's own previews
        first = site not in self._vis_sites
        if first:
            self._vis_sites.add(site)
        return first or self._vis_judge

    def _stop_visualization(self) -> None:
        if self._vis is None or not self._vis.active:
            return
        try:
            self.flush_previews(final=True)
        finally:
            try:
                while self._vis.active:
                    self._vis.stop()
            except Exception as e:
                self._internal("visualization", e, None, what="stopping the visualisation watch")
