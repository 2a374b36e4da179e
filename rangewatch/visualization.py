"""Clipping at visualisation: observe the calls that turn tensors into images, flag the ones that
silently clamp a meaningful share of values, and make corrected previews.

The calls observed (their results are never changed):

=========================================  ==================================================
call                                       range it assumes
=========================================  ==================================================
basicsr ``tensor2img`` / ``tensor2img_fast``  ``min_max`` (default ``(0, 1)``): clamps, then maps to [0, 1]
torchvision ``utils.save_image``            [0, 1] (``mul(255).add_(0.5).clamp_(0, 255)``), or the
                                           ``make_grid`` normalisation it is given
torchvision ``utils.make_grid``             nothing unless ``normalize=True``; with ``value_range``
                                           it clamps to it, without it stretches by min/max
                                           (which hides the data's real range: a ``note``)
TensorBoard ``SummaryWriter.add_image(s)``  floats: [0, 1] (``x * 255`` clipped); uint8 as is
=========================================  ==================================================

(``SummaryWriter`` is ``torch.utils.tensorboard``'s, which is what Lightning's
``TensorBoardLogger.experiment`` is; tensorboardX's is observed too when it is already imported.)

For each call the tensor's statistics come from one device-side :class:`~rangewatch.stats.RangeStats`
``detail=True`` update (bounds = the assumed range) and one small host transfer of those
statistics; the convention the data really follows comes from
:func:`~rangewatch.inference.infer_convention`. A ``Finding(kind="clipping")`` is made when at
least ``threshold`` of the values are clamped (NaN: ``kind="nonfinite"``, "this will be a black
image"). Identical findings are reported once per watcher.

Usage::

    with watch_visualization() as watch:          # anywhere
        img = tensor2img(out)                     # basicsr, default min_max=(0, 1)
    watch.findings                                # [Finding(kind="clipping", ...)]
    log_previews(writer, watch, step=global_step)  # broken | corrected side by side

or, from a callback::

    watch = VisualizationWatch(on_finding=report)
    watch.start(); ...; watch.stop()
    log_previews(trainer.logger.experiment, watch, step=trainer.global_step)

Patching is global and scoped: the first active watcher replaces the functions where they are
referenced (module attributes whose value is the original function, in every imported module,
e.g. ``basicsr.utils.tensor2img`` and ``basicsr.models.sr_model.tensor2img``; class attributes
for ``SummaryWriter``); the last one to stop puts every original back, also after exceptions
(and also in modules that imported a patched name while the watch was on). A lock and the list
of active watchers act as the reference count. **Nesting**: every active watcher sees every call
(inner and outer both get the record and the finding); statistics are computed once per call.
Calls made from inside an observed call (``save_image`` -> ``make_grid``, ``tensor2img`` ->
``make_grid``) are not observed a second time.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import sys
import threading
import warnings
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .conventions import Convention, get_convention
from .findings import Finding, first_seen, internal_finding, nonfinite_finding, note_finding
from .inference import Inference, infer_convention
from .sinks import write_histogram
from .stats import RangeStats, RangeSummary

__all__ = [
    "OBSERVED_CALLS",
    "Preview",
    "VisRecord",
    "VisualizationWarning",
    "VisualizationWatch",
    "log_previews",
    "watch_visualization",
]

#: the call names a watcher can observe
OBSERVED_CALLS = ("tensor2img", "tensor2img_fast", "make_grid", "save_image", "add_image", "add_images")


class VisualizationWarning(UserWarning):
    """Warning issued for a visualisation finding when a watcher has no ``on_finding`` callable."""


# ============================================================================ call specifications
@dataclass
class _Call:
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


def _num(v: float) -> str:
    v = float(v)
    if math.isfinite(v) and v == round(v):
        return str(int(round(v)))
    return f"{v:.4g}"


def _pair(p: Sequence[float]) -> str:
    return f"({_num(p[0])}, {_num(p[1])})"


def _pct(f: float) -> str:
    return f"{100 * f:.1f}%" if f >= 0.01 or f == 0 else f"{100 * f:.2g}%"


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


def _spec_tensor2img(name: str, bound: inspect.BoundArguments) -> _Call | None:
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
    text = ("the default " if is_default else "") + f"min_max={_pair((lo, hi))}"
    return _Call(
        name, [_to_nchw_like(t) for t in tensors], 1, "clamp", (lo, hi), text, f"min_max_{_num(lo)}_{_num(hi)}",
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
        return "clamp", (lo, hi), f"normalize=True, value_range={_pair((lo, hi))}", f"value_range_{_num(lo)}_{_num(hi)}", scale_each
    if normalize:
        each = " (scale_each=True: per image)" if scale_each else ""
        return "stretch", None, f"normalize=True without value_range (min/max stretch{each})", "minmax_stretch", scale_each
    if default_unit:
        return "clamp", (0.0, 1.0), "x * 255 clamped to 0..255", "unit_0_1", scale_each
    return "none", None, "normalize=False (values passed through)", "as_is", scale_each


def _spec_grid(name: str, bound: inspect.BoundArguments) -> _Call | None:
    tensor = bound.arguments["tensor"]
    tensors = tensor if isinstance(tensor, list) else [tensor]
    if not tensors or not all(isinstance(t, torch.Tensor) and 2 <= t.dim() <= 4 for t in tensors):
        return None
    kw = dict(bound.arguments)
    kw.update(kw.pop("kwargs", {}) or {})
    mode, assumed, text, slug, each = _grid_assumption(kw, default_unit=(name == "save_image"))
    if not text:
        return None
    return _Call(name, [_to_nchw_like(t) for t in tensors], 1, mode, assumed, text, slug,
                 quant="half_up" if name == "save_image" else "round", scale_each=each)


def _spec_add_image(name: str, bound: inspect.BoundArguments) -> _Call | None:
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
        return _Call(name, [t], cd, "none", None, "uint8 taken as is (0..255)", "uint8_as_is")
    return _Call(name, [t], cd, "clamp", (0.0, 1.0), "a float tensor: x * 255 clipped to 0..255", "unit_0_1", quant="trunc")


_SPECS: dict[str, Callable[[str, inspect.BoundArguments], _Call | None]] = {
    "tensor2img": _spec_tensor2img,
    "tensor2img_fast": _spec_tensor2img,
    "make_grid": _spec_grid,
    "save_image": _spec_grid,
    "add_image": _spec_add_image,
    "add_images": _spec_add_image,
}


# ============================================================================ records and previews
@dataclass
class VisRecord:
    """One observed call, as one watcher saw it.

    ``below_fraction`` / ``above_fraction``: share of all values the call clamps below / above
    its assumed range (0 when it does not clamp); ``inference``: the convention the data follows
    (``None`` when the call takes the data as is and nothing was measured).
    """

    call: str
    where: str
    assumption: str
    mode: str
    assumed_range: tuple[float, float] | None
    below_fraction: float = 0.0
    above_fraction: float = 0.0
    nan_fraction: float = 0.0
    count: int = 0
    inference: Inference | None = None
    summary: RangeSummary | None = field(default=None, repr=False)
    flagged: bool = False  # crossed the threshold (also when its finding was a duplicate)
    findings: tuple[Finding, ...] = ()  # new findings this call produced
    message: str = ""
    step: int | None = None
    preview: "Preview | None" = field(default=None, repr=False)

    @property
    def clamped_fraction(self) -> float:
        return self.below_fraction + self.above_fraction

    @property
    def convention(self) -> str | None:
        return None if self.inference is None else self.inference.name


class Preview:
    """The first images of a flagged call site, kept (on their device) to draw "what the call
    produced" next to "the same data shown with the convention it really follows".

    ``images`` are ``(C, H, W)`` tensors; ``build()`` makes the side-by-side grid (one row per
    image: left broken, right corrected) with torchvision's original ``make_grid`` (padding 2,
    white padding) as a ``(3, H, W)`` uint8 tensor.
    """

    PADDING = 2
    PAD_VALUE = 255

    def __init__(self, record: VisRecord, call: _Call, slug: str, max_images: int, hist_bins: int):
        self.record = record
        self.call = call.name
        self.where = record.where
        self.site = ""  # "file.py:line" of the call
        self.slug = slug
        self.mode = call.mode
        self.assumed = call.assumed
        self.assumption = call.assumption
        self.assumption_slug = call.slug
        self.quant = call.quant
        self.scale_each = call.scale_each
        self.max_images = max_images
        inf = record.inference
        self.convention: Convention | None = inf.convention if inf is not None else None
        self.convention_name = inf.name if inf is not None and inf.convention is not None else "minmax"
        s = record.summary
        self.data_min = float(s.range_min.min()) if s is not None else 0.0
        self.data_max = float(s.range_max.max()) if s is not None else 1.0
        self.images: list[torch.Tensor] = []
        self.stretch: list[tuple[float, float]] = []  # per image: what a min/max stretch used
        self.findings: list[Finding] = list(record.findings)
        self.hist: RangeStats | None = None
        self.hist_bins = hist_bins

    @property
    def full(self) -> bool:
        return len(self.images) >= self.max_images

    # ---------------------------------------------------------------- collecting
    def _add(self, call: _Call, summary: RangeSummary | None) -> None:
        """Keep the first images of ``call`` (device-side clones) and add the call's values to the
        histogram (device-side)."""
        if self.full:
            return
        grid_lo = float(summary.min.min()) if summary is not None else 0.0
        grid_hi = float(summary.max.max()) if summary is not None else 1.0
        for t in call.items:
            cd = call.channel_dim
            imgs = torch.movedim(t, cd, 1) if cd not in (None, 1) else t
            for img in imgs:
                if self.full:
                    break
                if self.images and img.shape != self.images[0].shape:
                    continue
                img = img.detach().clone()
                self.images.append(img)
                self.stretch.append((grid_lo, grid_hi))
        if self.hist_bins and summary is not None:
            self._add_hist(call, summary)

    def _add_hist(self, call: _Call, summary: RangeSummary) -> None:
        if self.hist is None:
            lo, hi = self.data_min, self.data_max
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return
            if self.assumed is not None:
                lo, hi = min(lo, self.assumed[0]), max(hi, self.assumed[1])
            pad = max(hi - lo, 1e-6) * 0.01
            bounds = None if self.assumed is None else ((self.assumed[0],), (self.assumed[1],))
            self.hist = RangeStats(channel_dim=call.channel_dim, bounds=bounds, hist_bins=self.hist_bins,
                                   hist_range=(lo - pad, hi + pad), sync_on_compute=False)  # local: see _measure
        try:
            for t in call.items:
                self.hist.update(t, detail=True)
        except ValueError:  # another channel count than the first call's
            pass

    # ---------------------------------------------------------------- drawing
    @staticmethod
    def _quantize(u: torch.Tensor, quant: str) -> torch.Tensor:
        u = torch.nan_to_num(u.float(), nan=0.0)
        if quant == "trunc":
            v = (u * 255).clamp(0, 255).floor()
        elif quant == "half_up":
            v = (u * 255 + 0.5).clamp(0, 255).floor()
        else:
            v = (u * 255).round().clamp(0, 255)
        return v.to(torch.uint8)

    @staticmethod
    def _rgb(img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c == 3:
            return img
        if c == 4:
            return img[:3]
        return img[:1].expand(3, -1, -1)

    def broken(self, i: int) -> torch.Tensor:
        """Image ``i`` as the call showed it: ``(C, H, W)`` uint8."""
        x = self.images[i].detach().float().cpu()
        if self.mode == "clamp" and self.assumed is not None:
            lo, hi = self.assumed
            u = (x.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)
        elif self.mode == "stretch":
            lo, hi = (float(x.min()), float(x.max())) if self.scale_each else self.stretch[i]
            u = (x.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)
        else:
            u = x / 255 if self.images[i].dtype == torch.uint8 else x
        return self._quantize(u, self.quant)

    def corrected(self, i: int) -> torch.Tensor:
        """Image ``i`` mapped to display with the inferred convention: ``(C, H, W)`` uint8."""
        x = self.images[i].detach().cpu()
        if self.convention is not None:
            u = self.convention.to_display(x, channel_dim=0)
        else:
            lo, hi = self.data_min, self.data_max
            u = ((x.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        return self._quantize(u, "round")

    def build(self) -> torch.Tensor:
        """``(3, H, W)`` uint8 grid: one row per image, broken left, corrected right."""
        if not self.images:
            raise ValueError("this preview holds no images")
        panels = []
        for i in range(len(self.images)):
            panels += [self._rgb(self.broken(i)), self._rgb(self.corrected(i))]
        with _suppressed():
            return _original_make_grid()(torch.stack(panels), nrow=2, padding=self.PADDING, pad_value=self.PAD_VALUE)

    #: panels narrower than this are enlarged (nearest neighbour, integer factor) so the labels fit
    LABEL_MIN_WIDTH = 280
    LABEL_LINES = 3

    def labels(self) -> tuple[str, str]:
        """The two panel captions: what the call did, and the mapping the right panel uses."""
        left = f"as logged: {self.call} {self.assumption}"
        conv = self.convention
        if conv is not None and conv.kind == "pixel":
            lo, hi = conv.bounds(3)
            same = len(set(lo)) == 1 and len(set(hi)) == 1
            rng = f"min_max=({lo[0]:g}, {hi[0]:g})" if same else conv.label
            right = f"corrected: {rng}" if self.call == "tensor2img" and same else f"corrected: read as {self.convention_name} ({conv.label})"
        else:
            right = f"corrected: min..max of the data ({self.data_min:.3g}, {self.data_max:.3g})"
        return left, right

    @staticmethod
    def label_scale(width: int) -> int:
        """The enlargement factor :meth:`build_labelled` uses for panels ``width`` pixels wide."""
        return max(1, min(8, -(-Preview.LABEL_MIN_WIDTH // max(1, width))))

    @classmethod
    def label_font_size(cls, width: int) -> int:
        """Font size of the labels over panels ``width`` pixels wide (before enlargement): a twelfth of
        the enlarged panel, so the text stays legible when TensorBoard shrinks the image to its card."""
        return max(13, width * cls.label_scale(width) // 12)

    @classmethod
    def label_height(cls, width: int) -> int:
        """Height of the label strip over panels ``width`` pixels wide."""
        return cls.LABEL_LINES * (cls.label_font_size(width) + 5) + 6

    def build_labelled(self) -> torch.Tensor:
        """:meth:`build` enlarged by :meth:`label_scale` (nearest neighbour) under a white strip of
        :meth:`label_height` pixels naming each column ("as logged: tensor2img the default
        min_max=(0, 1)" | "corrected: min_max=(-1, 1)"); :meth:`unlabel` gives :meth:`build` back."""
        import numpy as np
        from PIL import Image, ImageDraw, ImageFont

        grid = self.build()
        width = int(self.images[0].shape[-1])
        k = self.label_scale(width)
        big = grid.repeat_interleave(k, 1).repeat_interleave(k, 2)
        h, w = big.shape[1:]
        size = self.label_font_size(width)
        strip = Image.new("RGB", (w, self.label_height(width)), "white")
        draw = ImageDraw.Draw(strip)
        font = ImageFont.load_default(size=size)
        col = w // 2
        for i, (text, colour) in enumerate(zip(self.labels(), ((170, 30, 30), (20, 110, 40)))):
            lines = [""]
            for wd in text.split(" "):  # wrap to the column width
                cand = (lines[-1] + " " + wd).strip()
                if draw.textlength(cand, font=font) <= col - 12 or not lines[-1]:
                    lines[-1] = cand
                else:
                    lines.append(wd)
            if len(lines) > self.LABEL_LINES:
                lines = lines[: self.LABEL_LINES - 1] + [" ".join(lines[self.LABEL_LINES - 1:])]
            for j, line in enumerate(lines):
                draw.text((i * col + 6, 4 + (size + 5) * j), line, fill=colour, font=font)
        top = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
        return torch.cat([top, big], 1)

    @classmethod
    def unlabel(cls, image: Any, panel_width: int) -> Any:
        """The plain :meth:`build` grid inside a :meth:`build_labelled` image (an ``(H, W, 3)`` array
        as decoded from the PNG, or a ``(3, H, W)`` tensor) whose panels are ``panel_width`` wide."""
        k, top = cls.label_scale(panel_width), cls.label_height(panel_width)
        if isinstance(image, torch.Tensor):
            return image[:, top::k, ::k]
        return image[top::k, ::k]

    @property
    def image_tag(self) -> str:
        return f"{self.slug}/broken_{self.assumption_slug}-vs-corrected_{self.convention_name}"

    def text(self) -> str:
        rec = self.record
        lines = [
            f"**{rec.message or rec.where}**",
            "",
            f"- call: `{self.call}` at {self.where}",
            f"- range the call assumes: {self.assumption}",
            f"- clamped: {_pct(rec.below_fraction)} below, {_pct(rec.above_fraction)} above; NaN {_pct(rec.nan_fraction)}",
            f"- data: {rec.inference}" if rec.inference is not None else "- data: not measured",
            f"- preview: left as the call shows it, right as `{self.convention_name}` "
            f"({self.convention.label if self.convention else 'min/max of the data'})",
        ]
        for f in self.findings:
            lines.append(f"- finding: {f}")
        return "\n".join(lines)


# ============================================================================ global patching
_LOCK = threading.RLock()
_ACTIVE: list["VisualizationWatch"] = []
_TLS = threading.local()
_WRAPPERS: dict[int, Callable] = {}  # id(original) -> wrapper (reused across start/stop cycles)
_KEEP: list[Callable] = []  # keeps originals alive so their ids stay unique
# installed patches: ("func", original, wrapper, [(dict, key), ...]) or ("attr", cls, name, original, wrapper)
_INSTALLED: list[tuple] = []
_SIGNATURES: dict[int, inspect.Signature] = {}


def _unwrap(fn: Any) -> Any:
    while fn is not None and hasattr(fn, "_rangewatch_original"):
        fn = fn._rangewatch_original
    return fn


def _original_make_grid() -> Callable:
    import torchvision.utils

    return _unwrap(torchvision.utils.make_grid)


@contextmanager
def _suppressed() -> Iterator[None]:
    """Calls made inside are not observed (rangewatch's own previews, nested library calls)."""
    _TLS.depth = getattr(_TLS, "depth", 0) + 1
    try:
        yield
    finally:
        _TLS.depth -= 1


def _caller(frame: Any) -> tuple[str, str]:
    """(function name, "file.py:line") of the frame that made the observed call."""
    if frame is None:
        return "unknown", "?"
    return frame.f_code.co_name, f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _make_wrapper(name: str, original: Callable) -> Callable:
    key = id(original)
    if key in _WRAPPERS:
        return _WRAPPERS[key]

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _ACTIVE or getattr(_TLS, "depth", 0):
            return original(*args, **kwargs)
        _TLS.depth = getattr(_TLS, "depth", 0) + 1
        try:
            try:
                _observe(name, original, args, kwargs, sys._getframe(1))
            except Exception as exc:  # rangewatch must never break the user's call
                _internal_error(name, exc)
            return original(*args, **kwargs)
        finally:
            _TLS.depth -= 1

    wrapper._rangewatch_original = original  # type: ignore[attr-defined]
    wrapper._rangewatch_call = name  # type: ignore[attr-defined]
    _WRAPPERS[key] = wrapper
    _KEEP.append(original)
    return wrapper


def _module_dicts() -> list[dict]:
    out = []
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None) if mod is not None else None
        if isinstance(d, dict):
            out.append(d)
    return out


