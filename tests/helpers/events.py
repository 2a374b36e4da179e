"""Reading back what a run wrote to TensorBoard: the event files with every event kept, a logged image
decoded, and one image of a ``make_grid`` layout."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def read_events(logdir: str | Path) -> Any:
    """TensorBoard's ``EventAccumulator`` over ``logdir``, reloaded, every image, scalar, histogram and tensor
    event kept (no sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def decode_png(encoded: bytes) -> np.ndarray:
    """A logged image (``encoded_image_string``) as an HxWx3 uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def panel(grid: np.ndarray, row: int, col: int, h: int, w: int, pad: int = 2) -> np.ndarray:
    """One ``h`` x ``w`` image of a torchvision ``make_grid`` layout (padding ``pad``) as HWC."""
    y, x = pad + row * (h + pad), pad + col * (w + pad)
    return grid[y : y + h, x : x + w]
