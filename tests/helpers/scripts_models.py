"""Tiny random-init models and datasets shaped like the public training scripts' (written from their structure).

- ``tiny_vae``: a diffusers ``AutoencoderKL`` (SD 1.x config: ``scaling_factor`` 0.18215, 4 latent channels) whose
  ``quant_conv`` is rescaled so that its latent means have the spread of the SD VAE's (std about
  1 / 0.18215 = 5.5, mean 0: what the scaling factor is for, LDM paper sec. 4.3.2): a random-init VAE's latents have
  std near 1, which would make the script's correct ``* scaling_factor`` look like a bug.
- ``tiny_text_encoder`` / ``tiny_unet`` / ``tiny_image_encoder``: transformers ``CLIPTextModel``, diffusers
  ``UNet2DConditionModel``, transformers ``CLIPVisionModelWithProjection``, tiny configs.
- ``PhotoDataset``: real photos (scikit-image) as PIL images, through the script's own torchvision transforms.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from helpers.photos import photo_batch

SIZE = 16


def photos_pil(n: int = 8, size: int = 32):
    from PIL import Image

    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in photo_batch(n, size)]


@torch.no_grad()
def calibrate_latents(conv: nn.Conv2d | nn.Conv3d, h: torch.Tensor, channels: int, target_std: float, target_mean: float = 0.0) -> None:
    """Rescale the moments conv (its first ``channels`` outputs are the latent means, the rest the log-variances)
    so that on the activations ``h`` the means have ``target_mean`` and ``target_std`` per channel, and the
    log-variances are very small (sampling adds next to no noise)."""
    out = conv(h)
    dims = [d for d in range(out.dim()) if d != 1]
    mu = out[:, :channels].mean(dim=dims)
    sd = out[:, :channels].std(dim=dims)
    k = target_std / sd
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight[:channels] *= k.view(shape)
    conv.bias[:channels] = (conv.bias[:channels] - mu) * k + target_mean
    conv.weight[channels:] = 0
    conv.bias[channels:] = -30.0


def tiny_vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=SIZE,
        scaling_factor=scaling_factor,
    )
    x = photo_batch(8, SIZE).float() / 127.5 - 1
    with torch.no_grad():
        h = vae.encoder(x)
    calibrate_latents(vae.quant_conv, h, 4, 1.0 / scaling_factor)
    return vae


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8))


def tiny_unet(cross_attention_dim: int = 16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=SIZE // 1, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=8, attention_head_dim=4,
    )


def tiny_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(3)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16))


def sd_transforms(normalize: bool = True, size: int = SIZE):
    """diffusers examples/text_to_image/train_text_to_image.py's train_transforms (without the random flip,
    which would draw from torch's generator in the dataset)."""
    steps = [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize([0.5], [0.5]))
    return transforms.Compose(steps)


class PhotoDataset(torch.utils.data.Dataset):
    """Photos with tokenised captions, as the scripts' datasets give them (``pixel_values``, ``input_ids``)."""

    def __init__(self, transform, n: int = 8, size: int = 32):
        self.images = photos_pil(n, size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"pixel_values": self.transform(self.images[i]), "input_ids": torch.arange(8) % 50 + i}


def rng_states():
    """Python's, numpy's and torch's CPU generator states (to compare runs)."""
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()
