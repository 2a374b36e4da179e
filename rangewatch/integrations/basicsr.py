"""basicsr (XPixelGroup/BasicSR): ``PerceptualLoss`` / ``VGGFeatureExtractor`` and ``calculate_psnr`` / ``calculate_ssim``.

``basicsr/archs/vgg_arch.py``, ``VGGFeatureExtractor.forward``::

    if self.range_norm:
        x = (x + 1) / 2
    if self.use_input_norm:
        x = (x - self.mean) / self.std      # ImageNet mean/std, "for image with range [0, 1]"

so the input is [-1,1] with ``range_norm=True``, [0,1] with ``use_input_norm=True`` (the default),
and already ImageNet-normalised with both off (the trunk has torchvision's ImageNet VGG weights).
``PerceptualLoss(layer_weights, vgg_type, use_input_norm, range_norm, ...)`` (``basicsr/losses/basic_loss.py``)
passes both of its images through such an extractor (``self.vgg``); it is judged at its own call,
with the fix naming its options. CodeFormer's copy of basicsr (``basicsr/losses/losses.py``) has an
``LPIPSLoss(use_input_norm=True, range_norm=False)`` that applies the same two options before its
``lpips.LPIPS`` (``self.perceptual``): it is judged by those options, and the LPIPS inside it (which
then sees ImageNet-normalised input, as CodeFormer publishes it) is not judged again.

``basicsr/metrics/psnr_ssim.py``: ``calculate_psnr(img, img2, crop_border, input_order='HWC', ...)``
and ``calculate_ssim`` take "images with range [0, 255]" (numpy, the output of ``tensor2img``):
``10 * log10(255 ** 2 / mse)``. A [0,1] float image there reads about 48 dB too high.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class
from .base import Expects, Reading, Watched, bind, module_of

__all__ = ["recognise", "FUNCTIONS", "vgg_expects"]


def vgg_expects(use_input_norm: bool, range_norm: bool, call: str) -> Expects:
    """What a basicsr VGG extractor built with these options takes, and the fix in its options."""
    opts = f"use_input_norm={use_input_norm}, range_norm={range_norm}"
    if range_norm:
        accepts, label = "symmetric", f"[-1,1] ({opts}: mapped to [0,1] by (x + 1) / 2 first)"
    elif use_input_norm:
        accepts, label = "unit", f"[0,1] ({opts}: ImageNet mean/std applied inside)"
    else:
        accepts, label = "imagenet", f"ImageNet mean/std ({opts}: the ImageNet VGG sees x as is)"

    def fix(observed: str) -> str:
        if observed == "symmetric" and use_input_norm:
            return f"construct {call} with range_norm=True (it maps [-1,1] to [0,1] itself), or apply (x + 1) / 2 before the call"
        if observed == "unit" and range_norm:
            return f"construct {call} with range_norm=False: the input is already [0,1]"
        if observed == "unit" and not use_input_norm:
            return f"construct {call} with use_input_norm=True (it applies ImageNet mean/std itself)"
        if observed == "symmetric" and not use_input_norm:
            return f"construct {call} with use_input_norm=True, range_norm=True"
        if observed == "imagenet" and use_input_norm:
            return f"construct {call} with use_input_norm=False{', range_norm=False' if range_norm else ''}: the input is already ImageNet-normalised"
        return conversion_fix(observed, accepts, call)

    return Expects((accepts,), label, f"basicsr {call}({opts})", fix)


def recognise(m: nn.Module) -> Watched | None:
    """basicsr ``PerceptualLoss`` and ``VGGFeatureExtractor``; None for anything else."""
    if not module_of(m).startswith("basicsr"):
        return None
    name = user_class(m).__name__
    if name == "PerceptualLoss":
        vgg = getattr(m, "vgg", None)
        if vgg is None or type(vgg).__name__ != "VGGFeatureExtractor":
            return None
        args_ = ("x", "gt")
    elif name == "VGGFeatureExtractor":
        vgg, args_ = m, ("x",)
    elif name == "LPIPSLoss" and hasattr(m, "use_input_norm") and type(getattr(m, "perceptual", None)).__name__ == "LPIPS":
        vgg, args_ = m, ("pred", "target")  # CodeFormer's basicsr: the same options in front of lpips.LPIPS
    else:
        return None
    exp = vgg_expects(bool(getattr(vgg, "use_input_norm", True)), bool(getattr(vgg, "range_norm", False)), name)
    forward = user_class(m).forward

    def read(args: tuple, kwargs: dict) -> Reading | None:
        b = bind(forward, args, kwargs, skip_self=True)
        if b is None:
            return None
        return Reading(exp, tuple((a, b.get(a), 1) for a in args_))

    return Watched("basicsr", f"basicsr {name}", "forward", read)


def _hwc(img: Any, order: str) -> int | None:
    """Channel dim of a basicsr metric image (numpy HWC or CHW, or 2-D gray)."""
    nd = getattr(img, "ndim", 0)
    if nd == 3:
        return 2 if order == "HWC" else 0
    return None


def _metric_expects(fn: str) -> Expects:
    def fix(observed: str) -> str:
        if observed == "unit":
            return f"{fn} takes 0-255 images: pass tensor2img(x) (uint8 0..255) or x * 255, not [0,1] floats"
        if observed == "symmetric":
            return f"{fn} takes 0-255 images: pass tensor2img(x, min_max=(-1, 1)), or (x + 1) * 127.5"
        return conversion_fix(observed, "float255", fn)

    return Expects(("uint8", "float255"), "0..255 (the output of tensor2img)", f"basicsr {fn}: 'Images with range [0, 255]'", fix)


def _read_metric(fn: str):
    exp = _metric_expects(fn)

    def read(original: Any, args: tuple, kwargs: dict) -> Reading | None:
        b = bind(original, args, kwargs)
        if b is None:
            return None
        order = str(b.get("input_order", "HWC"))
        return Reading(exp, tuple((a, b.get(a), _hwc(b.get(a), order)) for a in ("img", "img2")))

    return read


#: functions observed where they are referenced: (defining module, name, reader)
FUNCTIONS = (
    ("basicsr.metrics.psnr_ssim", "calculate_psnr", _read_metric("calculate_psnr")),
    ("basicsr.metrics.psnr_ssim", "calculate_ssim", _read_metric("calculate_ssim")),
)