def _replace_everywhere(swap: dict[int, tuple[Any, Any]]) -> dict[int, list[tuple[dict, str]]]:
    """One pass over every imported module: each attribute whose value *is* an ``old`` of
    ``swap`` (``{id(old): (old, new)}``) becomes its ``new``. Returns where, per id(old)."""
    done: dict[int, list[tuple[dict, str]]] = {k: [] for k in swap}
    if not swap:
        return done
    for d in _module_dicts():
        try:
            hits = [(k, id(v)) for k, v in list(d.items()) if id(v) in swap]
        except RuntimeError:  # a module being imported right now changed its dict; try once more
            hits = [(k, id(v)) for k, v in list(d.copy().items()) if id(v) in swap]
        for k, i in hits:
            old, new = swap[i]
            if d.get(k) is old:
                d[k] = new
                done[i].append((d, k))
    return done


def _function_targets(want_basicsr: bool) -> list[tuple[str, str, str]]:
    """(call name, module, attribute) of the module-level functions to patch."""
    out = []
    try:
        import torchvision.utils  # noqa: F401

        out += [("make_grid", "torchvision.utils", "make_grid"), ("save_image", "torchvision.utils", "save_image")]
    except ImportError:
        pass
    if want_basicsr:
        out += [("tensor2img", "basicsr.utils.img_util", "tensor2img"),
                ("tensor2img_fast", "basicsr.utils.img_util", "tensor2img_fast")]
    return out


