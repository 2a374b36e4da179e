"""Files in a folder (a front end's ``out_dir``): the one place rangewatch saves a PNG or a findings list of its own."""

from __future__ import annotations

import os

import torch

__all__ = ["save_png", "append_findings"]


def save_png(out_dir: str | os.PathLike, name: str, img: torch.Tensor) -> str:
    """``img`` (``(C, H, W)`` or a batch ``(N, C, H, W)`` laid out as torchvision's grid, float in [0, 1]) as
    ``<out_dir>/<name>`` (the folder made when missing), written with torchvision's ``save_image``; returns the path."""
    from torchvision.utils import save_image

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    save_image(img, path)
    return path


def append_findings(out_dir: str | os.PathLike, lines: list[str], name: str = "findings.txt") -> str:
    """``lines`` appended to ``<out_dir>/<name>`` (UTF-8, one a line; the folder made when missing); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(f"{line}\n" for line in lines)
    return path
