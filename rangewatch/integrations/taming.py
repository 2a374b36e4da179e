"""CompVis taming-transformers, latent-diffusion and Stability's generative-models: their vendored ``LPIPS``.

``taming/modules/losses/lpips.py`` (and latent-diffusion, which imports it through
``taming.modules.losses.vqperceptual``; ``LPIPSWithDiscriminator.perceptual_loss`` is one) copies
the ``lpips`` class without the ``normalize`` flag::

    def forward(self, input, target):
        in0_input, in1_input = (self.scaling_layer(input), self.scaling_layer(target))

so both images must be [-1,1] (the ``ScalingLayer`` holds ImageNet mean/std written for [-1,1];
see :mod:`rangewatch.integrations.lpips`). CompVis data classes produce that range
(``image / 127.5 - 1``). Stability-AI/generative-models has the same stripped copy in
``sgm/modules/autoencoding/lpips/loss/lpips.py``. Recognised by class name ``LPIPS`` from a
``taming.*`` / ``ldm.*`` / ``sgm.*`` module with the ScalingLayer constants; none is ever imported.
"""

from __future__ import annotations

from torch import nn

from ..checks.fixes import conversion_fix
from ..taps.sharding import user_class
from .base import Expects, Reading, Watched, bind, module_of
from .lpips import has_lpips_scaling_layer

__all__ = ["recognise"]

_ORIGINS = ("taming.", "ldm.", "sgm.")


def recognise(m: nn.Module) -> Watched | None:
    """``taming.modules.losses.lpips.LPIPS`` and latent-diffusion copies; None for anything else."""
    mod = module_of(m)
    if not mod.startswith(_ORIGINS) or user_class(m).__name__ != "LPIPS" or not has_lpips_scaling_layer(m):
        return None
    call = f"{mod}.LPIPS"
    forward = user_class(m).forward
    exp = Expects(("symmetric",), "[-1,1]", f"{call} feeds its input straight to the LPIPS ScalingLayer, written for [-1,1]",
                  lambda observed: conversion_fix(observed, "symmetric", f"{call} (it has no normalize flag)"))

    def read(args: tuple, kwargs: dict) -> Reading | None:
        b = bind(forward, args, kwargs, skip_self=True)
        if b is None:
            return None
        names = [n for n in b if n != "self"][:2]
        return Reading(exp, tuple((n, b[n], 1) for n in names))

    return Watched(mod.split(".", 1)[0], f"{call} (ScalingLayer: [-1,1])", "forward", read)
