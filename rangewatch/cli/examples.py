"""Small real Lightning objects over the embedded photos, importable by ``class_path`` (used by
``configs/check_example.yaml`` and the README)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..expect.conventions import get_convention

__all__ = ["PhotoDataModule", "VAEModel"]


class PhotoDataModule(pl.LightningDataModule):
    """Restoration pairs (``lq``, ``gt``) from the embedded photos, in ``convention``."""

    def __init__(self, convention: str = "unit", batch_size: int = 4, size: int = 64) -> None:
        super().__init__()
        get_convention(convention)
        self.convention = convention
        self.batch_size = batch_size
        self.size = size

    def setup(self, stage: str | None = None) -> None:
        from .demo import PhotoPairs

        self.data = PhotoPairs(self.size, self.convention)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


class VAEModel(pl.LightningModule):
    """A diffusers ``AutoencoderKL`` (small config, random weights) reconstructing ``batch["gt"]``."""

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL(
            block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
            latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["gt"]
        return nn.functional.mse_loss(self.vae(x).sample, x)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-4)