def _writer_classes() -> list[type]:
    classes = []
    try:
        from torch.utils.tensorboard.writer import SummaryWriter

        classes.append(SummaryWriter)
    except ImportError:
        pass
    tbx = sys.modules.get("tensorboardX")
    if tbx is not None and isinstance(getattr(tbx, "SummaryWriter", None), type):
        classes.append(tbx.SummaryWriter)
    return classes


def _load_basicsr(mode: bool | None) -> bool:
    """Import basicsr's img_util if wanted (None: when installed). Returns whether it is there."""
    if mode is False:
        return False
    if "basicsr.utils.img_util" in sys.modules:
        return True
    from .compat import basicsr_available, import_basicsr

    if mode is None and not basicsr_available():
        return False
    try:
        import_basicsr()
        import basicsr.utils.img_util  # noqa: F401
    except ImportError:
        if mode is True:
            raise
        return False
    return True


def _install(want_basicsr: bool) -> None:
    """Patch every target not patched yet (idempotent). Caller holds _LOCK."""
    funcs = {id(p[1]): p for p in _INSTALLED if p[0] == "func"}
    attrs = {(id(p[1]), p[2]) for p in _INSTALLED if p[0] == "attr"}
    try:
        swap: dict[int, tuple[Any, Any]] = {}
        for call, modname, attr in _function_targets(want_basicsr):
            mod = sys.modules.get(modname)
            fn = _unwrap(getattr(mod, attr, None)) if mod is not None else None
            if fn is None or not callable(fn):
                continue
            if id(fn) not in funcs:
                entry = ("func", fn, _make_wrapper(call, fn), [])
                _INSTALLED.append(entry)
                funcs[id(fn)] = entry
            # also when already patched: modules imported since then hold the original
            swap[id(fn)] = (fn, funcs[id(fn)][2])
        for i, where in _replace_everywhere(swap).items():
            funcs[i][3].extend(where)
        for cls in _writer_classes():
            for call in ("add_image", "add_images"):
                fn = cls.__dict__.get(call)
                if (id(cls), call) in attrs or fn is None:
                    continue
                fn = _unwrap(fn)
                wrapper = _make_wrapper(call, fn)
                setattr(cls, call, wrapper)
                _INSTALLED.append(("attr", cls, call, fn, wrapper))
    except BaseException:
        _uninstall()
        raise


