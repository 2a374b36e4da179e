"""diffusers: what its autoencoders expect, read from the model (``read_expectations``).

Pixels in [-1, 1] (``symmetric``) at ``"<path>.encoder:input"`` and at ``"<path>.decoder:output"``:
diffusers' ``VaeImageProcessor`` / ``VideoProcessor`` (``do_normalize=True``) map [0, 1] images to
[-1, 1] before ``vae.encode`` and back after ``vae.decode``
(https://github.com/huggingface/diffusers/blob/main/src/diffusers/image_processor.py). The latent
convention ``"<path>:latent"`` comes from ``config.scaling_factor`` / ``shift_factor`` /
``latents_mean`` / ``latents_std`` / ``latent_channels`` (the ``AutoencoderKL`` configs of the published
checkpoints, and per family: Wan / Qwen-Image / Mochi / LTX per-channel statistics, Flux.2's BatchNorm
statistics), through :func:`rangewatch.expect.vae_latents.latent_convention_of` (its docstring cites each
family's model and pipeline files).
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, library_of
from ..taps.sharding import user_class

__all__ = ["read_expectations"]

# diffusers autoencoders whose pixels are [-1, 1] on both sides (VaeImageProcessor / VideoProcessor do_normalize)
_DIFFUSERS_VAES = {
    "AutoencoderKL", "AsymmetricAutoencoderKL", "AutoencoderTiny", "AutoencoderKLTemporalDecoder",
    "AutoencoderKLFlux2", "AutoencoderKLQwenImage", "AutoencoderKLWan", "AutoencoderKLCogVideoX",
    "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKLMochi", "AutoencoderKLAllegro",
    "AutoencoderDC", "VQModel", "ConsistencyDecoderVAE",
}
_NO_PIXEL_DECODER = {"ConsistencyDecoderVAE"}  # its decoder is a UNet, not a pixel decoder
_NO_LATENT = {"AutoencoderTiny"}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """The diffusers autoencoder ``m`` (by class name, from ``diffusers``): its pixel sides and its latent."""
    cls = user_class(m).__name__
    if library_of(m) != "diffusers" or cls not in _DIFFUSERS_VAES:
        return False
    children = dict(m.named_children())
    enc = d.child(path, "encoder") if "encoder" in children else path
    dec = d.child(path, "decoder") if "decoder" in children and cls not in _NO_PIXEL_DECODER else None
    where = path or "the root module"
    d.put(enc, "input", "symmetric", f"diffusers {cls} at {where}: pixel input in [-1, 1] (VaeImageProcessor maps [0, 1] to [-1, 1])")
    if dec is not None:
        d.put(dec, "output", "symmetric", f"diffusers {cls} at {where}: the decoder's pixels are in [-1, 1]")
    if cls in _NO_LATENT:
        d.note(f"{cls} at {where}: its encoder emits already-scaled latents of a family its config does not name; no latent expectation")
        return True
    from ..expect.vae_latents import latent_convention_of  # no import cycle: models.py imports this file

    conv = latent_convention_of(m)
    cfg = getattr(m, "config", None)
    get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
    scale, shift = get("scaling_factor"), get("shift_factor")
    parts = [f"scaling_factor={scale}"] + ([f"shift_factor={shift}"] if shift else [])
    parts.append(f"latent_channels={conv.channels if conv is not None else get('latent_channels') or get('z_dim')}")
    if conv is not None and conv.latents_mean is not None:
        parts.append("latents_mean/std set")
    if conv is not None and conv.temporal_compression:
        parts.append(f"temporal compression {conv.temporal_compression}, layout {conv.layout}")
    src = f"diffusers {cls}.config of {where}: " + ", ".join(parts)
    if conv is None:
        d.note(f"{cls} at {where}: no scaling_factor or latents_mean/std in its config; no latent expectation")
    else:
        d.put(path, "latent", conv, src + " (the scaled latent the diffusion model sees)", target="output")
    return True
