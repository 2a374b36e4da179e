"""The calls a visualisation watch observes and what each is about to do to its tensors.

:data:`SPECS` maps each observed call's name to a function that reads the call's bound arguments
and returns a :class:`Call`: the tensors it converts (as ``(N, C, H, W)``-like views, or ``(N, T, C, H, W)``
videos for ``add_video``), whether it
clamps them to a range, stretches them by min/max or takes them as they are, and how it quantises
to 0..255. A new observed call is a new entry here (and its patch target in
:mod:`rangewatch.previews.patching`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .text import fmt_num, fmt_pair

__all__ = ["OBSERVED_CALLS", "Call", "SPECS"]

#: the call names a watcher can observe
OBSERVED_CALLS = ("tensor2img", "tensor2img_fast", "make_grid", "save_image", "add_image", "add_images", "add_video")


@dataclass
class Call:
    """What one observed call is about to do to its tensors."""

    name: str
    items: list[torch.Tensor]  # tensors to measure, all with the channel axis at `channel_dim`
    channel_dim: int | None
    mode: str  # "clamp" (to `assumed`), "stretch" (min/max), "none" (taken as is)
    assumed: tuple[float, float] | None
    assumption: str  # human text: "the default min_max=(0, 1)"
    slug: str  # tag-safe text of the assumption: "min_max_0_1"
    quant: str = "round"  # how the call turns [0, 1] into 0..255: round | trunc | half_up
    scale_each: bool = False


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        return torch.from_numpy(x)  # zero-copy view of host memory
    return None


def _to_nchw_like(t: torch.Tensor) -> torch.Tensor:
    """4-D (N, C, H, W) view of a basicsr / torchvision style 2-D, 3-D or 4-D tensor."""
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[None]
    return t


def _spec_tensor2img(name: str, bound: inspect.BoundArguments) -> Call | None:
    tensor = bound.arguments["tensor"]
    tensors = tensor if isinstance(tensor, list) else [tensor]
    if not tensors or not all(isinstance(t, torch.Tensor) and 2 <= t.dim() <= 4 for t in tensors):
        return None
    mm = bound.arguments["min_max"]
    try:
        lo, hi = float(mm[0]), float(mm[1])
    except (TypeError, ValueError, IndexError):
        return None
    default = bound.signature.parameters["min_max"].default
    is_default = isinstance(default, tuple) and (lo, hi) == (float(default[0]), float(default[1]))
    text = ("the default " if is_default else "") + f"min_max={fmt_pair((lo, hi))}"
    return Call(
        name, [_to_nchw_like(t) for t in tensors], 1, "clamp", (lo, hi), text, f"min_max_{fmt_num(lo)}_{fmt_num(hi)}",
        quant="trunc" if name == "tensor2img_fast" else "round",
    )


def _grid_assumption(kw: dict[str, Any], default_unit: bool) -> tuple[str, tuple[float, float] | None, str, str, bool]:
    """(mode, assumed, text, slug, scale_each) for make_grid-style normalize/value_range kwargs."""
    normalize = kw.get("normalize", False) is True
    value_range = kw.get("value_range")
    scale_each = kw.get("scale_each", False) is True
    if normalize and value_range is not None:
        try:
            lo, hi = float(value_range[0]), float(value_range[1])
        except (TypeError, ValueError, IndexError):
            return "none", None, "", "", scale_each
        return "clamp", (lo, hi), f"normalize=True, value_range={fmt_pair((lo, hi))}", f"value_range_{fmt_num(lo)}_{fmt_num(hi)}", scale_each
    if normalize:
        each = " (scale_each=True: per image)" if scale_each else ""
        return "stretch", None, f"normalize=True without value_range (min/max stretch{each})", "minmax_stretch", scale_each
    if default_unit:
        return "clamp", (0.0, 1.0), "x * 255 clamped to 0..255", "unit_0_1", scale_each
    return "none", None, "normalize=False (values passed through)", "as_is", scale_each


def _spec_grid(name: str, bound: inspect.BoundArguments) -> Call | None:
    tensor = bound.arguments["tensor"]
    tensors = tensor if isinstance(tensor, list) else [tensor]
    if not tensors or not all(isinstance(t, torch.Tensor) and 2 <= t.dim() <= 4 for t in tensors):
        return None
    kw = dict(bound.arguments)
    kw.update(kw.pop("kwargs", {}) or {})
    mode, assumed, text, slug, each = _grid_assumption(kw, default_unit=(name == "save_image"))
    if not text:
        return None
    return Call(name, [_to_nchw_like(t) for t in tensors], 1, mode, assumed, text, slug,
                 quant="half_up" if name == "save_image" else "round", scale_each=each)


def _spec_add_image(name: str, bound: inspect.BoundArguments) -> Call | None:
    t = _as_tensor(bound.arguments["img_tensor"])
    if t is None or t.is_complex():
        return None
    fmt = str(bound.arguments.get("dataformats") or ("NCHW" if name == "add_images" else "CHW")).upper()
    if len(fmt) != t.dim():
        return None
    # one (N, ..., C, ...) view: a leading N axis for single images
    if "N" not in fmt:
        t, fmt = t[None], "N" + fmt
    cd = fmt.index("C") if "C" in fmt else None
    if cd is None:
        t, cd = t.unsqueeze(1), 1  # (N, 1, H, W)
    if t.dtype == torch.uint8:
        return Call(name, [t], cd, "none", None, "uint8 taken as is (0..255)", "uint8_as_is")
    return Call(name, [t], cd, "clamp", (0.0, 1.0), "a float tensor: x * 255 clipped to 0..255", "unit_0_1", quant="trunc")


def _spec_add_video(name: str, bound: inspect.BoundArguments) -> Call | None:
    """TensorBoard's ``SummaryWriter.add_video(tag, vid_tensor)``: ``(N, T, C, H, W)``; a float video is
    multiplied by 255 and clipped to 0..255, then cast to uint8 (a [0, 1] assumption), a uint8 one taken as
    is (pytorch/pytorch torch/utils/tensorboard/summary.py ``video`` and ``_calc_scale_factor``,
    _utils.py ``_prepare_video``)."""
    t = _as_tensor(bound.arguments["vid_tensor"])
    if t is None or t.is_complex() or t.dim() != 5:
        return None  # add_video raises on anything but 5-D itself
    if t.dtype == torch.uint8:
        return Call(name, [t], 2, "none", None, "uint8 taken as is (0..255)", "uint8_as_is")
    return Call(name, [t], 2, "clamp", (0.0, 1.0), "a float video: x * 255 clipped to 0..255", "unit_0_1", quant="trunc")


SPECS: dict[str, Callable[[str, inspect.BoundArguments], Call | None]] = {
    "tensor2img": _spec_tensor2img,
    "tensor2img_fast": _spec_tensor2img,
    "make_grid": _spec_grid,
    "save_image": _spec_grid,
    "add_image": _spec_add_image,
    "add_images": _spec_add_image,
    "add_video": _spec_add_video,
}