def _uninstall() -> None:
    """Put every original back. Caller holds _LOCK."""
    swap: dict[int, tuple[Any, Any]] = {}
    while _INSTALLED:
        entry = _INSTALLED.pop()
        if entry[0] == "func":
            _, fn, wrapper, where = entry
            for d, k in where:
                if d.get(k) is wrapper:
                    d[k] = fn
            swap[id(wrapper)] = (wrapper, fn)
        else:
            _, cls, call, fn, wrapper = entry
            if cls.__dict__.get(call) is wrapper:
                setattr(cls, call, fn)
    _replace_everywhere(swap)  # modules that imported a patched name while the watch was on


def is_patched() -> bool:
    """Whether rangewatch's visualisation patches are installed right now."""
    with _LOCK:
        return bool(_INSTALLED)


def _internal_error(name: str, exc: BaseException) -> None:
    f = internal_finding(
        f"visualisation watch of `{name}`", exc,
        evidence="rangewatch failed while measuring this call; the call itself ran unchanged",
    )
    for w in list(_ACTIVE):
        try:
            w._emit(f)
        except Exception:  # an on_finding callable that fails must not break the user's call either
            pass


def _signature(fn: Callable) -> inspect.Signature:
    key = id(fn)
    if key not in _SIGNATURES:
        _SIGNATURES[key] = inspect.signature(fn)
    return _SIGNATURES[key]


# ============================================================================ measuring one call
@dataclass
class _Observation:
    call: _Call
    func: str
    site: str
    summary: RangeSummary | None = None
    inference: Inference | None = None
    below: float = 0.0
    above: float = 0.0
    nan: float = 0.0
    count: int = 0


