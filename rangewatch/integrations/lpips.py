"""The ``lpips`` package (richzhang/PerceptualSimilarity): ``lpips.LPIPS``.

What it expects (``lpips/lpips.py``)::

    def forward(self, in0, in1, retPerLayer=False, normalize=False):
        if normalize:  # turn on this flag if input is [0,1] so it can be adjusted to [-1, +1]
            in0 = 2 * in0 - 1
            in1 = 2 * in1 - 1
        in0_input, in1_input = (self.scaling_layer(in0), self.scaling_layer(in1)) ...

so both images are [-1,1] unless *the call* passes ``normalize=True``, then [0,1]. The
``ScalingLayer`` (shift -.030/-.088/-.188, scale .458/.448/.450) is ImageNet mean/std written for
[-1,1] input (``2 * 0.485 - 1 = -0.030``, ``2 * 0.229 = 0.458``). Vendored copies of the same class
(taming-transformers, latent-diffusion: see :mod:`rangewatch.integrations.taming`) keep the layer
and drop ``normalize``.

The convention is read from each call (``normalize`` positional or keyword), not from the module.
"""

from __future__ import annotations

from torch import nn

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class
from .base import Expects, Reading, Watched, bind, module_of

__all__ = ["recognise", "lpips_expects", "has_lpips_scaling_layer"]

#: ScalingLayer constants of LPIPS (ImageNet mean/std in [-1,1] space)
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)


def has_lpips_scaling_layer(m: nn.Module) -> bool:
    """True when ``m.scaling_layer`` holds LPIPS's shift/scale buffers (read once, at attach)."""
    layer = getattr(m, "scaling_layer", None)
    shift, scale = getattr(layer, "shift", None), getattr(layer, "scale", None)
    try:
        s = [float(v) for v in shift.detach().reshape(-1).cpu()]
        c = [float(v) for v in scale.detach().reshape(-1).cpu()]
    except Exception:  # noqa: BLE001  (not tensors: not the LPIPS layer)
        return False
    return len(s) == 3 and len(c) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(s + c, SCALING_SHIFT + SCALING_SCALE))


def lpips_expects(normalize: bool, call: str, switch_on: str, switch_off: str) -> Expects:
    """[-1,1] (or [0,1] with ``normalize``) with the fix in LPIPS's terms; ``switch_on`` /
    ``switch_off`` say how this object's flag is set (in the call, or in the constructor)."""
    if normalize:
        def fix(observed: str) -> str:
            if observed == "symmetric":
                return f"{switch_off} ({call} then takes [-1,1] as is), or apply (x + 1) / 2 before the call"
            return conversion_fix(observed, "unit", call)

        return Expects(("unit",), "[0,1] (normalize=True)", f"{call} with normalize=True maps [0,1] to [-1,1] itself", fix)

    def fix(observed: str) -> str:
        if observed == "unit":
            return f"{switch_on} ({call} then maps [0,1] to [-1,1] itself), or apply x * 2 - 1 before the call"
        return conversion_fix(observed, "symmetric", call)

    return Expects(("symmetric",), "[-1,1] (normalize=False)", f"{call} takes [-1,1] unless normalize=True", fix)


def recognise(m: nn.Module) -> Watched | None:
    """``lpips.LPIPS`` (any trunk); None for anything else."""
    if not module_of(m).startswith("lpips") or user_class(m).__name__ != "LPIPS":
        return None
    net = getattr(m, "pnet_type", "?")
    version = str(getattr(m, "version", "0.1"))
    what = f"lpips.LPIPS(net={net!r})"
    if version != "0.1":  # v0.0 skips the ScalingLayer: its range is not documented
        return Watched("lpips", what, "forward", lambda a, k: None, note=f"LPIPS version {version!r}: input range not judged")
    forward = user_class(m).forward

    def read(args: tuple, kwargs: dict) -> Reading | None:
        b = bind(forward, args, kwargs, skip_self=True)
        if b is None:
            return None
        normalize = bool(b.get("normalize", False))
        exp = lpips_expects(normalize, "lpips.LPIPS", "pass normalize=True in the call: lpips_fn(a, b, normalize=True)",
                            "drop normalize=True from the call")
        return Reading(exp, (("in0", b.get("in0"), 1), ("in1", b.get("in1"), 1)))

    return Watched("lpips", what, "forward", read)
