"""The video VAEs of the video trainers' own code (not diffusers'): what they expect (``read_expectations``).

Recognised by class name and module of origin (also through subclasses):

- Wan 2.1: Wan-Video/Wan2.1 ``wan/modules/vae.py`` ``WanVAE_`` (module ``wan.modules.vae``) and its copy in
  kohya-ss/musubi-tuner ``src/musubi_tuner/wan/modules/vae.py`` (module ``musubi_tuner.wan.modules.vae``).
  ``WanVAE_.encode(x, scale)`` normalises with the ``mean`` / ``std`` that the non-module ``WanVAE`` wrapper
  holds and passes in, so the module itself does not say its latent normalisation: a note says how to
  declare it. (The wrapper is not an ``nn.Module``: watch its ``.model``.)
- HunyuanVideo: Tencent/HunyuanVideo ``hyvideo/vae/autoencoder_kl_causal_3d.py`` ``AutoencoderKLCausal3D``
  (module ``hyvideo.vae.autoencoder_kl_causal_3d``) and musubi-tuner's copy
  ``src/musubi_tuner/hunyuan_model/autoencoder_kl_causal_3d.py``: a diffusers-style ``ConfigMixin`` whose
  ``config.scaling_factor`` (0.476986 in musubi-tuner ``src/musubi_tuner/hunyuan_model/vae.py``) and
  ``latent_channels`` (16) are read into ``<path>:latent``; the trainers scale with
  ``latents * vae.config.scaling_factor``.

Pixels: the trainers cache latents from ``contents / 127.5 - 1.0`` ("normalize to [-1, 1]",
musubi-tuner ``src/musubi_tuner/cache_latents.py``, ``wan_cache_latents.py``): ``[-1, 1]`` at
``<path>.encoder:input`` and ``<path>.decoder:output``, video tensors ``(N, C, F, H, W)``.
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, class_of_origin, put_autoencoder

__all__ = ["read_expectations"]

_WHY = "the video trainers cache latents from contents / 127.5 - 1.0 (kohya-ss/musubi-tuner src/musubi_tuner/cache_latents.py)"

WAN_VAES: dict[tuple[str, str], str] = {
    ("wan.modules.vae", "WanVAE_"): "Wan-Video/Wan2.1 wan/modules/vae.py",
    ("musubi_tuner.wan.modules.vae", "WanVAE_"): "kohya-ss/musubi-tuner src/musubi_tuner/wan/modules/vae.py",
}
HUNYUAN_VAES: dict[tuple[str, str], str] = {
    ("hyvideo.vae.autoencoder_kl_causal_3d", "AutoencoderKLCausal3D"): "Tencent/HunyuanVideo hyvideo/vae/autoencoder_kl_causal_3d.py",
    ("musubi_tuner.hunyuan_model.autoencoder_kl_causal_3d", "AutoencoderKLCausal3D"):
        "kohya-ss/musubi-tuner src/musubi_tuner/hunyuan_model/autoencoder_kl_causal_3d.py",
}


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """A Wan or HunyuanVideo VAE of the trainers' own code: [-1, 1] pixels; HunyuanVideo's latent scaling."""
    where = path or "the root module"
    hit = class_of_origin(m, WAN_VAES)
    if hit is not None:
        repo, qual = hit
        put_autoencoder(d, path, m, "Wan", qual, _WHY, None, "")
        d.note(f"Wan {qual} at {where}: its latent mean/std are held by the WanVAE wrapper ({repo}), not the module, so latents "
               "are not judged against them; declare them: expect={'latents': '<latent convention>'} (`rangewatch conventions`)")
        return True
    hit = class_of_origin(m, HUNYUAN_VAES)
    if hit is None:
        return False
    repo, qual = hit
    cfg = getattr(m, "config", None)
    get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
    scale, shift, channels = get("scaling_factor"), get("shift_factor"), get("latent_channels")
    latent = None
    src = ""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        from ..expect.models import latent_convention_for  # no import cycle: it imports this file

        src = f"config.scaling_factor={scale}, latent_channels={channels} (the trainers scale latents * vae.config.scaling_factor; {repo})"
        latent = latent_convention_for(float(scale), float(shift) if shift else None, int(channels) if channels else None, source=src)
    else:
        d.note(f"HunyuanVideo {qual} at {where}: no scaling_factor in its config; latents are not judged (declare them with expect=)")
    put_autoencoder(d, path, m, "HunyuanVideo", qual, _WHY, latent, src)
    return True