def _measure(call: _Call) -> tuple[RangeSummary | None, int]:
    """The call's statistics, on this process only: preview calls happen on some ranks only (rank 0's
    ``logger.experiment.add_image`` while the others hold Lightning's DummyExperiment), so a
    cross-process sync here (RangeStats' default ``compute()`` under torch.distributed) would wait forever."""
    if call.mode == "none":
        return None, 0
    bounds = None if call.assumed is None else ((call.assumed[0],), (call.assumed[1],))
    st = RangeStats(channel_dim=call.channel_dim, bounds=bounds, sync_on_compute=False)
    try:
        for t in call.items:
            st.update(t, detail=True)
    except ValueError:  # items with different channel counts: measure them as one channel
        st = RangeStats(channel_dim=None, bounds=bounds, sync_on_compute=False)
        for t in call.items:
            st.update(t, detail=True)
    s = st.compute()  # one small host transfer of per-channel statistics
    return s, int(s.detail_count.sum())


def _observe(name: str, original: Callable, args: tuple, kwargs: dict, frame: Any) -> None:
    watchers = [w for w in list(_ACTIVE) if w._wants(name)]
    if not watchers:
        return
    func, site = _caller(frame)
    if any(w.gate is not None for w in watchers):  # before any measuring: a gated watcher may not want this call
        key, filename = f"{name}|{func}|{site}", frame.f_code.co_filename if frame is not None else ""
        watchers = [w for w in watchers if w.gate is None or w.gate(key, filename)]
        if not watchers:
            return
    try:
        bound = _signature(original).bind(*args, **kwargs)
    except TypeError:
        return  # the call itself will raise
    bound.apply_defaults()
    call = _SPECS[name](name, bound)
    if call is None:
        return
    obs = _Observation(call, func, site)
    s, n = _measure(call)
    if s is not None and n > 0:
        obs.summary, obs.count = s, n
        obs.below = float(s.below.sum()) / n
        obs.above = float(s.above.sum()) / n
        obs.nan = float(s.nan.sum()) / n
        obs.inference = infer_convention(s)
    for w in watchers:
        w._record(obs)


# ============================================================================ the watcher
def _fix_expr(conv: Convention, channels: int) -> tuple[str, tuple[float, float] | None]:
    """("(x + 1) / 2", (-1, 1)) for a convention with the same bounds on every channel;
    ("x * std + mean", None) for per-channel mean/std."""
    lo, hi = conv.bounds(channels)
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        lo0, hi0 = lo[0], hi[0]
        if lo0 == 0 and hi0 == 1:
            return "x", (0.0, 1.0)
        if lo0 == -1 and hi0 == 1:
            return "(x + 1) / 2", (-1.0, 1.0)
        if lo0 == 0:
            return f"x / {_num(hi0)}", (0.0, hi0)
        return f"(x - {_num(lo0)}) / {_num(hi0 - lo0)}", (lo0, hi0)
    return "x * std + mean", None


def _fix(call: str, conv: Convention | None, inf: Inference | None, channels: int) -> str:
    if conv is None:
        lo, hi = (min(inf.channel_min), max(inf.channel_max)) if inf is not None and inf.channel_min else (None, None)
        if lo is None:
            return f"map the data to [0, 1] before `{call}`"
        rng = _pair((math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100))
        if call.startswith("tensor2img"):
            return f"the data spans {rng} and fits no known convention: pass `min_max={rng}` or map it to [0, 1] first"
        return f"the data spans {rng} and fits no known convention: map it to [0, 1] before `{call}`"
    expr, bounds = _fix_expr(conv, channels)
    per_channel = ""
    if bounds is None:
        m = ", ".join(f"{v:.4g}" for v in conv.mean_for(channels))
        s = ", ".join(f"{v:.4g}" for v in conv.std_for(channels))
        per_channel = f" with mean = torch.tensor([{m}]).view(-1, 1, 1), std = torch.tensor([{s}]).view(-1, 1, 1)"
    if call.startswith("tensor2img"):
        if bounds is not None:
            return f"call `{call}(x, min_max={_pair(bounds)})`"
        return f"undo the normalisation first: `{call}(x * std + mean)`{per_channel}"
    if call == "save_image":
        alt = f" or `save_image(x, ..., normalize=True, value_range={_pair(bounds)})`" if bounds is not None else ""
        return f"call `save_image({expr}, ...)`{alt}{per_channel}"
    if call == "make_grid":
        if bounds is not None:
            return f"pass `make_grid(x, normalize=True, value_range={_pair(bounds)})`"
        return f"call `make_grid({expr})`{per_channel}"
    alt = " (or `x.round().clamp(0, 255).to(torch.uint8)`)" if bounds is not None and bounds[1] == 255 else ""
    if call in ("add_image", "add_images") and bounds is not None and bounds != (0.0, 1.0) and not alt:
        # TensorBoard takes float images as [0, 1]: map them, or let make_grid do it with the real range
        alt = f", or build the grid with `make_grid(x, normalize=True, value_range={_pair(bounds)})`"
    return f"pass `{expr}` to `{call}`{alt}{per_channel}"


#: share of clamped values above which clamping is never read as overshoot (data in another convention
#: clamp 30-50%: [-1, 1] data through a [0, 1] call lose every dark pixel)
_OVERSHOOT_MAX = 0.2


def _same_range(conv: Convention | None, assumed: tuple[float, float] | None, channels: int) -> bool:
    if conv is None or assumed is None:
        return False
    lo, hi = conv.bounds(channels)
    tol = 1e-3 * (assumed[1] - assumed[0])
    return all(abs(l - assumed[0]) <= tol for l in lo) and all(abs(h - assumed[1]) <= tol for h in hi)


