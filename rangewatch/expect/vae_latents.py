"""The latent convention of a VAE, read from the VAE itself: :func:`latent_convention_of`.

One function, for every caller that holds a VAE (module), its config (a dict, a diffusers ``FrozenDict``) or
a local diffusers model folder / ``config.json``, and wants to know what its latents look like in the
diffusion model's space, with nothing declared: the diffusers metadata reader
(:mod:`rangewatch.integrations.diffusers`), the pipeline watch, ``rangewatch check-cache --vae``, and a training
script's ``watch.tensor("latents", z)`` bound to the attached VAE.

What the diffusers VAE classes declare (``src/diffusers/models/autoencoders/<file>.py``) and how their
pipelines use it (``src/diffusers/pipelines/<family>/pipeline_<family>.py``):

=========================================  ===================================================================
``AutoencoderKL`` (SD 1.x/2.x, SDXL, SD3,  ``config.scaling_factor`` and ``config.shift_factor``:
Flux.1, Playground 2.5), ``AutoencoderDC``  ``z_model = (z - shift_factor) * scaling_factor``; Playground's
(SANA: ``scaling_factor`` 0.41407),        ``config.latents_mean`` / ``latents_std``: ``(z - mean) * scale / std``
``AutoencoderKLHunyuanVideo`` (0.476986),  (autoencoder_kl.py, autoencoder_dc.py, autoencoder_kl_hunyuan_video.py,
``AutoencoderKLCogVideoX`` (1.15258426),   autoencoder_kl_cogvideox.py, autoencoder_kl_allegro.py)
``AutoencoderKLAllegro``
``AutoencoderKLWan``,                      ``config.latents_mean`` / ``config.latents_std`` (16 or 48 values, the raw
``AutoencoderKLQwenImage``                 std) and no scaling_factor: ``(z - mean) / std`` (pipeline_wan.py and
                                           pipeline_qwenimage.py keep ``1 / latents_std`` and multiply);
                                           ``config.scale_factor_temporal`` / ``scale_factor_spatial``
``AutoencoderKLMochi``                     ``config.latents_mean`` / ``latents_std`` (12) and ``scaling_factor`` 1.0:
                                           ``(z - mean) * scale / std`` (pipeline_mochi.py)
``AutoencoderKLLTXVideo``                  ``latents_mean`` / ``latents_std`` *buffers* (not config) and
                                           ``config.scaling_factor``: ``(z - mean) * scale / std``
                                           (pipeline_ltx.py ``_normalize_latents``)
``AutoencoderKLFlux2``                     the latents are patchified 2x2 (32 -> 128 channels) and normalised
                                           with the VAE's BatchNorm running statistics:
                                           ``(patchify(z) - bn.running_mean) / sqrt(bn.running_var + eps)``
                                           (pipeline_flux2.py ``_encode_vae_image``)
=========================================  ===================================================================

Channels: ``config.latent_channels`` or ``config.z_dim`` (Wan / Qwen-Image). Temporal compression:
``config.scale_factor_temporal`` (Wan), else ``config.temporal_compression_ratio`` or the module's
``temporal_compression_ratio`` attribute (CogVideoX, HunyuanVideo, LTX, Mochi, Allegro); spatial likewise.
Layout: CogVideoX pipelines keep the latents as ``(N, T, C, H, W)`` (pipeline_cogvideox.py permutes them),
the other video VAEs ``(N, C, T, H, W)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from .conventions import Convention, get_convention

__all__ = ["latent_convention_of", "latents_to_model", "latents_to_raw", "vae_config"]

_VIDEO_NTCHW = {"AutoencoderKLCogVideoX"}
_VIDEO = {"AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo",
          "AutoencoderKLMochi", "AutoencoderKLAllegro", "AutoencoderKLTemporalDecoder", "AutoencoderKLMagvit",
          "AutoencoderKLHunyuanVideo15", "AutoencoderKLLTX2Video", "AutoencoderKLCosmos"}
_NO_LATENT = {"AutoencoderTiny"}  # its encoder emits latents already scaled for a family its config does not name


def vae_config(source: Any) -> tuple[dict[str, Any], str | None, Any]:
    """``(config dict, class name or None, module or None)`` of a VAE module, a config mapping, or a local
    diffusers model folder / ``config.json`` (its ``_class_name``)."""
    module = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            for sub in ("config.json", os.path.join("vae", "config.json")):
                if os.path.isfile(os.path.join(path, sub)):
                    path = os.path.join(path, sub)
                    break
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        return dict(cfg), cfg.get("_class_name"), None
    if isinstance(source, Mapping):
        cfg = dict(source)
        return cfg, cfg.get("_class_name"), None
    module = source
    cfg_obj = getattr(module, "config", None)
    cfg = dict(cfg_obj) if isinstance(cfg_obj, Mapping) else dict(getattr(cfg_obj, "__dict__", {}) or {})
    return cfg, type(module).__name__, module


def _floats(v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return tuple(float(x) for x in v.detach().flatten().cpu().tolist())
    except Exception:  # pragma: no cover
        pass
    if isinstance(v, (int, float)):
        return (float(v),)
    return tuple(float(x) for x in v)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer() else None


def latent_convention_of(vae: Any) -> Convention | None:
    """The latent convention of ``vae`` (a diffusers VAE module, its config, or a local model folder /
    ``config.json``): scaling factor, shift factor, per-channel ``latents_mean`` / ``latents_std`` (from the
    config, the LTX buffers or the Flux.2 BatchNorm statistics), channels, temporal and spatial compression
    and layout; the catalogue's entry (with its latent-to-RGB factors) where the numbers match one. ``None``
    when the VAE declares no latent scaling (``AutoencoderTiny``; a config without any of these fields)."""
    from .models import latent_convention_for

    cfg, cls, module = vae_config(vae)
    if cls in _NO_LATENT:
        return None
    get = cfg.get
    scale, shift = get("scaling_factor"), get("shift_factor")
    channels = _int(get("latent_channels")) or _int(get("z_dim"))
    lm, ls = _floats(get("latents_mean")), _floats(get("latents_std"))
    patch = None
    where = [f"scaling_factor={scale}"] + ([f"shift_factor={shift}"] if shift else [])
    if lm is None and module is not None and cls == "AutoencoderKLLTXVideo":
        lm, ls = _floats(getattr(module, "latents_mean", None)), _floats(getattr(module, "latents_std", None))
        if lm is not None:
            where.append("latents_mean/latents_std buffers")
    if cls == "AutoencoderKLFlux2":
        ps = get("patch_size") or (2, 2)
        p = int(ps[0]) if isinstance(ps, (list, tuple)) else int(ps)
        bn = getattr(module, "bn", None) if module is not None else None
        if bn is not None and getattr(bn, "running_mean", None) is not None:
            eps = float(get("batch_norm_eps") or getattr(bn, "eps", 1e-5))
            lm = _floats(bn.running_mean)
            ls = tuple(math.sqrt(v + eps) for v in _floats(bn.running_var) or ())
            where.append("BatchNorm running statistics of the 2x2-patchified latents")
            scale = 1.0 if scale is None else scale
        channels = channels * p * p if channels else None
        patch = p
    elif lm is not None:
        where.append("latents_mean/latents_std")
    if scale is None and lm is None and ls is None:
        return None
    src = f"diffusers {cls or 'VAE'} config: " + ", ".join(where) + (f", latent_channels={channels}" if channels else "")
    conv = latent_convention_for(scale, shift, channels, lm, ls, source=src)
    if conv is None:
        return None
    temporal = (_int(get("scale_factor_temporal")) or _int(get("temporal_compression_ratio"))
                or (_int(getattr(module, "temporal_compression_ratio", None)) if module is not None else None))
    spatial = (_int(get("scale_factor_spatial")) or _int(get("spatial_compression_ratio"))
               or (_int(getattr(module, "spatial_compression_ratio", None)) if module is not None else None))
    if spatial is None and get("block_out_channels") and cls in ("AutoencoderKL", None):
        spatial = 2 ** (len(get("block_out_channels")) - 1)
    if temporal == 1:
        temporal = None  # AutoencoderDC says temporal_compression_ratio = 1: an image VAE
    if cls in _VIDEO_NTCHW:
        layout = "NTCHW"
    elif cls in _VIDEO or temporal:
        layout = "NCTHW"  # Qwen-Image too: its 3-D VAE takes (N, C, 1, H, W)
    else:
        layout = "NCHW"
    return dataclasses.replace(conv, temporal_compression=temporal if layout != "NCHW" else None,
                               spatial_compression=spatial, layout=layout, patch_size=patch)


def named_latent_convention(name: str) -> Convention:
    """A catalogue latent convention by name or short family name (``sdxl`` -> ``sdxl_latent``)."""
    try:
        conv = get_convention(name)
    except KeyError:
        conv = get_convention(f"{name}_latent")
    if conv.kind != "latent":
        raise ValueError(f"{conv.name} is a pixel convention, not a latent one")
    return conv


def _per_channel(z: torch.Tensor, values: Any, channel_dim: int) -> torch.Tensor:
    shape = [1] * z.dim()
    shape[channel_dim] = -1
    return torch.tensor(list(values), dtype=z.dtype, device=z.device).reshape(shape)


def latents_to_model(z: torch.Tensor, scale: float | None, shift: float | None, latents_mean: Any = None,
                     latents_std: Any = None, channel_dim: int = 1) -> torch.Tensor:
    """Raw VAE latents in the diffusion model's space, as the diffusers pipelines scale them after encode:
    ``(z - latents_mean) * scale / latents_std`` per channel when the VAE declares both, else
    ``(z - shift) * scale`` (the table above)."""
    s = float(scale or 1.0)
    if latents_mean is not None and latents_std is not None:
        m, sd = _per_channel(z, latents_mean, channel_dim), _per_channel(z, latents_std, channel_dim)
        return (z - m) * s / sd
    return (z - float(shift or 0.0)) * s


def latents_to_raw(z: torch.Tensor, scale: float | None, shift: float | None, latents_mean: Any = None,
                   latents_std: Any = None, channel_dim: int = 1) -> torch.Tensor:
    """The inverse of :func:`latents_to_model`: what the pipelines hand ``vae.decode``."""
    s = float(scale or 1.0)
    if latents_mean is not None and latents_std is not None:
        m, sd = _per_channel(z, latents_mean, channel_dim), _per_channel(z, latents_std, channel_dim)
        return z * sd / s + m
    return z / s + float(shift or 0.0)
