"""Latent taps to a TensorBoard ``SummaryWriter``: the RGB preview grid and the per-channel histograms of a
:class:`~rangewatch.checks.latents.LatentMonitor` (the writer side of ``checks/latents.py``)."""

from __future__ import annotations

from typing import Any

import torch

from ..checks.latents import LatentMonitor, latent_preview, preview_scale
from ..expect.conventions import Convention
from .loggers import write_histogram, write_image
from .tags import GROUP, latent_channel_tag, latent_preview_tag


def latent_grid(monitor: LatentMonitor, max_images: int = 4, scale: int | None = None) -> torch.Tensor | None:
    """The RGB preview grid of the last latents ``monitor`` kept (on the host), as :func:`log_latents` writes it;
    None when it kept none or its convention has no RGB projection."""
    mon = monitor
    if mon.last is None or mon.conv.latent_rgb is None:
        return None
    from torchvision.utils import make_grid

    clips = mon.last[:max_images]
    prev = latent_preview(clips, mon.conv, channel_dim=mon.channel_dim)
    # video latents: one row per clip, its first / middle / last frames (latent_preview's pick)
    per_row = prev.shape[0] // max(1, clips.shape[0]) if clips.dim() == 5 else min(max_images, prev.shape[0])
    k = preview_scale(int(prev.shape[-1])) if scale is None else max(1, int(scale))
    if k > 1:
        prev = prev.repeat_interleave(k, -1).repeat_interleave(k, -2)
    return make_grid(prev.float(), nrow=max(1, per_row), padding=1 if k == 1 else 2, pad_value=1.0).cpu()


def log_latents(
    experiment: Any,
    where: str,
    z_or_monitor: torch.Tensor | LatentMonitor,
    step: int,
    *,
    convention: str | Convention | None = None,
    channel_dim: int = 1,
    max_images: int = 4,
    prefix: str = GROUP,
    scale: int | None = None,
) -> list[str]:
    """Log the latent RGB preview grid and per-channel histograms to a TensorBoard ``SummaryWriter``.

    ``z_or_monitor``: a :class:`LatentMonitor` (its accumulated histograms and the last latents it
    kept) or a latent tensor (then ``convention`` is required). Histograms come from the device
    counts (``add_histogram_raw``); only the small preview image is copied to the host. Returns the tags.

    The preview is enlarged ``scale`` times (nearest neighbour; default: the smallest factor that
    makes each latent image at least :data:`rangewatch.checks.latents.PREVIEW_MIN_SIZE` pixels wide, at most 8), so a 32x32
    latent is readable; ``scale=1`` logs it at latent resolution. Padding between images: 1 pixel
    at ``scale=1``, else 2. Video latents (5-D, ``channel_dim`` 1 for ``(N, C, T, H, W)``, 2 for
    ``(N, T, C, H, W)``): one row per clip (at most ``max_images``) of its first, middle and last frames.
    """
    if isinstance(z_or_monitor, LatentMonitor):
        mon = z_or_monitor
    elif isinstance(z_or_monitor, torch.Tensor):
        if convention is None:
            raise ValueError("log_latents needs convention= when given a tensor")
        mon = LatentMonitor(convention, channel_dim=channel_dim, preview_samples=max_images)
        mon.update(z_or_monitor)
    else:
        raise TypeError(f"log_latents takes a LatentMonitor or a tensor, got {type(z_or_monitor).__name__}")
    return write_latents(experiment, where, mon, latent_grid(mon, max_images, scale), step, prefix)


def write_latents(experiment: Any, where: str, monitor: LatentMonitor, grid: torch.Tensor | None, step: int,
                  prefix: str = GROUP) -> list[str]:
    """The preview ``grid`` (:func:`latent_grid`; None: no preview) and ``monitor``'s per-channel histograms to a
    TensorBoard writer at ``<prefix>/<where>/latent_preview`` and ``.../latent_channel_<k>``; returns the tags."""
    tags: list[str] = []
    if grid is not None:
        tag = latent_preview_tag(where, prefix)
        write_image(experiment, tag, grid, step)
        tags.append(tag)
    summ = monitor.stats.compute()
    for c in range(summ.channels):
        tag = latent_channel_tag(where, c, prefix)
        if write_histogram(experiment, tag, summ, c, step):
            tags.append(tag)
    return tags
