"""Which axis of a tapped tensor holds the channels: from the module's own convention, else from the shape.

A module declares what it takes and gives: ``in_channels`` / ``out_channels`` on the module or its
``config`` (diffusers models), else those of its first / last convolution (``nn.Conv1d/2d/3d`` and
subclasses such as diffusers' ``WanCausalConv3d``). PyTorch convolutions take channels on dim 1, so
video reaches a 3-D convolution as ``(N, C, T, H, W)``; that is the axis a module tap reads, whatever
the number of frames (the Wan VAE encodes in temporal chunks of 1, then 4 frames: reading dim 2 would
see 1, then 4 "channels"). :func:`video_channel_dim` is the shape-only rule for 5-D batches, which may
be ``(N, C, T, H, W)`` (diffusers ``VideoProcessor``, Wan / HunyuanVideo / LTX / Mochi latents) or
``(N, T, C, H, W)`` (CogVideoX latents, many data loaders).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["module_channels", "channel_dim_for", "video_channel_dim", "latent_channel_dim", "convention_channel_dim", "LATENT_CHANNELS"]

#: latent channel counts of the published VAEs (SD/SDXL 4, Mochi 12, SD3/Flux.1/Wan 2.1/Qwen-Image/CogVideoX/
#: HunyuanVideo 16, SANA DC-AE 32, Wan 2.2 48, LTX-Video / Flux.2 (patchified) 128)
LATENT_CHANNELS = (4, 8, 12, 16, 32, 48, 64, 128)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _config(m: nn.Module, key: str) -> int | None:
    cfg = getattr(m, "config", None)
    if cfg is None:
        return None
    v = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    return _int(v)


def module_channels(m: nn.Module, side: str) -> int | None:
    """The channel count ``m`` takes (``side="input"``) or gives (``"output"``) by its own declaration;
    None when it declares none (a module without convolutions, a Linear-only block)."""
    key = "in_channels" if side == "input" else "out_channels"
    c = _int(getattr(m, key, None)) or _config(m, key)
    if c is not None:
        return c
    convs = [s for s in m.modules() if isinstance(s, _CONVS)]
    if not convs:
        return None
    return _int(getattr(convs[0] if side == "input" else convs[-1], key, None))


def channel_dim_for(t: torch.Tensor, channels: int) -> int | None:
    """The axis of ``t`` that carries ``channels`` channels, the module's convention first: dim 1
    (channels-first, what convolutions take), then dim 2 of a 5-D ``(N, T, C, H, W)`` tensor, then the last
    dim of a 4-D channels-last one; None when no axis has that size."""
    if t.dim() < 2:
        return None
    if t.shape[1] == channels:
        return 1
    if t.dim() == 5 and t.shape[2] == channels:
        return 2
    if t.dim() == 4 and t.shape[3] == channels:
        return 3
    return None


def video_channel_dim(shape: tuple[int, ...] | torch.Size, channels: tuple[int, ...]) -> int | None:
    """The channel axis of a 5-D video batch from its shape alone: dim 1 or dim 2, whichever size is in
    ``channels``; where both are, the one of size 3 (RGB) when only one is (``(1, 3, 1, H, W)``: one frame of
    RGB, ``(1, 1, 3, H, W)``: the same as ``(N, T, C, H, W)``), else dim 1 (PyTorch's ``Conv3d`` layout)."""
    a, b = shape[1] in channels, shape[2] in channels
    if a and b:
        if shape[2] == 3 and shape[1] != 3:
            return 2
        return 1
    if a:
        return 1
    if b:
        return 2
    return None


def latent_channel_dim(t: torch.Tensor) -> int | None:
    """The channel axis of a float tensor a batch names as latents (``batch.latents``): 4-D ``(N, C, H, W)``
    or 5-D video ``(N, C, T, H, W)`` / ``(N, T, C, H, W)`` with C a published latent channel count
    (:data:`LATENT_CHANNELS`); dim 1 where both dims 1 and 2 could be. None otherwise."""
    if not t.is_floating_point() or t.numel() == 0:
        return None
    s = t.shape
    if t.dim() == 4 and s[1] in LATENT_CHANNELS and min(s[2], s[3]) >= 2:
        return 1
    if t.dim() == 5 and min(s[3], s[4]) >= 2:
        if s[1] in LATENT_CHANNELS:
            return 1
        if s[2] in LATENT_CHANNELS:
            return 2
    return None


def convention_channel_dim(t: torch.Tensor, conv: object) -> int | None:
    """The channel axis of ``t`` under an expected convention: its channel count (latent conventions carry
    one), and for 5-D latents its layout (CogVideoX keeps ``(N, T, C, H, W)``: dim 2 even when T equals C)."""
    c = getattr(conv, "channels", None)
    if not c:
        return None
    if getattr(conv, "layout", None) == "NTCHW" and t.dim() == 5 and t.shape[2] == c:
        return 2
    return channel_dim_for(t, c)
