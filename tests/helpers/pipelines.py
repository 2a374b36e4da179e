"""A tiny random-init Stable Diffusion pipeline built offline: a diffusers ``UNet2DConditionModel`` and
``AutoencoderKL`` with SD 1.x's shapes scaled down (4 latent channels, cross-attention on 16-wide prompt embeddings,
no text encoder: the tests pass ``prompt_embeds``), the caller's scheduler, no safety checker.

Each test sets the UNet up its own way afterwards (e.g. ``conv_out`` zero-initialised); building draws the seeded
global generator in the same order as the tests did before it was shared (UNet, then VAE).
"""

from __future__ import annotations

from typing import Any

import torch


def tiny_sd_components(scheduler: Any, seed: int = 0) -> dict:
    """The keyword arguments of a ``StableDiffusionPipeline`` (or a sibling class) around ``scheduler``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )
    return dict(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def tiny_sd_pipe(scheduler: Any, seed: int = 0, cls: Any = None) -> Any:
    """``cls`` (default ``StableDiffusionPipeline``) of :func:`tiny_sd_components`, its progress bar off."""
    if cls is None:
        from diffusers import StableDiffusionPipeline as cls
    pipe = cls(**tiny_sd_components(scheduler, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe
