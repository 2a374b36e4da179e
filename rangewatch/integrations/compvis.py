"""CompVis-family autoencoders: what they expect, read from the class (``read_expectations``).

latent-diffusion ``ldm.models.autoencoder`` (``AutoencoderKL``, ``VQModel``), taming-transformers
``taming.models.vqgan`` (``VQModel``, ``GumbelVQ``, ``EMAVQ``) and Stability generative-models
``sgm.models.autoencoder`` carry no config saying their range, so they are recognised by class name
*and* module of origin, anywhere in the MRO (subclasses count): ``symmetric`` at
``"<path>.encoder:input"`` and ``"<path>.decoder:output"``. Sources: latent-diffusion ``ldm/data/*.py``
and taming-transformers ``taming/data/base.py`` build ``example["image"] = (image / 127.5 - 1.0)``
(https://github.com/CompVis/latent-diffusion, https://github.com/CompVis/taming-transformers);
generative-models ``sgm/data/cifar10.py`` gives ``ToTensor()`` then ``x * 2.0 - 1.0``
(https://github.com/Stability-AI/generative-models). (The taming / latent-diffusion LPIPS copy is
:mod:`rangewatch.integrations.taming`.)
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, put_autoencoder
from ..taps.sharding import user_class

__all__ = ["read_expectations"]

# CompVis-family autoencoders (no config object says it): (module of origin, class) -> where the fact is
# stated. latent-diffusion `ldm/data/*.py` and taming-transformers `taming/data/base.py` build
# `example["image"] = (image / 127.5 - 1.0)`, the autoencoders train to reconstruct it
# (`rec_loss = |x - xrec|`) and their `log_images` shows both as [-1, 1]; Stability's generative-models
# (`sgm`) keeps that convention (`sgm/data/cifar10.py`, `mnist.py`: ToTensor then `x * 2.0 - 1.0`; its
# sampling scripts show decoded images with `(x + 1.0) / 2.0`).
_COMPVIS_VAES: dict[tuple[str, str], str] = {
    ("ldm.models.autoencoder", "AutoencoderKL"): "CompVis latent-diffusion",
    ("ldm.models.autoencoder", "VQModel"): "CompVis latent-diffusion",
    ("ldm.models.autoencoder", "VQModelInterface"): "CompVis latent-diffusion",
    ("taming.models.vqgan", "VQModel"): "CompVis taming-transformers",
    ("taming.models.vqgan", "GumbelVQ"): "CompVis taming-transformers",
    ("taming.models.vqgan", "EMAVQ"): "CompVis taming-transformers",
    ("sgm.models.autoencoder", "AutoencodingEngine"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencodingEngineLegacy"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencoderKL"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencoderKLInferenceWrapper"): "Stability generative-models",
}
# subclasses of those that take no pixels (taming's VQSegmentationModel encodes one-hot segmentation maps)
_COMPVIS_NOT_PIXELS = {("taming.models.vqgan", "VQSegmentationModel")}
_COMPVIS_DATA = {
    "CompVis latent-diffusion": "its data classes give image / 127.5 - 1 (ldm/data/*.py)",
    "CompVis taming-transformers": "its data classes give image / 127.5 - 1 (taming/data/base.py)",
    "Stability generative-models": "its data modules give ToTensor() then x * 2 - 1 (sgm/data/cifar10.py)",
}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """CompVis-family autoencoders, recognised by the class and the module it comes from (also
    through subclasses): [-1, 1] at the encoder's input and the decoder's output."""
    origin = None
    for cls in user_class(m).__mro__:
        if (cls.__module__ or "", cls.__name__) in _COMPVIS_NOT_PIXELS:
            return False
        repo = _COMPVIS_VAES.get((cls.__module__ or "", cls.__name__))
        if repo is not None:
            origin = (repo, f"{cls.__module__}.{cls.__name__}")
            break
    if origin is None:
        return False
    repo, qual = origin
    put_autoencoder(d, path, m, repo, qual, _COMPVIS_DATA[repo], None, "")
    return True