class VisualizationWatch:
    """Observes image-conversion calls while started; see the module docstring.

    Args:
        threshold: share of values (0..1) a call must clamp to make a ``clipping`` finding.
        max_preview_images: images kept per flagged call site for :func:`log_previews`.
        logger: a ``SummaryWriter`` or Lightning ``TensorBoardLogger``; when given, :meth:`stop`
            logs the pending previews to it (at :attr:`step`).
        context: how findings name the calls, e.g. ``"validation preview"``.
        on_finding: called with each new :class:`Finding`; without it a
            :class:`VisualizationWarning` is issued (``warn=False`` silences that).
        overshoot_threshold: when the data already follows the assumed range (a model output in
            [0, 1] that overshoots a little), clamping is what the call is for: only a share
            above this makes an ``info`` finding.
        previews: keep images of flagged calls for previews (device-side clones of at most
            ``max_preview_images`` images per call site until :meth:`pop_previews`).
        hist_bins: bins of the per-channel preview histogram (0: none).
        basicsr: observe basicsr's ``tensor2img``: ``None`` when installed (it is imported, with
            :func:`rangewatch.compat.enable_basicsr_compat`), ``True`` required, ``False`` never.
        calls: names (from :data:`OBSERVED_CALLS`) to observe; default all.
        max_records: records kept until :meth:`pop_records` (oldest dropped first).
        step: the step stamped on findings; the callback keeps it up to date.
        gate: ``gate(call_site, filename) -> bool``, asked before a call is measured (``call_site``
            is ``"<call>|<function>|<file>:<line>"``, ``filename`` the caller's full path): False
            skips the call for this watcher at no cost. The callback judges previews at check
            steps and at the first call of each call site this way.
    """

    def __init__(
        self,
        threshold: float = 0.005,
        max_preview_images: int = 4,
        logger: Any = None,
        *,
        context: str = "preview",
        on_finding: Callable[[Finding], Any] | None = None,
        warn: bool = True,
        overshoot_threshold: float = 0.05,
        previews: bool = True,
        hist_bins: int = 64,
        basicsr: bool | None = None,
        calls: Iterable[str] | None = None,
        max_records: int = 1000,
        step: int | None = None,
        gate: Callable[[str, str], bool] | None = None,
    ) -> None:
        if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be a share of values in [0, 1], got {threshold!r}")
        if not (isinstance(max_preview_images, int) and max_preview_images >= 0):
            raise ValueError(f"max_preview_images must be a non-negative int, got {max_preview_images!r}")
        wanted = tuple(OBSERVED_CALLS if calls is None else calls)
        unknown = [c for c in wanted if c not in OBSERVED_CALLS]
        if unknown:
            raise ValueError(f"unknown call name(s) {unknown}; observable calls: {', '.join(OBSERVED_CALLS)}")
        self.threshold = float(threshold)
        self.overshoot_threshold = float(overshoot_threshold)
        self.max_preview_images = max_preview_images
        self.logger = logger
        self.context = context
        self.on_finding = on_finding
        self.warn = warn
        self.keep_previews = previews and max_preview_images > 0
        self.hist_bins = hist_bins
        self.basicsr = basicsr
        self.calls = frozenset(wanted)
        self.step = step
        self.gate = gate
        self.findings: list[Finding] = []
        self._records: deque[VisRecord] = deque(maxlen=max_records)
        self._new_findings: list[Finding] = []
        self._seen: set[tuple] = set()
        self._previews: dict[str, Preview] = {}  # call site -> preview being filled
        self._done_previews: list[Preview] = []
        self._depth = 0
        self._lock = threading.RLock()
        self._clean_calls: set[tuple] = set()  # (function, call, range) that clamped nothing: the range is right there

    # ---------------------------------------------------------------- lifecycle
    @property
    def active(self) -> bool:
        return self._depth > 0

    def start(self) -> "VisualizationWatch":
        """Start observing (re-entrant: each ``start`` needs its ``stop``)."""
        with _LOCK:
            if self._depth == 0:
                want_basicsr = bool(self.calls & {"tensor2img", "tensor2img_fast"}) and _load_basicsr(self.basicsr)
                _install(want_basicsr)
                _ACTIVE.append(self)
            self._depth += 1
        return self

    def stop(self) -> None:
        """Stop observing; the last active watcher restores every patched function. With a
        ``logger``, pending previews are logged."""
        with _LOCK:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth:
                return
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            if not _ACTIVE:
                _uninstall()
        if self.logger is not None:
            try:
                self.log_previews(self.logger, step=self.step)
            except Exception as exc:  # never mask what happened inside the block
                warnings.warn(f"rangewatch could not log visualisation previews: {type(exc).__name__}: {exc}",
                              VisualizationWarning, stacklevel=2)

    def __enter__(self) -> "VisualizationWatch":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- results
    @property
    def records(self) -> list[VisRecord]:
        """Records of the calls seen since the last :meth:`pop_records` (at most ``max_records``)."""
        with self._lock:
            return list(self._records)

    def pop_records(self) -> list[VisRecord]:
        """Records since the last pop (previews stay attached to them); call sites start new previews."""
        with self._lock:
            out = list(self._records)
            self._records.clear()
            self._done_previews.extend(self._previews.values())
            self._previews.clear()
            return out

    def pop_findings(self) -> list[Finding]:
        """New findings since the last pop (``findings`` keeps all of them)."""
        with self._lock:
            out, self._new_findings = self._new_findings, []
            return out

    def pop_previews(self) -> list[Preview]:
        """Previews (with images) not yet popped; call sites start new ones afterwards."""
        with self._lock:
            out = [p for p in self._done_previews + list(self._previews.values()) if p.images]
            self._done_previews = []
            self._previews.clear()
            return out

    def log_previews(self, experiment: Any, step: int | None = None, tag_prefix: str = "rangewatch/preview") -> list[str]:
        """:func:`log_previews` of this watcher's pending previews."""
        return log_previews(experiment, self, step=self.step if step is None else step, tag_prefix=tag_prefix)

    def reset(self) -> None:
        """Forget findings (they will be reported again), records and previews."""
        with self._lock:
            self.findings.clear()
            self._new_findings.clear()
            self._seen.clear()
            self._records.clear()
            self._previews.clear()
            self._done_previews.clear()

    # ---------------------------------------------------------------- internals
    def _wants(self, name: str) -> bool:
        return name in self.calls

    def _emit(self, f: Finding) -> bool:
        with self._lock:
            if not first_seen([f], self._seen):
                return False
            self.findings.append(f)
            self._new_findings.append(f)
        if self.on_finding is not None:
            self.on_finding(f)
        elif self.warn:
            warnings.warn(str(f), VisualizationWarning, stacklevel=4)
        return True

    def _record(self, obs: _Observation) -> None:
        call = obs.call
        where = f"{self.context} `{call.name}` ({obs.func}, {obs.site})"
        rec = VisRecord(
            call=call.name, where=where, assumption=call.assumption, mode=call.mode, assumed_range=call.assumed,
            below_fraction=obs.below, above_fraction=obs.above, nan_fraction=obs.nan, count=obs.count,
            inference=obs.inference, summary=obs.summary, step=self.step,
        )
        candidates, rec.message = self._judge(obs, where)
        rec.flagged = bool(candidates)
        with self._lock:
            self._records.append(rec)
        new = [f for f in candidates if self._emit(f)]
        rec.findings = tuple(new)
        with self._lock:
            if rec.flagged and self.keep_previews and obs.summary is not None:
                key = f"{call.name}|{obs.func}|{obs.site}"
                p = self._previews.get(key)
                if p is None:
                    slug = _tag_safe(f"{call.name}_in_{obs.func}")
                    p = self._previews[key] = Preview(rec, call, slug, self.max_preview_images, self.hist_bins)
                    p.site = obs.site
                if not p.full:
                    p._add(call, obs.summary)
                    p.findings.extend([f for f in new if f not in p.findings])
                    rec.preview = p
            if new:
                _remember(new, rec)

    def _overshoot(self, obs: _Observation, conv: Convention | None, inf: Inference | None, frac: float,
                   channels: int, sibling: tuple) -> bool:
        """Whether clamped values are a model output overshooting a correct range rather than data in
        another convention: most values inside, the range a pixel convention's (or a sibling call's
        that clamps nothing), and no confident verdict for a convention with another range."""
        if frac > _OVERSHOOT_MAX:
            return False
        if inf is not None and inf.confident and conv is not None:
            return False  # the data confidently follow a convention with another range
        assumed = obs.call.assumed
        known = any(_same_range(get_convention(n), assumed, channels) for n in ("unit", "symmetric", "float255"))
        return known or sibling in self._clean_calls

    def _judge(self, obs: _Observation, where: str) -> tuple[list[Finding], str]:
        """Findings for one call (before de-duplication) and a one-line message."""
        call, inf, s = obs.call, obs.inference, obs.summary
        out: list[Finding] = []
        if s is None or obs.count == 0:
            return out, ""
        conv = inf.convention if inf is not None else None
        channels = s.channels
        looks = f"the data looks like {conv.label} ({conv.name})" if conv is not None else (
            f"the data spans {_num(float(s.range_min.min()))}..{_num(float(s.range_max.max()))} and fits no known convention"
        )
        observed = conv.name if conv is not None else "unknown"  # a convention name, like every Finding.observed
        fix = _fix(call.name, conv, inf, channels)
        nan_count = int(round(float(s.nan.sum())))
        if nan_count:
            black = "this will be a black image" if obs.nan >= 0.5 else f"{_pct(obs.nan)} of the pixels will be black"
            if call.mode == "stretch":
                black = "NaN makes the min/max stretch NaN: this will be a black image"
            out.append(nonfinite_finding(
                where, observed=f"NaN in {_pct(obs.nan)} of the values passed to `{call.name}`",
                evidence=f"`{call.name}` converts NaN to black: {black} ({nan_count} NaN values)",
                fix="find where NaN first appears (fp16 overflow? see rangewatch's nonfinite checks) before looking at previews",
                step=self.step,
            ))
        if call.mode == "stretch":
            expected_fix = (f"pass `value_range={_pair(_fix_expr(conv, channels)[1])}`"
                            if conv is not None and _fix_expr(conv, channels)[1] is not None else
                            "pass the data's real `value_range` (or map it to [0, 1] first)")
            hides = (f"`{call.name}` with normalize=True and no value_range stretches the images to their own min/max, "
                     f"which hides the data's real range; {looks}")
            out.append(note_finding(
                where, observed, expected=f"`{call.name}` with {call.assumption}",
                evidence=hides + (f": {inf.evidence}" if inf is not None else ""),
                fix=expected_fix + " so that the preview shows what the model produces",
                step=self.step,
            ))
            return out, f"{where}: {hides}; {expected_fix}"
        if call.mode != "clamp" or call.assumed is None:
            return out, (out[0].evidence if out else "")
        expected = f"values in [{_num(call.assumed[0])}, {_num(call.assumed[1])}]: `{call.name}` with {call.assumption}"
        frac = obs.below + obs.above
        matched = _same_range(conv, call.assumed, channels)
        limit = max(self.threshold, self.overshoot_threshold) if matched else self.threshold
        sibling = (obs.func, call.name, tuple(call.assumed))
        if frac < limit or frac <= 0:
            if frac < self.threshold:
                self._clean_calls.add(sibling)  # this range is right for the data of this function
            return out, (out[0].evidence if out else "")
        lo, hi = call.assumed
        if not matched and self._overshoot(obs, conv, inf, frac, channels, sibling):
            # the call's range is right (a pixel convention's, or a sibling call's in the same function
            # that clamps nothing), the bulk of the data is inside it: a young model overshooting
            why = ("another call in the same function with the same range clamps nothing" if sibling in self._clean_calls
                   else f"[{_num(lo)}, {_num(hi)}] is a pixel convention's range")
            evidence = (f"`{call.name}` clamps {_pct(frac)} of the values (the data span "
                        f"{_num(float(s.range_min.min()))}..{_num(float(s.range_max.max()))}): the bulk lies inside the "
                        f"range the call assumes and {why}, so the output overshoots it (normal for a young model)")
            out.append(Finding(
                kind="clipping", where=where, observed="output overshooting the call's range", expected=expected,
                evidence=evidence, fix="the call is right: keep its range (widening it would show the overshoot as a "
                "washed-out preview); constrain the output (clamp, tanh) only if the overshoot is not intended",
                severity="info", step=self.step,
            ))
            return out, f"{where}: {evidence}"
        if obs.below >= self.threshold and obs.above >= self.threshold:
            to = f"{_pct(obs.below)} of values to black (below {_num(lo)}) and {_pct(obs.above)} to white (above {_num(hi)})"
        elif obs.below >= obs.above:
            to = f"{_pct(obs.below)} of values to black (below {_num(lo)})"
        else:
            to = f"{_pct(obs.above)} of values to white (above {_num(hi)})"
        if matched:
            evidence = (f"`{call.name}` clamps {to}: the data follows {conv.label} ({conv.name}), the range the call "
                        f"assumes, but overshoots it; {inf.evidence}")
            out.append(Finding(
                kind="clipping", where=where, observed=observed, expected=expected,
                evidence=evidence, fix="the call is right for this data; constrain the output (clamp, sigmoid, tanh) "
                "if the overshoot is not intended", severity="info", step=self.step,
            ))
            return out, f"{where}: {evidence}"
        message = f"{where} clamps {to}: {looks}; {fix}"
        evidence = f"`{call.name}` clamps {to}; {looks}" + (f": {inf.evidence}" if inf is not None else "")
        severity = "error" if inf is not None and inf.confident and frac >= 0.05 else "warning"
        out.append(Finding(kind="clipping", where=where, observed=observed, expected=expected,
                           evidence=evidence, fix=fix, severity=severity, step=self.step))
        return out, message


