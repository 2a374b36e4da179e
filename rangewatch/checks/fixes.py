"""Concrete fix text: how to turn data in one convention into another."""

from __future__ import annotations

from ..expect.conventions import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Convention, get_convention

__all__ = ["conversion_fix", "normalize_call"]

_NAMED = {
    (IMAGENET_MEAN, IMAGENET_STD): "Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)",
    (CLIP_MEAN, CLIP_STD): "Normalize(mean=CLIP_MEAN, std=CLIP_STD)",
}


def _half(channels: int) -> str:
    """``[0.5]`` for one channel, ``[0.5, 0.5, 0.5]`` for RGB: the constants a Normalize of that data takes."""
    return "[" + ", ".join(["0.5"] * max(1, channels)) + "]"


def normalize_call(conv: Convention, channels: int = 3) -> str:
    """The torchvision call that maps [0, 1] into ``conv`` (for data with ``channels`` channels)."""
    if conv.name == "unit":
        return "ToDtype(torch.float32, scale=True)"
    if conv.name in ("uint8", "float255"):
        return "x * 255"
    if conv.mean == (0.5,) and conv.std == (0.5,):
        return f"Normalize(mean={_half(channels)}, std={_half(channels)})"
    named = _NAMED.get((conv.mean, conv.std))
    if named and channels == len(conv.mean):
        return named
    return f"Normalize(mean={list(conv.mean_for(channels))}, std={list(conv.std_for(channels))})"


def _simple(o: str, e: str, channels: int) -> str | None:
    h = _half(channels)
    return {
        ("unit", "symmetric"): f"apply x * 2 - 1 (Normalize(mean={h}, std={h}))",
        ("symmetric", "unit"): "apply (x + 1) / 2, or drop the Normalize(0.5, 0.5)",
        ("uint8", "unit"): "convert with ToDtype(torch.float32, scale=True) (x / 255)",
        ("float255", "unit"): "divide by 255 (ToDtype(torch.float32, scale=True) on the uint8 image)",
        ("uint8", "symmetric"): "apply x / 127.5 - 1 (ToDtype(torch.float32, scale=True) then Normalize(0.5, 0.5))",
        ("float255", "symmetric"): "apply x / 127.5 - 1",
        ("unit", "float255"): "multiply by 255",
        ("symmetric", "float255"): "apply (x + 1) * 127.5",
    }.get((o, e))


def conversion_fix(observed: str | Convention, expected: str | Convention, where: str = "", channels: int = 3) -> str:
    """One sentence saying how to turn ``observed`` data into ``expected`` before ``where``.

    >>> conversion_fix("unit", "symmetric", channels=1)
    'apply x * 2 - 1 (Normalize(mean=[0.5], std=[0.5]))'
    """
    o, e = get_convention(observed), get_convention(expected)
    at = f" before {where}" if where else ""
    if o.kind == "latent" or e.kind == "latent":
        return f"scale latents as {e.label}{at}"
    simple = _simple(o.name, e.name, channels)
    if simple:
        return simple + at
    if e.name == "uint8":
        return f"convert to uint8 (x * 255).round().to(torch.uint8){at}"
    target = normalize_call(e, channels)
    if o.name in ("unit",):
        return f"apply {target}{at}"
    if o.name in ("uint8", "float255"):
        return f"apply ToDtype(torch.float32, scale=True) then {target}{at}"
    if o.name == "symmetric":
        return f"map back to [0,1] with (x + 1) / 2, then apply {target}{at} (or replace Normalize(0.5, 0.5) with {target})"
    return f"replace {normalize_call(o, channels)} with {target}{at}"
