"""Clipping at visualisation: the public names of :mod:`rangewatch.previews` (see its docstring),
importable from here as they always were."""

from __future__ import annotations

from .previews import (
    OBSERVED_CALLS,
    Preview,
    VisRecord,
    VisualizationWarning,
    VisualizationWatch,
    is_patched,
    log_previews,
    watch_visualization,
)

__all__ = [
    "OBSERVED_CALLS",
    "Preview",
    "VisRecord",
    "VisualizationWarning",
    "VisualizationWatch",
    "is_patched",
    "log_previews",
    "watch_visualization",
]
