"""LightningDataModules and LightningModules that the ``rangewatch check`` test configs name by
``class_path`` (``helpers.fixtures_check.PhotoDataModule`` ...). ``tests/`` must be on ``sys.path``
(tests/conftest.py does it in-process; subprocess runs set PYTHONPATH).

The data are real photos (scikit-image, via tests/helpers/photos.py) run through real torchvision v2
transforms, so the loader prediction (read from the transforms) and the observed ranges agree.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from helpers.models import ConvAutoEncoder
from helpers.photos import photo_batch

NORMALIZE = ("unit", "symmetric", "imagenet", "uint8")


def make_transform(normalize: str) -> v2.Compose:
    if normalize == "uint8":
        return v2.Compose([v2.RandomHorizontalFlip(p=0.0)])
    steps: list = [v2.ToDtype(torch.float32, scale=True)]
    if normalize == "symmetric":
        steps.append(v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))
    elif normalize == "imagenet":
        steps.append(v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    return v2.Compose(steps)


class PhotoDataset(Dataset):
    """Real uint8 photos (C, H, W) through ``transform``; items are ``{"image": tensor, "label": int}``."""

    def __init__(self, n: int = 16, size: int = 32, transform=None):
        self.images = photo_batch(n, size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x, "label": i % 3}


class PhotoDataModule(pl.LightningDataModule):
    """``normalize``: "unit" (ToDtype scale=True -> [0, 1]), "symmetric" (+ Normalize(0.5, 0.5) -> [-1, 1]),
    "imagenet", or "uint8" (no conversion)."""

    def __init__(self, normalize: str = "unit", batch_size: int = 4, n: int = 16, size: int = 32):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize={normalize!r}: choose one of {NORMALIZE}")
        self.normalize = normalize
        self.batch_size = batch_size
        self.n = n
        self.size = size
        self.train_set: PhotoDataset | None = None
        self.prepared = False

    def prepare_data(self) -> None:
        self.prepared = True

    def setup(self, stage: str) -> None:
        if not self.prepared:
            raise RuntimeError("prepare_data() was not called before setup()")
        self.train_set = PhotoDataset(self.n, self.size, make_transform(self.normalize))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)


class ScaleOnDeviceDataModule(PhotoDataModule):
    """Yields uint8 batches and converts them to [-1, 1] in ``on_after_batch_transfer`` (GPU-side
    preprocessing): the check must see the batch after that hook, as the model does."""

    def __init__(self, batch_size: int = 4):
        super().__init__("uint8", batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        batch["image"] = batch["image"].float() / 127.5 - 1
        return batch


class ConvVAEModule(ConvAutoEncoder):
    """A VAE-shaped module: ``self.vae.encoder`` / ``self.vae.decoder`` convs; training_step encodes
    ``batch["image"]`` as it comes (no re-normalisation)."""

    def __init__(self, latent_channels: int = 4):
        super().__init__(latent_channels, key="image")

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)  # no Trainer in a pre-flight check: Lightning warns, the check hides it
        return loss


class DiffusersVAEModule(pl.LightningModule):
    """A tiny real ``diffusers.AutoencoderKL`` as ``self.vae``: rangewatch derives that ``vae.encoder``
    wants [-1, 1] from the model itself. training_step only encodes."""

    def __init__(self):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL(
            block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
            latent_channels=4, norm_num_groups=8, sample_size=32,
        )

    def training_step(self, batch, batch_idx):
        latents = self.vae.encode(batch["image"]).latent_dist.sample() * self.vae.config.scaling_factor
        return latents.pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class ManualOptModule(ConvVAEModule):
    """Manual optimisation: training_step needs a Trainer (``self.optimizers()``) and fails in a check;
    validation_step does the same forward."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.validation_step(batch, batch_idx)
        self.manual_backward(loss)
        opt.step()

    def validation_step(self, batch, batch_idx):
        return ConvAutoEncoder.training_step(self, batch, batch_idx)  # the reconstruction loss, not logged


class BrokenModule(ConvVAEModule):
    """training_step raises before it reaches the VAE."""

    def training_step(self, batch, batch_idx):
        raise KeyError("lq")
