"""Compatibility shims for third-party libraries rangewatch observes.

basicsr 1.4.2 (the latest release) does ``from torchvision.transforms.functional_tensor import
rgb_to_grayscale`` in ``basicsr/data/degradations.py``. torchvision 0.17 removed that private
module, so ``import basicsr`` fails with ``No module named 'torchvision.transforms.functional_tensor'``
(XPixelGroup/BasicSR #533). The public ``torchvision.transforms.functional`` has the same
function, so registering it under the old name in :data:`sys.modules` makes basicsr import.

:func:`enable_basicsr_compat` does exactly that and nothing else: it never edits installed
files and only adds the alias when the real module is missing. It is explicit (rangewatch does
not run it on ``import rangewatch``); :class:`rangewatch.visualization.VisualizationWatch` calls
it before it imports basicsr to observe ``tensor2img``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

__all__ = ["enable_basicsr_compat", "import_basicsr", "basicsr_available", "FUNCTIONAL_TENSOR"]

#: the module name basicsr 1.4.2 imports and torchvision >= 0.17 no longer has
FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"

_LOCK = threading.Lock()


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def enable_basicsr_compat() -> bool:
    """Make ``torchvision.transforms.functional_tensor`` importable on current torchvision.

    If that module is neither imported nor importable, register
    ``torchvision.transforms.functional`` under its name in :data:`sys.modules` (and as the
    attribute ``functional_tensor`` of ``torchvision.transforms``). Installed files are never
    touched; on old torchvision, where the module exists, nothing is done.

    Idempotent and thread-safe. Returns ``True`` only when this call added the alias.

    Raises :class:`ImportError` if torchvision itself is not installed.
    """
    with _LOCK:
        if FUNCTIONAL_TENSOR in sys.modules:
            return False
        import torchvision.transforms  # noqa: F401  (also makes find_spec of the submodule cheap)

        if _module_exists(FUNCTIONAL_TENSOR):
            return False
        import torchvision.transforms.functional as functional

        sys.modules[FUNCTIONAL_TENSOR] = functional
        transforms = sys.modules["torchvision.transforms"]
        if not hasattr(transforms, "functional_tensor"):
            transforms.functional_tensor = functional  # type: ignore[attr-defined]
        return True


def basicsr_available() -> bool:
    """Whether basicsr is installed (does not import it). ``sys.modules["basicsr"] = None``
    (Python's way to block an import) counts as absent."""
    if "basicsr" in sys.modules:
        return sys.modules["basicsr"] is not None
    return _module_exists("basicsr")


def import_basicsr() -> ModuleType:
    """Import basicsr after :func:`enable_basicsr_compat` and return the package.

    Raises :class:`ImportError` with an explanation when basicsr is not installed or still
    fails to import.
    """
    mod = sys.modules.get("basicsr")
    if mod is not None:
        return mod
    if not basicsr_available():
        raise ImportError(
            "basicsr is not installed; `pip install basicsr` (1.4.2 needs "
            "rangewatch.compat.basicsr.enable_basicsr_compat() to import with torchvision >= 0.17)"
        )
    enable_basicsr_compat()
    try:
        return importlib.import_module("basicsr")
    except ImportError as exc:
        raise ImportError(
            f"basicsr is installed but failed to import even with the torchvision compatibility alias "
            f"({FUNCTIONAL_TENSOR} -> torchvision.transforms.functional): {exc}"
        ) from exc
