"""Black Forest Labs' Flux autoencoder and its copies in training code: what it expects (``read_expectations``).

The Flux ``AutoEncoder`` carries no config object; it is recognised by class name *and* module of origin
(anywhere in the MRO):

- black-forest-labs/flux ``src/flux/modules/autoencoder.py`` (module ``flux.modules.autoencoder``);
- kohya-ss/sd-scripts ``library/flux_models.py`` (module ``library.flux_models``), a copy of it;
- kohya-ss/musubi-tuner ``src/musubi_tuner/flux/flux_models.py`` (module ``musubi_tuner.flux.flux_models``);
- (ComfyUI keeps no copy under ``comfy/ldm/flux``, which holds the transformer: its Flux VAE is the
  ``AutoencodingEngine`` of :mod:`rangewatch.integrations.comfy`.)

Pixels: ``[-1, 1]`` at ``<path>.encoder:input`` and ``<path>.decoder:output``. sd-scripts feeds it
``IMAGE_TRANSFORMS = Compose([ToTensor(), Normalize([0.5], [0.5])])`` (``library/train_util.py``); BFL's
``src/flux/cli.py`` turns decoded images into bytes with ``127.5 * (x + 1.0)``.

Latents: ``AutoEncoder.encode`` returns ``scale_factor * (z - shift_factor)`` (the model-space latents the
transformer sees; ``AutoEncoderParams`` gives ``z_channels=16, scale_factor=0.3611, shift_factor=0.1159`` for
flux-dev/schnell), read from the module's own ``scale_factor`` / ``shift_factor`` / ``params.z_channels``
into ``<path>:latent``: a tensor the script names ``latents`` is judged against it.
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, class_of_origin, put_autoencoder

__all__ = ["read_expectations"]

#: (module of origin, class) -> the repository and file it comes from
FLUX_AUTOENCODERS: dict[tuple[str, str], str] = {
    ("flux.modules.autoencoder", "AutoEncoder"): "black-forest-labs/flux src/flux/modules/autoencoder.py",
    ("library.flux_models", "AutoEncoder"): "kohya-ss/sd-scripts library/flux_models.py",
    ("musubi_tuner.flux.flux_models", "AutoEncoder"): "kohya-ss/musubi-tuner src/musubi_tuner/flux/flux_models.py",
}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """A Flux ``AutoEncoder`` (BFL or a training repository's copy): [-1, 1] pixels, its own latent scaling."""
    hit = class_of_origin(m, FLUX_AUTOENCODERS)
    if hit is None:
        return False
    repo, qual = hit
    scale, shift = getattr(m, "scale_factor", None), getattr(m, "shift_factor", None)
    channels = getattr(getattr(m, "params", None), "z_channels", None)
    latent = None
    src = ""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        from ..expect.models import latent_convention_for  # no import cycle: it imports this file

        src = f"its encode() returns scale_factor * (z - shift_factor) with scale_factor={scale}, shift_factor={shift}" + (
            f", z_channels={channels}" if channels else "")
        latent = latent_convention_for(float(scale), float(shift or 0.0), int(channels) if isinstance(channels, int) else None, source=f"{repo}: {src}")
    else:
        d.note(f"Flux AutoEncoder {qual} at {path or 'the root module'}: no numeric scale_factor on it; its latents are not judged "
               "(declare them: expect={'latents': 'flux_latent'})")
    put_autoencoder(d, path, m, "Flux", qual, f"sd-scripts feeds ToTensor() then Normalize([0.5], [0.5]) ({repo})", latent, src)
    return True
