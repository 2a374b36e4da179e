"""kohya-ss/sd-scripts' own autoencoder classes: what they expect (``read_expectations``).

- SD3: ``library/sd3_models.py`` ``SDVAE`` (module ``library.sd3_models``): ``encode(image)`` returns the
  unscaled ``z`` (``mean + std * randn``), scaled by ``SDVAE.process_in`` = ``(z - VAE_SHIFT_FACTOR) *
  VAE_SCALE_FACTOR`` with ``VAE_SCALE_FACTOR = 1.5305``, ``VAE_SHIFT_FACTOR = 0.0609`` (module constants of
  that file, read from the module when present): the ``sd3_latent`` convention, 16 channels.
- SDXL / SD 1.x: sd-scripts builds diffusers' own ``AutoencoderKL`` (``library/sdxl_model_util.py``,
  ``library/model_util.py``), read by :mod:`rangewatch.integrations.diffusers`.
- Flux: ``library/flux_models.py`` ``AutoEncoder``, read by :mod:`rangewatch.integrations.flux`.

Pixels: its datasets give ``IMAGE_TRANSFORMS = Compose([ToTensor(), Normalize([0.5], [0.5])])``
(``library/train_util.py``): ``[-1, 1]`` at ``<path>.encoder:input`` and ``<path>.decoder:output``.
"""

from __future__ import annotations

import sys

from torch import nn

from .metadata import Deriving, class_of_origin, put_autoencoder
from ..taps.sharding import user_class

__all__ = ["read_expectations"]

SD_SCRIPTS_VAES: dict[tuple[str, str], str] = {
    ("library.sd3_models", "SDVAE"): "kohya-ss/sd-scripts library/sd3_models.py",
}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """sd-scripts' SD3 ``SDVAE``: [-1, 1] pixels, SD3's latent scaling (its module constants)."""
    hit = class_of_origin(m, SD_SCRIPTS_VAES)
    if hit is None:
        return False
    repo, qual = hit
    module = sys.modules.get(user_class(m).__module__)
    scale = getattr(module, "VAE_SCALE_FACTOR", 1.5305)
    shift = getattr(module, "VAE_SHIFT_FACTOR", 0.0609)
    from ..expect.models import latent_convention_for  # no import cycle: it imports this file

    src = f"SDVAE.process_in scales (z - {shift}) * {scale} ({repo})"
    latent = latent_convention_for(float(scale), float(shift), 16, source=src)
    put_autoencoder(d, path, m, "sd-scripts", qual, "its datasets give ToTensor() then Normalize([0.5], [0.5]) (library/train_util.py)",
                    latent, src)
    return True
