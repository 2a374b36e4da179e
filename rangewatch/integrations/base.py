"""What every library integration hands to the watcher: :class:`Expects`, :class:`Reading`, :class:`Watched`.

A library file (``lpips.py``, ``torchmetrics.py``, ...) recognises its objects by class name and
module of origin (``type(obj).__module__``), never by importing the library, and returns a
:class:`Watched` saying which method to observe (``forward`` through a pre-hook, or a metric's
``update``) and how to read one call: :meth:`Watched.read` takes the call's ``args``/``kwargs`` and
returns a :class:`Reading` (the image tensors of that call and what *this call* expects, e.g. LPIPS
``forward(a, b, normalize=True)`` expects [0,1]), or ``None`` when the call cannot be judged.
``read`` runs on every call, so it only looks at Python values (flags, shapes), never at tensor data.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class

__all__ = ["Expects", "Reading", "Watched", "span_conventions", "module_of", "bind"]


@dataclass(frozen=True)
class Expects:
    """What one call expects.

    ``accepts``: the convention names that are right for it (``("symmetric",)`` for LPIPS without
    ``normalize``; every convention whose span equals a PSNR's ``data_range``); ``label`` says it in
    the library's words; ``source`` names the object and option it comes from; ``fix`` turns the
    observed convention name into the fix in the library's own terms.
    """

    accepts: tuple[str, ...]
    label: str
    source: str
    fix: Callable[[str], str] = field(compare=False, hash=False)

    @property
    def key(self) -> tuple[tuple[str, ...], str]:
        return (self.accepts, self.label)


@dataclass(frozen=True)
class Reading:
    """One call: ``tensors`` as ``(argument name, tensor or numpy array, channel dim)`` and what it expects."""

    expects: Expects
    tensors: tuple[tuple[str, Any, int | None], ...]


@dataclass
class Watched:
    """A recognised object: ``method`` is ``"forward"`` (a forward pre-hook) or ``"update"`` (the
    metric's ``update``, which ``metric(preds, target)`` reaches too); ``read(args, kwargs)``."""

    library: str
    what: str  # e.g. "lpips.LPIPS(net='alex')"
    method: Literal["forward", "update"]
    read: Callable[[tuple, dict], Reading | None]
    name: str = ""  # its path in the watched root ("" for the root itself)
    note: str = ""  # why it is watched but never judged (e.g. a custom FID feature extractor)


def module_of(obj: Any) -> str:
    """The module a class comes from (``"lpips.lpips"``); never imports anything."""
    return getattr(user_class(obj), "__module__", "") or ""


def bind(fn: Callable, args: tuple, kwargs: dict, skip_self: bool = False) -> dict[str, Any] | None:
    """``{parameter: value}`` of a call of ``fn`` (defaults filled in), or None when it does not bind."""
    try:
        sig = _signature(fn)
        if skip_self:
            args = (None, *args)
        b = sig.bind(*args, **kwargs)
        b.apply_defaults()
        return dict(b.arguments)
    except (TypeError, ValueError):
        return None


_SIGNATURES: dict[Any, inspect.Signature] = {}


def _signature(fn: Callable) -> inspect.Signature:
    key = getattr(fn, "__func__", fn)
    sig = _SIGNATURES.get(key)
    if sig is None:
        sig = _SIGNATURES[key] = inspect.signature(key)
    return sig


# uniform-span pixel conventions (every channel spans the same width): what a PSNR/SSIM data_range can name
_SPANS = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0), "uint8": (0.0, 255.0), "float255": (0.0, 255.0)}


def span_conventions(data_range: Any) -> tuple[tuple[str, ...], tuple[float, float] | None]:
    """Conventions a PSNR/SSIM ``data_range`` fits: a number is a span (1.0: [0,1]; 2.0: [-1,1];
    255: 0..255), a tuple ``(min, max)`` is a range the metric clamps to. Unusual values fit none
    (the call is then not judged). Returns (names, the clamping range or None)."""
    if isinstance(data_range, torch.Tensor):
        if data_range.device.type != "cpu" or data_range.numel() != 1:
            return (), None  # reading it would sync: not judged
        data_range = float(data_range)
    if isinstance(data_range, (tuple, list)) and len(data_range) == 2:
        lo, hi = float(data_range[0]), float(data_range[1])
        names = tuple(n for n, (a, b) in _SPANS.items() if abs(a - lo) < 1e-6 and abs(b - hi) < 1e-6)
        return names, (lo, hi)
    if isinstance(data_range, (int, float)) and not isinstance(data_range, bool):
        v = float(data_range)
        return tuple(n for n, (a, b) in _SPANS.items() if abs((b - a) - v) <= 1e-3 * max(v, 1.0)), None
    return (), None


def data_range_fix(call: str, observed: str, clamp: tuple[float, float] | None) -> str:
    """The fix for a PSNR/SSIM whose data_range does not fit the data (``call`` names the object)."""
    want = {"unit": "1.0", "symmetric": "2.0", "uint8": "255", "float255": "255.0"}
    if observed in want:
        if clamp is not None:
            lo, hi = _SPANS[observed]
            return f"pass data_range=({lo:g}, {hi:g}) to {call} (the tuple clamps the data to it)"
        alt = " (or map the data with (x + 1) / 2 before the call and keep data_range=1.0)" if observed == "symmetric" else ""
        return f"pass data_range={want[observed]} to {call}{alt}"
    return f"{conversion_fix(observed, 'unit', call)}, and pass data_range=1.0 (PSNR/SSIM of normalised data has no fixed peak)"
