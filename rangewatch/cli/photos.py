"""The real photographs rangewatch ships (from scikit-image, 96x96 centre crops) for the demo."""

from __future__ import annotations

from importlib import resources

import torch

__all__ = ["PHOTO_NAMES", "load_photos"]

PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry", "retina", "hubble_deep_field",
)


def load_photos(size: int = 64, names: tuple[str, ...] = PHOTO_NAMES) -> torch.Tensor:
    """(N, 3, size, size) uint8 tensor of the embedded photos."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    out = []
    for name in names:
        data = resources.files("rangewatch").joinpath("data", f"{name}.png").read_bytes()
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.shape[-1] != size:
            img = F.resize(img, [size, size], antialias=True)
        out.append(img)
    return torch.stack(out)
