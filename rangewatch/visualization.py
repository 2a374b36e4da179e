"""Clipping at visualisation: the public names of :mod:`rangewatch.previews` (see its docstring),
importable from here as they always were."""

from __future__ import annotations

from .previews import *  # noqa: F403
from .previews import __all__  # noqa: F401
