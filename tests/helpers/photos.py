"""Real photographs shipped inside scikit-image (no download), as torch tensors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

COLOUR = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket", "colorwheel"]
GRAY = ["camera", "moon", "coins", "page", "grass", "gravel", "cell"]


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """HWC (or HW) uint8 array of a scikit-image photo; 'motorcycle_left/right' and 'logo' (RGBA) too."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(data, name)()


def all_names() -> list[str]:
    return COLOUR + ["motorcycle_left", "motorcycle_right", "logo"] + GRAY


def as_tensor(name: str, max_side: int = 384) -> torch.Tensor:
    """CHW uint8 tensor via torchvision's ToImage, downscaled so the longest side is <= max_side."""
    from torchvision.transforms import v2

    img = photo(name)
    t = v2.ToImage()(img)
    h, w = t.shape[-2:]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        t = v2.functional.resize(t, [max(8, int(h * s)), max(8, int(w * s))], antialias=True)
    return t.as_subclass(torch.Tensor)


def photo_batch(n: int = 8, size: int = 64, names: list[str] | None = None) -> torch.Tensor:
    """(n, 3, size, size) uint8 batch of real colour photos (centre crops, resized)."""
    from torchvision.transforms import v2

    names = names or ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle_left", "retina", "hubble_deep_field"]
    out = []
    for i in range(n):
        t = as_tensor(names[i % len(names)], 256)
        t = v2.functional.center_crop(t, [min(t.shape[-2:])] * 2)
        out.append(v2.functional.resize(t, [size, size], antialias=True))
    return torch.stack(out)


class PhotoSet(Dataset):
    """The first ``n`` photos at ``size`` (:func:`photo_batch`) as HWC uint8 arrays, as a dataset decoding image
    files hands them to its ``transform`` (an attribute, where transform inspection reads it)."""

    def __init__(self, transform, n: int = 4, size: int = 32):
        self.images = [img.permute(1, 2, 0).numpy() for img in photo_batch(n, size)]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])
