"""ComfyUI's autoencoders: what they expect (``read_expectations``).

``comfy/ldm/models/autoencoder.py`` (module ``comfy.ldm.models.autoencoder``): ``AutoencodingEngine``,
``AutoencodingEngineLegacy`` and ``AutoencoderKL`` (the SD 1.x / SDXL / SD3 / Flux VAEs), and the Wan video
VAE ``comfy/ldm/wan/vae.py`` ``WanVAE`` (module ``comfy.ldm.wan.vae``), recognised by class name and module
of origin (also through subclasses). ComfyUI's ``comfy/sd.py`` ``VAE`` wrapper feeds them ``image * 2.0 -
1.0`` (its ``process_input``) and maps the decoder's output back with ``(image + 1.0) / 2.0``: pixels in
``[-1, 1]`` at ``<path>.encoder:input`` and ``<path>.decoder:output``. The latent scaling lives outside the
module (``comfy/latent_formats.py``, per model family), so no latent expectation is read: a note says how to
declare one.
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, class_of_origin, put_autoencoder

__all__ = ["read_expectations"]

COMFY_VAES: dict[tuple[str, str], str] = {
    ("comfy.ldm.models.autoencoder", "AutoencodingEngine"): "comfyanonymous/ComfyUI comfy/ldm/models/autoencoder.py",
    ("comfy.ldm.models.autoencoder", "AutoencodingEngineLegacy"): "comfyanonymous/ComfyUI comfy/ldm/models/autoencoder.py",
    ("comfy.ldm.models.autoencoder", "AutoencoderKL"): "comfyanonymous/ComfyUI comfy/ldm/models/autoencoder.py",
    ("comfy.ldm.wan.vae", "WanVAE"): "comfyanonymous/ComfyUI comfy/ldm/wan/vae.py",
}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """A ComfyUI autoencoder: [-1, 1] pixels; its latent scaling is not on the module (a note)."""
    hit = class_of_origin(m, COMFY_VAES)
    if hit is None:
        return False
    repo, qual = hit
    where = path or "the root module"
    put_autoencoder(d, path, m, "ComfyUI", qual, f"ComfyUI's VAE wrapper feeds image * 2 - 1 (comfy/sd.py; {repo})", None, "")
    d.note(f"ComfyUI {qual} at {where}: its latent scaling is kept outside the module (comfy/latent_formats.py), so latents are "
           "not judged against it; declare them: expect={'latents': '<latent convention>'} (`rangewatch conventions` lists them)")
    return True
