"""torchmetrics image metrics: LPIPS, FID / KID / Inception Score, PSNR / SSIM (and their functional forms).

=============================================  ==============================================================
metric                                         what ``update`` expects (torchmetrics docs and source)
=============================================  ==============================================================
``LearnedPerceptualImagePatchSimilarity``      [-1,1]; ``normalize=True``: [0,1] (``image/lpip.py``; it raises on
                                               values outside them, but [0,1] data passes the [-1,1] check)
``FrechetInceptionDistance``,                  uint8 0..255; ``normalize=True``: float [0,1], turned into
``KernelInceptionDistance``, ``InceptionScore``  ``(imgs * 255).byte()`` (negative values wrap around). With a
                                               custom ``feature`` module the images go to it as they are:
                                               not judged
``PeakSignalNoiseRatio``,                      ``data_range`` is the data's span: 1.0 for [0,1], 2.0 for [-1,1],
``StructuralSimilarityIndexMeasure``           255 for 0..255; a tuple ``(min, max)`` clamps to it; ``None``
(``MultiScale...`` too)                        (SSIM) measures it from the data: not judged
``functional.peak_signal_noise_ratio``,        the same, from the call's ``data_range``
``functional.structural_similarity_index_measure``
=============================================  ==============================================================

A metric is observed through its ``update`` (an instance attribute wrapping the class's own), which
both ``metric.update(preds, target)`` and ``metric(preds, target)`` (``forward`` -> ``update``) reach;
the wrapper only reads the arguments and calls the original with them unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class
from .base import Expects, Reading, Watched, bind, data_range_fix, module_of, span_conventions
from .lpips import lpips_expects

__all__ = ["recognise", "FUNCTIONS"]

_INCEPTION = ("FrechetInceptionDistance", "KernelInceptionDistance", "InceptionScore")
_RANGED = ("PeakSignalNoiseRatio", "StructuralSimilarityIndexMeasure", "MultiScaleStructuralSimilarityIndexMeasure")


def _inception_expects(cls: str, normalize: bool) -> Expects:
    call = f"{cls}(normalize={normalize})"
    if normalize:
        def fix(observed: str) -> str:
            if observed == "symmetric":
                return f"apply (x + 1) / 2 before {cls}.update: with normalize=True it computes (x * 255).byte(), and negative values wrap around"
            if observed == "uint8":
                return f"construct {cls}(normalize=False) for uint8 images (normalize=True multiplies them by 255 again)"
            return conversion_fix(observed, "unit", cls)

        return Expects(("unit",), "float [0,1] (normalize=True)", f"torchmetrics {call}", fix)

    def fix(observed: str) -> str:
        if observed == "unit":
            return f"construct {cls}(normalize=True) (it takes float [0,1] and converts to uint8 itself), or pass (x * 255).to(torch.uint8)"
        if observed == "symmetric":
            return f"apply (x + 1) / 2 and construct {cls}(normalize=True), or pass ((x + 1) * 127.5).to(torch.uint8)"
        return conversion_fix(observed, "uint8", cls)

    return Expects(("uint8",), "uint8 0..255 (normalize=False)", f"torchmetrics {call}", fix)


def _data_range_of(m: nn.Module) -> Any:
    """A metric's data_range as given to its constructor (read once, at attach: PSNR keeps it in a state tensor)."""
    clamp = getattr(m, "clamping_fn", None)
    kw = getattr(clamp, "keywords", None)
    if isinstance(kw, dict) and "min" in kw and "max" in kw:
        return (float(kw["min"]), float(kw["max"]))
    dr = getattr(m, "data_range", None)
    try:
        import torch

        if isinstance(dr, torch.Tensor):
            return float(dr.detach().cpu()) if dr.numel() == 1 else None
    except Exception:  # noqa: BLE001
        return None
    return dr


def _ranged_expects(call: str, data_range: Any) -> Expects | None:
    accepts, clamp = span_conventions(data_range)
    if not accepts:
        return None
    label = f"data_range={data_range!r}: {'/'.join(accepts)} data"
    return Expects(accepts, label, f"torchmetrics {call}(data_range={data_range!r})", lambda o: data_range_fix(call, o, clamp))


def recognise(m: nn.Module) -> Watched | None:
    """torchmetrics LPIPS, FID/KID/IS, PSNR/SSIM metric objects; None for anything else."""
    if not module_of(m).startswith("torchmetrics"):
        return None
    cls = user_class(m).__name__
    if cls == "LearnedPerceptualImagePatchSimilarity":
        normalize = bool(getattr(m, "normalize", False))
        exp = lpips_expects(normalize, cls, f"construct {cls}(normalize=True)", f"construct {cls}(normalize=False)")
        return Watched("torchmetrics", f"{cls}(normalize={normalize})", "update",
                       lambda a, k: _pair(m, a, k, exp, ("img1", "img2")))
    if cls in _INCEPTION:
        normalize = bool(getattr(m, "normalize", False))
        if getattr(m, "used_custom_model", False):
            return Watched("torchmetrics", f"{cls}(custom feature)", "update", lambda a, k: None,
                           note=f"{cls} with a custom feature extractor: the images go to it as they are; not judged")
        exp = _inception_expects(cls, normalize)
        return Watched("torchmetrics", f"{cls}(normalize={normalize})", "update", lambda a, k: _pair(m, a, k, exp, ("imgs",)))
    if cls in _RANGED:
        dr = _data_range_of(m)
        exp = _ranged_expects(cls, dr)
        if exp is None:
            return Watched("torchmetrics", f"{cls}(data_range={dr!r})", "update", lambda a, k: None,
                           note=f"{cls}(data_range={dr!r}): no fixed convention to hold the data to; not judged")
        return Watched("torchmetrics", f"{cls}(data_range={dr!r})", "update", lambda a, k: _pair(m, a, k, exp, ("preds", "target")))
    return None


def _pair(m: nn.Module, args: tuple, kwargs: dict, exp: Expects, names: tuple[str, ...]) -> Reading | None:
    update = getattr(user_class(m), "update", None)
    b = bind(update, args, kwargs, skip_self=True) if update is not None else None
    if b is None:
        return None
    return Reading(exp, tuple((n, b.get(n), 1) for n in names))


def _read_ranged(fn: str):
    def read(original: Any, args: tuple, kwargs: dict) -> Reading | None:
        b = bind(original, args, kwargs)
        if b is None:
            return None
        exp = _ranged_expects(fn, b.get("data_range"))
        if exp is None:
            return None
        return Reading(exp, (("preds", b.get("preds"), 1), ("target", b.get("target"), 1)))

    return read


#: functions observed where they are referenced: (defining module, name, reader)
FUNCTIONS = (
    ("torchmetrics.functional.image.psnr", "peak_signal_noise_ratio", _read_ranged("peak_signal_noise_ratio")),
    ("torchmetrics.functional.image.ssim", "structural_similarity_index_measure", _read_ranged("structural_similarity_index_measure")),
)