@contextmanager
def watch_visualization(
    threshold: float = 0.005, max_preview_images: int = 4, logger: Any = None, **kwargs: Any
) -> Iterator[VisualizationWatch]:
    """Observe image-conversion calls inside the ``with`` block; yields the
    :class:`VisualizationWatch` (``.findings``, ``.records``). Patches are restored on exit, also
    after an exception. Keyword arguments go to :class:`VisualizationWatch`."""
    watch = VisualizationWatch(threshold=threshold, max_preview_images=max_preview_images, logger=logger, **kwargs)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()


# ============================================================================ logging previews
_RECORD_OF_FINDING: dict[int, "weakref.ReferenceType[VisRecord]"] = {}
_TAG_BAD = re.compile(r"[^-/\w.]")


def _remember(findings: list[Finding], rec: VisRecord) -> None:
    if len(_RECORD_OF_FINDING) > 4096:  # drop entries whose record is gone
        for k in [k for k, r in _RECORD_OF_FINDING.items() if r() is None]:
            del _RECORD_OF_FINDING[k]
    _RECORD_OF_FINDING.update({id(f): weakref.ref(rec) for f in findings})


def _tag_safe(s: str) -> str:
    """TensorBoard-safe tag text: only letters, digits, ``_ - . /``."""
    return re.sub(r"_+", "_", _TAG_BAD.sub("_", s)).strip("_/") or "untitled"


