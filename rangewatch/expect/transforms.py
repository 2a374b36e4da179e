"""Predict a dataset's pixel convention by reading its transform pipeline (:func:`predict_transform`).

The walk tracks one affine map per channel from display space ``u`` in [0, 1] to the tensor's
values, ``x = a * u + b``, plus whether the values are integers. It starts from a decoded 8-bit
image (PIL or uint8: ``x = 255 u``) and applies each step it recognises:

- ``ToTensor`` (v1/v2, timm/open_clip ``MaybeToTensor``): 8-bit -> ``unit``;
- ``PILToTensor`` / ``ToImage`` / ``ToNumpy``: no value change (still uint8);
- ``ToDtype(dtype, scale=...)`` (``dtype`` may be a dict keyed by ``tv_tensors.Image``), ``ConvertImageDtype``:
  integer <-> float with or without rescaling by the integer type's maximum;
- ``Normalize(mean, std)``: ``x -> (x - mean) / std``; several Normalize steps compose;
- ``ToPILImage``: float [0, 1] -> uint8;
- ``Compose`` (nested), ``RandomApply`` / ``RandomChoice`` / ``RandomOrder``: recursed into; a random step
  that would change the value range on only some samples makes the result ``"unknown"``;
- geometric and colour transforms of torchvision, timm and open_clip (resize, crops, flips, ColorJitter,
  RandAugment, ...): no change;
- ``transformers`` image processors (``do_rescale``/``rescale_factor``/``do_normalize``/``image_mean``/
  ``image_std``), processors holding one (``.image_processor``), diffusers ``VaeImageProcessor``;
- ``Lambda``, plain functions and classes it does not know: it cannot see what they do, so the
  convention becomes ``"unknown"`` and a note says which step hid it. A later ``ToTensor`` /
  ``PILToTensor`` / ``ToImage`` takes an image again, so the walk picks up from an 8-bit image (with a
  note saying it assumed so).

The final map is matched against the catalogue's pixel conventions (mean within 1e-4, std within a
relative 1e-4; constants rounded to three decimals match with a note); a map that matches nothing becomes
a custom :class:`~rangewatch.expect.conventions.Convention` with a deterministic, value-derived name (see
:func:`normalize_convention`), carried on the prediction and never registered (reading data writes nothing
to the process-wide catalogue), so a dataset and a model that use the same unusual constants get the same
name.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import torch

from .conventions import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Convention, get_convention, list_conventions
from .expectation import Expectation

__all__ = ["Prediction", "predict_transform", "predict_dataset", "convention_for_normalize", "normalize_convention"]

UNKNOWN = "unknown"

_MEAN_TOL = 1e-4  # absolute, on mean
_STD_RTOL = 1e-4  # relative, on std
_NEAR_MEAN_TOL = 2e-3  # constants rounded to 3 decimals (e.g. CLIP (0.481, 0.458, 0.408))
_NEAR_STD_RTOL = 5e-3
_MAX_DEPTH = 12

_INT_MAX = {
    torch.uint8: 255.0,
    torch.int8: 127.0,
    torch.int16: 32767.0,
    torch.int32: 2147483647.0,
    torch.int64: 9223372036854775807.0,
}
if hasattr(torch, "uint16"):
    _INT_MAX[torch.uint16] = 65535.0

_NAMED_CONSTANTS = {
    "IMAGENET_DEFAULT_MEAN": IMAGENET_MEAN,
    "IMAGENET_DEFAULT_STD": IMAGENET_STD,
    "OPENAI_CLIP_MEAN": CLIP_MEAN,
    "OPENAI_CLIP_STD": CLIP_STD,
}


# ---------------------------------------------------------------------------- public result
@dataclass
class Prediction:
    """What a transform pipeline hands the model.

    ``convention`` is a convention name or ``"unknown"``; ``conv`` the convention itself (a custom one for
    unusual Normalize constants is carried here, not registered); ``source`` says which steps decided it and where they sit; ``steps`` lists every step
    walked with its effect; ``notes`` holds assumptions and the reasons for ``"unknown"``.
    ``noise_share``: the largest share of one image's values that random-valued erasing
    (``RandomErasing(value="random")``, timm ``RandomErasing(mode="pixel"/"rand")``) replaces with
    N(0, 1) noise: values that may lie outside the convention's bounds without anything being wrong.
    """

    convention: str
    source: str
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    noise_share: float = 0.0
    #: the convention itself (None when unknown; resolved from the catalogue when only a name is given)
    conv: Convention | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.conv is None and self.convention != UNKNOWN:
            self.conv = get_convention(self.convention)

    @property
    def known(self) -> bool:
        return self.convention != UNKNOWN

    def expectation(self, target: str = "batch") -> Expectation | None:
        """The prediction as an :class:`Expectation` (origin ``"transform"``), or None when unknown."""
        if not self.known:
            return None
        return Expectation(self.conv or self.convention, source=self.source, origin="transform", target=target)  # type: ignore[arg-type]

    def __str__(self) -> str:
        s = f"{self.convention}: {self.source}"
        if self.notes:
            s += " (" + "; ".join(self.notes) + ")"
        return s


# ---------------------------------------------------------------------------- matching
def _fmt_num(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _fmt_values(values: Sequence[float]) -> str:
    if len(set(round(v, 6) for v in values)) == 1:
        return _fmt_num(values[0])
    return "[" + ", ".join(_fmt_num(v) for v in values) + "]"


def _const_name(values: Sequence[float], which: str) -> str:
    for name, const in _NAMED_CONSTANTS.items():
        if name.endswith(which) and len(values) == len(const) and all(abs(a - b) < _MEAN_TOL for a, b in zip(values, const)):
            return name
    return _fmt_values(values)


def _name_part(values: Sequence[float]) -> str:
    vals = values if len(set(round(v, 6) for v in values)) > 1 else values[:1]
    return "-".join(_fmt_num(v).replace("-", "n").replace(".", "p") for v in vals)


def _broadcast(a: Sequence[float], n: int) -> tuple[float, ...] | None:
    if len(a) == n:
        return tuple(a)
    if len(a) == 1:
        return tuple(a) * n
    return None


def _close(mean: Sequence[float], std: Sequence[float], cm: Sequence[float], cs: Sequence[float], mtol: float, srtol: float) -> bool:
    n = max(len(mean), len(std), len(cm), len(cs))
    vals = [_broadcast(v, n) for v in (mean, std, cm, cs)]
    if any(v is None for v in vals):
        return False
    m, s, m2, s2 = vals  # type: ignore[misc]
    return all(abs(x - y) <= mtol for x, y in zip(m, m2)) and all(abs(x - y) <= srtol * abs(y) for x, y in zip(s, s2))


def _match(mean: Sequence[float], std: Sequence[float], integer: bool = False) -> tuple[str | None, bool]:
    """(catalogue name, exact) for a mean/std; None when nothing matches even loosely."""
    candidates = [n for n in list_conventions("pixel") if get_convention(n).integer == integer]
    for tol in ((_MEAN_TOL, _STD_RTOL), (_NEAR_MEAN_TOL, _NEAR_STD_RTOL)):
        for name in candidates:
            c = get_convention(name)
            if _close(mean, std, c.mean, c.std, *tol):
                return name, tol[0] == _MEAN_TOL
    return None, False


def convention_for_normalize(
    mean: Sequence[float] | float, std: Sequence[float] | float, *, source: str, integer: bool = False
) -> tuple[str, str | None]:
    """The name of the convention for ``x = (u - mean) / std`` (u in [0, 1]): :func:`normalize_convention`'s
    name (``"unknown"`` when none) and note. Registers nothing."""
    conv, note = normalize_convention(mean, std, source=source, integer=integer)
    return (UNKNOWN if conv is None else conv.name), note


def normalize_convention(
    mean: Sequence[float] | float, std: Sequence[float] | float, *, source: str, integer: bool = False
) -> tuple[Convention | None, str | None]:
    """The convention for ``x = (u - mean) / std`` (u in [0, 1]): a catalogue entry, or a custom
    :class:`~rangewatch.expect.conventions.Convention` that is returned, not registered (reading data
    never writes to the process-wide catalogue); None when the map is no valid convention.

    Returns ``(convention, note)``; ``note`` says when the constants only matched after rounding or when a
    custom convention was made. Custom names are derived from the values (``norm_m0p1307_s0p3081``,
    per-channel values joined by ``-``, ``n`` for a minus sign), so the same constants always get the same
    name (a dataset and a model with the same constants compare equal).
    """
    m = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean]))  # type: ignore[union-attr]
    s = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std]))  # type: ignore[union-attr]
    if len(m) != len(s):
        n = max(len(m), len(s))
        m2, s2 = _broadcast(m, n), _broadcast(s, n)
        if m2 is None or s2 is None:
            raise ValueError(f"mean {m} and std {s} have different channel counts")
        m, s = m2, s2
    name, exact = _match(m, s, integer)
    if name is not None:
        c = get_convention(name)
        if exact:
            return c, None
        return c, f"mean={_fmt_values(m)}, std={_fmt_values(s)} match {name} (mean={_fmt_values(c.mean)}, std={_fmt_values(c.std)}) after rounding"
    if integer:
        return None, f"integer values with mean={_fmt_values(m)}, std={_fmt_values(s)} match no convention"
    if any(v <= 0 or not math.isfinite(v) for v in s) or not all(math.isfinite(v) for v in m):
        return None, f"the value map (mean={_fmt_values(m)}, std={_fmt_values(s)}) is not a valid convention"
    cname = f"norm_m{_name_part(m)}_s{_name_part(s)}"
    label = f"Normalize(mean={_fmt_values(m)}, std={_fmt_values(s)})"
    try:  # registered by the user under this name: theirs
        existing = get_convention(cname)
        if _close(m, s, existing.mean, existing.std, _MEAN_TOL, _STD_RTOL):
            return existing, f"custom convention {cname} ({label})"
    except KeyError:
        pass
    return Convention(cname, "pixel", label, source, mean=m, std=s), f"custom convention {cname} ({label}): matches nothing in the catalogue"


# ---------------------------------------------------------------------------- walk state
@dataclass(frozen=True)
class _State:
    a: tuple[float, ...] = (255.0,)  # x = a * u + b, per channel (1 value = all channels)
    b: tuple[float, ...] = (0.0,)
    integer: bool = True
    int_max: float = 255.0
    known: bool = True

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = max(len(self.a), len(self.b))
        a, b = _broadcast(self.a, n), _broadcast(self.b, n)
        assert a is not None and b is not None
        return tuple(-bi / ai for ai, bi in zip(a, b)), tuple(1.0 / ai for ai in a)

    def same(self, other: "_State") -> bool:
        if self.known != other.known:
            return False
        if not self.known:
            return True
        if self.integer != other.integer:
            return False
        m1, s1 = self.mean_std()
        m2, s2 = other.mean_std()
        return _close(m1, s1, m2, s2, 1e-6, 1e-6)

    def scaled(self, k: float) -> "_State":
        return replace(self, a=tuple(v * k for v in self.a), b=tuple(v * k for v in self.b))

    def describe(self) -> str:
        if not self.known:
            return "unknown"
        m, s = self.mean_std()
        name, exact = _match(m, s, self.integer)
        if name is not None and exact:
            return name
        n = max(len(self.a), len(self.b))
        a, b = _broadcast(self.a, n) or self.a, _broadcast(self.b, n) or self.b
        lo = [min(bi, ai + bi) for ai, bi in zip(a, b)]
        hi = [max(bi, ai + bi) for ai, bi in zip(a, b)]
        return f"[{_fmt_values(lo)}, {_fmt_values(hi)}]" + (" (integer)" if self.integer else "")


_IMAGE = _State()  # a decoded 8-bit image
_UNIT = _State(a=(1.0,), b=(0.0,), integer=False, int_max=1.0)
_OPAQUE = _State(known=False)


class _Walk:
    def __init__(self, where: str) -> None:
        self.where = where
        self.steps: list[str] = []
        self.notes: list[str] = []
        self.deciding: list[str] = []  # value-changing steps, for the source string
        self.noise_share = 0.0  # see Prediction.noise_share

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _cls(t: Any) -> str:
    return type(t).__name__


def _module(t: Any) -> str:
    return getattr(type(t), "__module__", "") or ""


def _seq(x: Any) -> list[Any]:
    if isinstance(x, torch.nn.ModuleList):
        return list(x)
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _floats(v: Any) -> tuple[float, ...]:
    if isinstance(v, torch.Tensor):
        return tuple(float(x) for x in v.flatten().tolist())
    if isinstance(v, (int, float)):
        return (float(v),)
    return tuple(float(x) for x in v)


def _image_dtype(dtype: Any) -> torch.dtype | None:
    """The dtype a (possibly dict-form) ToDtype gives images."""
    if isinstance(dtype, torch.dtype) or dtype is None:
        return dtype
    if isinstance(dtype, dict):
        try:
            from torchvision import tv_tensors

            keys: list[Any] = [tv_tensors.Image, torch.Tensor, "others"]
        except Exception:  # pragma: no cover - torchvision missing
            keys = [torch.Tensor, "others"]
        for k in keys:
            if k in dtype:
                return dtype[k]
    return None


# transforms that never change the value range (geometric, colour within the range, container ops)
_NEUTRAL_NAMES = {
    "Resize", "RandomResize", "CenterCrop", "RandomCrop", "RandomResizedCrop", "FiveCrop", "TenCrop", "Pad",
    "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation", "RandomAffine", "RandomPerspective",
    "ElasticTransform", "ColorJitter", "Grayscale", "RandomGrayscale", "GaussianBlur", "GaussianNoise",
    "RandomInvert", "RandomPosterize", "RandomSolarize", "RandomAdjustSharpness", "RandomAutocontrast",
    "RandomEqualize", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "RandomErasing",
    "RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop", "RandomShortestSize", "ScaleJitter",
    "RandomChannelPermutation", "JPEG", "RGB", "Identity", "ToPureTensor", "SanitizeBoundingBoxes",
    "ClampBoundingBoxes", "ConvertBoundingBoxFormat", "ClampKeyPoints", "SanitizeKeyPoints", "SetClampingMode",
    "UniformTemporalSubsample", "MixUp", "CutMix",
    # timm / open_clip
    "RandomResizedCropAndInterpolation", "ResizeKeepRatio", "CenterCropOrPad", "RandomCropOrPad", "RandomPad",
    "TrimBorder", "MaybeConvertMode", "ResizeMaxSize", "ToNumpy", "RandAugment", "AutoAugment", "AugMixAugment",
    "RandomAugment", "_convert_to_rgb", "convert_to_rgb", "color_jitter", "gray_scale",
}
_NEUTRAL_MODULES = ("torchvision.transforms", "timm.data", "open_clip.transform", "open_clip_train")
_VALUE_CHANGING_UNSUPPORTED = {"LinearTransformation"}


def _is_neutral(t: Any) -> bool:
    if _is_function(t):
        name = getattr(t, "__name__", "")
        mod = getattr(t, "__module__", "") or ""
        return name in _NEUTRAL_NAMES and mod.startswith(_NEUTRAL_MODULES)
    name = _cls(t)
    if name in _VALUE_CHANGING_UNSUPPORTED:
        return False
    return name in _NEUTRAL_NAMES and _module(t).startswith(_NEUTRAL_MODULES)


def _is_function(t: Any) -> bool:
    import types

    return isinstance(t, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def _short(t: Any) -> str:
    if _is_function(t):
        return f"{getattr(t, '__qualname__', getattr(t, '__name__', 'function'))}()"
    r = repr(t)
    if "\n" in r or len(r) > 120 or r.startswith("<"):
        return f"{_cls(t)}()"
    return r


def _is_image_processor(t: Any) -> bool:
    return (
        hasattr(t, "do_normalize")
        and hasattr(t, "image_mean")
        and hasattr(t, "image_std")
        and (hasattr(t, "do_rescale") or hasattr(t, "rescale_factor"))
    )


def _apply(t: Any, st: _State, w: _Walk, depth: int = 0) -> _State:
    if depth > _MAX_DEPTH:
        w.note(f"transform nesting deeper than {_MAX_DEPTH} levels in {w.where}: stopped looking")
        return _OPAQUE
    name = _cls(t)
    mod = _module(t)
    if t is None:
        return st

    # ---- containers
    if name == "Compose" or (name == "Sequential" and isinstance(t, torch.nn.Sequential)):
        inner = list(t.transforms) if hasattr(t, "transforms") else list(t)
        for sub in inner:
            st = _apply(sub, st, w, depth + 1)
        return st
    if name == "StandardTransform" and hasattr(t, "transform"):
        return _apply(t.transform, st, w, depth + 1)
    if name in ("RandomApply", "RandomChoice", "RandomOrder") and hasattr(t, "transforms"):
        return _random(t, st, w, depth)

    # ---- library pre-processors
    if name == "VaeImageProcessor" and hasattr(t, "config"):
        return _vae_processor(t, st, w)
    if _is_image_processor(t):
        return _processor(t, st, w)
    if _is_image_processor(getattr(t, "image_processor", None)):
        return _apply(t.image_processor, st, w, depth + 1)

    # ---- conversions
    try:
        from torchvision import transforms as T1
        from torchvision.transforms import v2 as T2
    except Exception:  # pragma: no cover - torchvision missing
        T1 = T2 = None  # type: ignore[assignment]

    is_tv = mod.startswith("torchvision.transforms")
    if T1 is not None and (isinstance(t, T1.ToTensor) or isinstance(t, T2.ToTensor) or name == "MaybeToTensor"):
        before = st
        if not st.known:
            w.note(f"assumed {_short(t)} receives an 8-bit image (PIL or uint8) after the step(s) rangewatch cannot see")
            before = _IMAGE
            w.deciding.clear()
        if before.integer and before.int_max == 255.0:
            new = replace(before, integer=False, int_max=1.0).scaled(1 / 255.0)
        elif before.integer:
            new = replace(before, integer=False, int_max=1.0)
            w.note(f"{_short(t)} only rescales 8-bit images; this input is a wider integer type and keeps its values")
        else:
            new = before
            w.note(f"{_short(t)} on float input does not rescale")
        return _step(w, t, st, new, decides=True)
    if (T1 is not None and (isinstance(t, T1.PILToTensor) or isinstance(t, T2.PILToTensor) or isinstance(t, T2.ToImage))) or name == "MaybePILToTensor":
        if not st.known:
            w.note(f"assumed {_short(t)} receives an 8-bit image (PIL or uint8) after the step(s) rangewatch cannot see")
            w.deciding.clear()
            return _step(w, t, st, _IMAGE, decides=True)
        return _step(w, t, st, st, decides=False)
    if name == "ToTensor" and mod.startswith("timm.data"):  # timm's ToTensor: pil_to_tensor then .to(dtype), no rescaling
        base = st if st.known else _IMAGE
        dtype = getattr(t, "dtype", torch.float32)
        new = replace(base, integer=not dtype.is_floating_point, int_max=_INT_MAX.get(dtype, 1.0) if not dtype.is_floating_point else 1.0)
        return _step(w, t, st, new, decides=True)
    if T1 is not None and isinstance(t, T2.ToDtype):
        dt = _image_dtype(t.dtype)
        return _to_dtype(t, dt, bool(t.scale), st, w, label=f"ToDtype({dt}, scale={bool(t.scale)})")
    if T1 is not None and (isinstance(t, T1.ConvertImageDtype) or isinstance(t, T2.ConvertImageDtype)):
        return _to_dtype(t, t.dtype, True, st, w, label=f"ConvertImageDtype({t.dtype})")
    if T1 is not None and (isinstance(t, T1.Normalize) or isinstance(t, T2.Normalize)):
        return _normalize(t, _floats(t.mean), _floats(t.std), st, w)
    if T1 is not None and (isinstance(t, T1.ToPILImage) or isinstance(t, T2.ToPILImage)):
        if not st.known:
            return _step(w, t, st, st, decides=False)
        if st.integer:
            return _step(w, t, st, st, decides=False)
        if st.same(_UNIT):
            return _step(w, t, st, _IMAGE, decides=True)
        w.note(f"{_short(t)} of a float tensor that is not in [0, 1] ({st.describe()}): values wrap around in mul(255).byte()")
        return _step(w, t, st, _OPAQUE, decides=True)
    if T1 is not None and (isinstance(t, T1.Lambda) or isinstance(t, T2.Lambda)):
        fn = getattr(t, "lambd", None)
        fname = getattr(fn, "__name__", "?")
        w.note(f"Lambda({fname}) in {w.where}: cannot see what it does")
        return _step(w, t, st, _OPAQUE, decides=True, label=f"Lambda({fname})")

    if name == "GaussianNoise" and getattr(t, "clip", False) and st.known and not st.same(_UNIT):
        w.note(f"{_short(t)} in {w.where} clamps to [0, 1] but the data are {st.describe()}")
        return _step(w, t, st, _OPAQUE, decides=True)
    noise = _erasing_noise(t)
    if noise:
        w.noise_share = min(1.0, w.noise_share + noise)
        w.note(f"{_short(t)} fills up to {noise:.0%} of an image with N(0, 1) noise: values outside the bounds there are expected")
    if _is_neutral(t):
        return _step(w, t, st, st, decides=False)
    if is_tv and name not in _VALUE_CHANGING_UNSUPPORTED and not _is_function(t):
        # torchvision's own transforms keep dtype and range unless handled above
        return _step(w, t, st, st, decides=False)

    what = "function" if _is_function(t) else "transform"
    w.note(f"{_short(t)} in {w.where}: unrecognised {what}, cannot see what it does")
    return _step(w, t, st, _OPAQUE, decides=True)


def _erasing_noise(t: Any) -> float:
    """Largest share of an image that a random-valued erasing step fills with N(0, 1) noise (0: none).

    torchvision ``RandomErasing(value="random")`` (v1 keeps ``value="random"``, v2 stores ``None``)
    erases one rectangle of up to ``scale[1]`` of the image with probability ``p``; timm
    ``RandomErasing`` in mode ``"pixel"`` or ``"rand"`` erases up to ``max_count`` rectangles of up to
    ``max_area`` each with probability ``probability``.
    """
    if _cls(t) != "RandomErasing":
        return 0.0
    mod = _module(t)
    try:
        if mod.startswith("torchvision.transforms"):
            if getattr(t, "p", 0) <= 0 or not (t.value is None or (isinstance(t.value, str) and t.value == "random")):
                return 0.0
            return float(t.scale[1])
        if mod.startswith("timm.data"):
            if getattr(t, "probability", 0) <= 0 or getattr(t, "mode", "const") not in ("pixel", "rand"):
                return 0.0
            return float(t.max_area) * max(1, int(getattr(t, "max_count", 1)))
    except (AttributeError, TypeError, ValueError, IndexError):
        return 0.0
    return 0.0


def _step(w: _Walk, t: Any, before: _State, after: _State, *, decides: bool, label: str | None = None) -> _State:
    label = label or _short(t)
    if before.same(after):
        w.steps.append(f"{label}: no change ({after.describe()})")
    else:
        w.steps.append(f"{label}: {before.describe()} -> {after.describe()}")
    if decides:
        w.deciding.append(label)
    return after


def _to_dtype(t: Any, dtype: torch.dtype | None, scale: bool, st: _State, w: _Walk, label: str) -> _State:
    if dtype is None or not st.known:
        return _step(w, t, st, st, decides=False, label=label)
    if dtype.is_floating_point:
        if st.integer:
            new = replace(st, integer=False, int_max=1.0)
            if scale:
                new = new.scaled(1.0 / st.int_max)
        else:
            new = st
    else:
        new_max = _INT_MAX.get(dtype, 255.0)
        if st.integer:
            new = replace(st, int_max=new_max)
            if scale:
                new = new.scaled(new_max / st.int_max)
        else:
            new = replace(st, integer=True, int_max=new_max)
            if scale:
                new = new.scaled(new_max)
            else:
                w.note(f"{label} truncates float values to integers without rescaling")
    return _step(w, t, st, new, decides=True, label=label)


def _normalize(t: Any, mean: tuple[float, ...], std: tuple[float, ...], st: _State, w: _Walk, label: str | None = None) -> _State:
    label = label or f"Normalize(mean={_const_name(mean, 'MEAN')}, std={_const_name(std, 'STD')})"
    if not st.known:
        return _step(w, t, st, st, decides=True, label=label)
    if st.integer and label.startswith("Normalize"):
        w.note(
            f"{label} in {w.where} is applied to integer (8-bit) images: torchvision raises on non-float tensors; "
            "if the data reaching it is already float in [0, 1], the result would be "
            + _unit_then(mean, std)
        )
        return _step(w, t, st, _OPAQUE, decides=True, label=label)
    n = max(len(st.a), len(st.b), len(mean), len(std))
    a, b, m, s = (_broadcast(v, n) for v in (st.a, st.b, mean, std))
    if a is None or b is None or m is None or s is None:
        w.note(f"{label}: {len(mean)} mean values do not fit the data's channels")
        return _step(w, t, st, _OPAQUE, decides=True, label=label)
    if any(v == 0 for v in s):
        w.note(f"{label}: std contains 0")
        return _step(w, t, st, _OPAQUE, decides=True, label=label)
    new = replace(
        st,
        a=tuple(ai / si for ai, si in zip(a, s)),
        b=tuple((bi - mi) / si for bi, mi, si in zip(b, m, s)),
        integer=False,
        int_max=1.0,
    )
    return _step(w, t, st, new, decides=True, label=label)


def _unit_then(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    name, _ = _match(mean, std)
    return name if name is not None else f"Normalize(mean={_fmt_values(mean)}, std={_fmt_values(std)}) of [0, 1]"


def _processor(p: Any, st: _State, w: _Walk) -> _State:
    cls = _cls(p)
    do_rescale = bool(getattr(p, "do_rescale", False))
    factor = getattr(p, "rescale_factor", 1 / 255)
    do_norm = bool(getattr(p, "do_normalize", False))
    mean, std = getattr(p, "image_mean", None), getattr(p, "image_std", None)
    parts = [f"do_rescale={do_rescale}"]
    if do_rescale:
        parts.append(f"rescale_factor={'1/255' if factor is not None and abs(float(factor) - 1 / 255) < 1e-9 else factor}")
    parts.append(f"do_normalize={do_norm}")
    if do_norm and mean is not None and std is not None:
        parts += [f"image_mean={_const_name(_floats(mean), 'MEAN')}", f"image_std={_const_name(_floats(std), 'STD')}"]
    label = f"{cls}({', '.join(parts)})"
    if not st.known:
        w.note(f"assumed {cls} receives 8-bit images (0..255)")
        st = _IMAGE
    elif not st.integer:
        w.note(f"{cls} is given float images ({st.describe()}); it expects 0..255 input")
    w.note(f"{cls} expects 8-bit input (0..255); with do_rescale it rescales [0, 1] input again (transformers warns once)")
    new = replace(st, integer=False, int_max=1.0)
    if do_rescale and factor is not None:
        new = new.scaled(float(factor))
    if do_norm and mean is not None and std is not None:
        m, s = _floats(mean), _floats(std)
        n = max(len(new.a), len(m), len(s))
        a, b, mm, ss = (_broadcast(v, n) for v in (new.a, new.b, m, s))
        if a is None or b is None or mm is None or ss is None:
            return _step(w, p, st, _OPAQUE, decides=True, label=label)
        new = replace(new, a=tuple(x / y for x, y in zip(a, ss)), b=tuple((x - y) / z for x, y, z in zip(b, mm, ss)))
    return _step(w, p, st, new, decides=True, label=label)


def _vae_processor(p: Any, st: _State, w: _Walk) -> _State:
    do_norm = bool(getattr(p.config, "do_normalize", True))
    label = f"VaeImageProcessor(do_normalize={do_norm})"
    base = st if st.known else _IMAGE
    new = _UNIT if base.integer else base
    if do_norm:
        new = replace(new, a=tuple(2 * v for v in new.a), b=tuple(2 * v - 1 for v in new.b))
    return _step(w, p, st, new, decides=True, label=label)


def _random(t: Any, st: _State, w: _Walk, depth: int) -> _State:
    name = _cls(t)
    inner = _seq(t.transforms)
    if name == "RandomApply":
        sub = _Walk(w.where)
        after = st
        for x in inner:
            after = _apply(x, after, sub, depth + 1)
        w.notes += [n for n in sub.notes if n not in w.notes]
        w.noise_share = max(w.noise_share, sub.noise_share)
        p = getattr(t, "p", None)
        if after.same(st):
            w.steps.append(f"RandomApply(p={p}): no change ({st.describe()})")
            return st
        w.note(f"RandomApply(p={p}) in {w.where} changes the value range ({st.describe()} -> {after.describe()}) on only some samples")
        return _step(w, t, st, _OPAQUE, decides=True, label=f"RandomApply(p={p})")
    if name == "RandomChoice":
        outcomes = []
        for x in inner:
            sub = _Walk(w.where)
            outcomes.append((_apply(x, st, sub, depth + 1), sub))
        for _, sub in outcomes:
            w.notes += [n for n in sub.notes if n not in w.notes]
            w.noise_share = max(w.noise_share, sub.noise_share)
        first = outcomes[0][0]
        if all(o.same(first) for o, _ in outcomes):
            decides = not first.same(st)
            if decides:
                w.deciding += outcomes[0][1].deciding
            return _step(w, t, st, first, decides=False, label="RandomChoice")
        w.note(f"RandomChoice in {w.where}: the choices give different value ranges ({', '.join(o.describe() for o, _ in outcomes)})")
        return _step(w, t, st, _OPAQUE, decides=True, label="RandomChoice")
    # RandomOrder
    if len(inner) > 6:
        orders: Iterable[Sequence[Any]] = [inner, list(reversed(inner))]
    else:
        orders = itertools.permutations(inner)
    results = []
    first_sub: _Walk | None = None
    for order in orders:
        sub = _Walk(w.where)
        after = st
        for x in order:
            after = _apply(x, after, sub, depth + 1)
        results.append(after)
        if first_sub is None:
            first_sub = sub
    assert first_sub is not None
    w.notes += [n for n in first_sub.notes if n not in w.notes]
    w.noise_share = max(w.noise_share, first_sub.noise_share)
    if all(r.same(results[0]) for r in results):
        if not results[0].same(st):
            w.deciding += first_sub.deciding
        return _step(w, t, st, results[0], decides=False, label="RandomOrder")
    w.note(f"RandomOrder in {w.where}: the value range depends on the order")
    return _step(w, t, st, _OPAQUE, decides=True, label="RandomOrder")


def _finish(st: _State, w: _Walk) -> Prediction:
    if not w.deciding:
        w.deciding.append("no value-changing step")
    source = " -> ".join(w.deciding) + f" in {w.where}"
    if not st.known:
        return Prediction(UNKNOWN, source, w.steps, w.notes, w.noise_share)
    m, s = st.mean_std()
    m, s = tuple(round(v, 10) for v in m), tuple(round(v, 10) for v in s)  # drop float noise of the composition
    conv, note = normalize_convention(m, s, source=source, integer=st.integer)
    if note:
        w.note(note)
    if conv is None:
        return Prediction(UNKNOWN, source, w.steps, w.notes, w.noise_share)
    return Prediction(conv.name, source, w.steps, w.notes, w.noise_share, conv=conv)


# ---------------------------------------------------------------------------- public API
def predict_transform(transform: Any, *, where: str = "transform") -> Prediction:
    """Predict the convention ``transform`` produces from decoded 8-bit images.

    ``where`` names the transform in the source string (``"dataset.transform"``). Never raises on an
    unfamiliar object: what it cannot read makes the convention ``"unknown"`` with a note.
    """
    w = _Walk(where)
    if transform is None:
        w.note(f"no transform in {where}: the data are whatever the dataset returns")
        return Prediction(UNKNOWN, f"no transform in {where}", [], w.notes)
    if not w.notes:
        w.note("assumes the transform receives decoded 8-bit images (PIL or uint8)")
    st = _apply(transform, _IMAGE, w)
    return _finish(st, w)


def _is_datamodule(obj: Any) -> bool:
    for modname in ("lightning.pytorch", "pytorch_lightning"):
        try:
            mod = __import__(modname, fromlist=["LightningDataModule"])
            if isinstance(obj, mod.LightningDataModule):
                return True
        except Exception:
            continue
    return False


def _dataset_walk(ds: Any, where: str, depth: int) -> tuple[_State, _Walk] | None:
    """(state, walk) for a dataset-like object, or None when it has no transform to read."""
    if depth > _MAX_DEPTH:
        return None
    try:
        from torch.utils.data import ConcatDataset, DataLoader
    except Exception:  # pragma: no cover
        ConcatDataset = DataLoader = ()  # type: ignore[assignment,misc]
    if isinstance(ds, DataLoader):
        return _dataset_walk(ds.dataset, f"{where}.dataset", depth + 1)
    flat = getattr(ds, "flattened", None)  # Lightning's CombinedLoader (trainer.train_dataloader)
    if isinstance(flat, list) and flat and all(isinstance(x, DataLoader) for x in flat):
        return _combine([(f"{where}[{i}]", _dataset_walk(x, f"{where}[{i}]", depth + 1)) for i, x in enumerate(flat)], where)
    if isinstance(ds, ConcatDataset) or (hasattr(ds, "datasets") and isinstance(getattr(ds, "datasets"), (list, tuple))):
        parts = [(i, _dataset_walk(d, f"{where}.datasets[{i}]", depth + 1)) for i, d in enumerate(ds.datasets)]
        return _combine([(f"{where}.datasets[{i}]", r) for i, r in parts], where)

    transform = getattr(ds, "transform", None)
    tname = "transform"
    if transform is None:
        joint = getattr(ds, "transforms", None)
        if joint is not None:
            transform, tname = joint, "transforms"
    inner = getattr(ds, "dataset", None)
    base: tuple[_State, _Walk] | None = None
    if inner is not None and inner is not ds:
        base = _dataset_walk(inner, f"{where}.dataset", depth + 1)
    if transform is None:
        return base
    w = _Walk(f"{where}.{tname}")
    if base is not None:
        st, w0 = base
        w.steps, w.notes, w.deciding = list(w0.steps), list(w0.notes), [f"{d} (in {w0.where})" for d in w0.deciding]
    else:
        w.note("assumes the dataset hands its transform decoded 8-bit images (PIL or uint8)")
        st = _IMAGE
    return _apply(transform, st, w), w


def _combine(parts: list[tuple[str, tuple[_State, _Walk] | None]], where: str) -> tuple[_State, _Walk] | None:
    known = [(name, r) for name, r in parts if r is not None]
    if not known:
        return None
    w = _Walk(where)
    for name, r in parts:
        if r is None:
            w.note(f"{name} has no transform")
    first_name, (first, fw) = known[0]
    for name, (st, sw) in known:
        w.steps += [f"[{name}] {s}" for s in sw.steps]
        w.notes += [n for n in sw.notes if n not in w.notes]
        w.noise_share = max(w.noise_share, sw.noise_share)
    if all(st.same(first) for _, (st, _) in known):
        w.deciding = list(fw.deciding)
        w.where = fw.where + (f" (and {len(known) - 1} more, agreeing)" if len(known) > 1 else "")
        return first, w
    w.note("the datasets disagree: " + "; ".join(f"{name} gives {st.describe()}" for name, (st, _) in known))
    w.deciding = ["datasets with different transforms"]
    return _OPAQUE, w


def predict_dataset(dataset: Any, *, where: str = "dataset") -> Prediction | None:
    """Predict what a dataset yields by reading its transform; None when there is nothing to read.

    Looks at ``dataset.transform`` (or the joint ``dataset.transforms``), follows ``Subset`` and other
    wrappers through ``.dataset`` (a wrapper's own transform runs after the wrapped dataset's),
    ``ConcatDataset.datasets`` (all must agree), a ``DataLoader``'s ``.dataset``, Lightning's
    ``CombinedLoader`` (``trainer.train_dataloader`` once fitting has started; all loaders must agree), and a
    ``LightningDataModule``'s dataset attributes (``train_dataset``, ``data_train``, ``val_set``, ...; all
    that are set must agree, since train and validation batches meet the same model).
    """
    if _is_datamodule(dataset):
        found = []
        for attr, value in sorted(vars(dataset).items(), key=lambda kv: (0 if "train" in kv[0] else 1, kv[0])):
            if attr.startswith("__") or value is None:
                continue
            if not any(k in attr.lower() for k in ("train", "val", "test", "predict", "dataset", "data_")):
                continue
            if isinstance(value, torch.utils.data.Dataset) or hasattr(value, "transform") or hasattr(value, "datasets"):
                found.append((f"{where}.{attr}", _dataset_walk(value, f"{where}.{attr}", 1)))
        res = _combine(found, where) if found else None
    else:
        res = _dataset_walk(dataset, where, 0)
    if res is None:
        return None
    st, w = res
    return _finish(st, w)
