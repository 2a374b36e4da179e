"""torchvision classifiers used as frozen feature extractors (perceptual losses, feature matching).

torchvision's ImageNet weights take ``ToTensor()`` [0,1] images normalised with ImageNet mean/std
(``torchvision/transforms/_presets.py``, ``ImageClassification``: mean 0.485/0.456/0.406, std
0.229/0.224/0.225). A classifier class from ``torchvision.models`` whose parameters are all frozen
(``requires_grad=False``) is a pretrained feature extractor, and is held to that convention.

A classifier that is being trained (any parameter requires grad) is *not* judged: trained from
scratch it has no expectation at all, and fine-tuned on ImageNet-normalised data it already gets
what it expects; rangewatch cannot tell a fine-tune on the wrong range from a fresh model, and a
false alarm on correct training code costs more than the missed warning. Slices such as
``vgg16(...).features[:16]`` are plain ``nn.Sequential`` and are not recognised (declare them with
``RangeWatch(expect={"vgg_slice": "imagenet"})``).
"""

from __future__ import annotations

from torch import nn

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class
from .base import Expects, Reading, Watched, module_of

__all__ = ["recognise"]

# classifier classes of torchvision.models (feature-extractor use); detection/segmentation models are not
_CLASSIFIERS = {
    "AlexNet", "VGG", "ResNet", "SqueezeNet", "DenseNet", "Inception3", "GoogLeNet", "MobileNetV2", "MobileNetV3",
    "EfficientNet", "RegNet", "ConvNeXt", "VisionTransformer", "SwinTransformer", "MaxVit", "ShuffleNetV2", "MNASNet",
}


def recognise(m: nn.Module) -> Watched | None:
    """A frozen torchvision classifier; None for anything else (a trainable one is not judged)."""
    if not module_of(m).startswith("torchvision.models") or user_class(m).__name__ not in _CLASSIFIERS:
        return None
    params = list(m.parameters())
    if not params or any(p.requires_grad for p in params):
        return None
    call = f"torchvision {user_class(m).__name__}"
    exp = Expects(("imagenet",), "ImageNet mean/std", f"frozen {call} (torchvision ImageNet weights: ImageNet mean/std on [0,1])",
                  lambda observed: conversion_fix(observed, "imagenet", call))

    def read(args: tuple, kwargs: dict) -> Reading | None:
        x = args[0] if args else kwargs.get("x")
        return Reading(exp, (("x", x, 1),))

    return Watched("torchvision", f"{call} (frozen)", "forward", read)