def _previews_of(items: Any) -> list[Preview]:
    out: list[Preview] = []

    def add(p: Preview | None) -> None:
        if p is not None and p.images and all(p is not q for q in out):
            out.append(p)

    def visit(obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, VisualizationWatch):
            for p in obj.pop_previews():
                add(p)
        elif isinstance(obj, Preview):
            add(obj)
        elif isinstance(obj, VisRecord):
            add(obj.preview)
        elif isinstance(obj, Finding):
            ref = _RECORD_OF_FINDING.get(id(obj))
            rec = ref() if ref is not None else None
            if rec is not None and any(f is obj for f in rec.findings):
                add(rec.preview)
        elif isinstance(obj, (list, tuple, set, deque)) or inspect.isgenerator(obj):
            for o in obj:
                visit(o)
        else:
            raise TypeError(f"log_previews takes a VisualizationWatch, VisRecord, Preview or Finding (or a list), got {type(obj).__name__}")

    visit(items)
    return out


def _histogram(writer: Any, preview: Preview, prefix: str, step: int | None) -> list[str]:
    if preview.hist is None:
        return []
    s = preview.hist.compute()  # small host transfer of bin counts
    if s.hist is None or s.hist_edges is None:
        return []
    tags = []
    clamp = f"clamp_{_num(preview.assumed[0])}_{_num(preview.assumed[1])}" if preview.assumed else preview.assumption_slug
    for c in range(s.channels):
        tag = _tag_safe(f"{prefix}/{preview.slug}/histogram_{clamp}/c{c}")
        with _suppressed():
            if not write_histogram(writer, tag, s, c, step):
                continue
        tags.append(tag)
    return tags


def log_previews(
    experiment: Any, items: Any, step: int | None = None, tag_prefix: str = "rangewatch/preview"
) -> list[str]:
    """Write corrected previews to TensorBoard; returns the tags written.

    Args:
        experiment: a ``torch.utils.tensorboard.SummaryWriter`` (Lightning's
            ``TensorBoardLogger.experiment``) or the ``TensorBoardLogger`` itself.
        items: a :class:`VisualizationWatch` (its pending previews are popped), or
            :class:`VisRecord` / :class:`Finding` / :class:`Preview` objects or lists of them.
        step: the global step of the entries.

    For each preview (one per flagged call site): the side-by-side image (left: as the call shows
    it; right: mapped with the inferred convention) at
    ``<prefix>/<call>_in_<function>/broken_<assumption>-vs-corrected_<convention>``, a per-channel
    histogram of the call's values from :class:`RangeStats` bin counts at
    ``<prefix>/<call>_in_<function>/histogram_clamp_<lo>_<hi>/c<k>`` and a text entry at
    ``<prefix>/<call>_in_<function>/finding``.
    """
    writer = getattr(experiment, "experiment", experiment)
    if not hasattr(writer, "add_image"):
        raise TypeError(f"log_previews needs a TensorBoard SummaryWriter (or TensorBoardLogger), got {type(experiment).__name__}")
    prefix = tag_prefix.rstrip("/")
    tags: list[str] = []
    used: set[str] = set()
    for p in _previews_of(items):
        if p.slug in used:  # two call sites of one call in one function: tell them apart by line
            p.slug = _tag_safe(f"{p.slug}_line{p.site.rsplit(':', 1)[-1]}")
        used.add(p.slug)
        grid = p.build_labelled()
        tag = _tag_safe(f"{prefix}/{p.image_tag}")
        with _suppressed():
            writer.add_image(tag, grid, global_step=step, dataformats="CHW")
        tags.append(tag)
        if hasattr(writer, "add_histogram_raw"):
            tags += _histogram(writer, p, prefix, step)
        if hasattr(writer, "add_text"):
            ttag = _tag_safe(f"{prefix}/{p.slug}/finding")
            with _suppressed():
                writer.add_text(ttag, p.text(), global_step=step)
            tags.append(ttag)
    return tags
