"""Batch taps: :func:`find_images` walks a batch (tensor, tuple/list, dict, nested) and names the
image-like tensors by path: ``batch``, ``batch[0]``, ``batch.image``, ``batch.cond.pixels``.
Module taps (forward hooks) are :mod:`rangewatch.taps.hooks`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .layout import latent_channel_dim, video_channel_dim

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "ImageTensor", "find_images", "resolve_path", "image_channel_dim", "odd_tensor_kind",
           "DEFAULT_SKIP_KEYS", "tensor_paths"]

#: batch keys that hold masks, labels and other non-image tensors even when they are image-shaped
DEFAULT_SKIP_KEYS: tuple[str, ...] = ("*mask*", "*label*", "*seg*", "*depth*", "*flow*", "*token*", "*ids*", "*target_idx*")

_IMAGE_CHANNELS = (1, 3, 4)
_MIN_SIDE = 8
_PIXEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8)


@dataclass(frozen=True)
class ImageTensor:
    path: str
    tensor: torch.Tensor
    channel_dim: int


def odd_tensor_kind(t: torch.Tensor) -> str | None:
    """What keeps rangewatch from reading a tensor's values (``"nested"``, ``"sparse_coo"``, ``"meta"``,
    ``"a tensor subclass FakeTensor"``...), or None for a plain dense tensor with values."""
    try:
        if t.is_nested:
            return "nested"
        if t.layout != torch.strided:
            return str(t.layout).replace("torch.", "")
        if t.is_meta or t.device.type == "meta":
            return "meta"
        if type(t) is not torch.Tensor and type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
            # a wrapper subclass (DTensor, FakeTensor, functionalised tensors): reading its values may
            # run collectives or fail; plain subclasses (torchvision tv_tensors, Parameter) are read as tensors
            return f"{type(t).__name__} (a wrapper tensor subclass)"
    except Exception as e:  # noqa: BLE001  (a tensor-like that cannot even say what it is)
        return f"unreadable ({type(e).__name__})"
    return None


def image_channel_dim(t: torch.Tensor, channels: tuple[int, ...] = _IMAGE_CHANNELS) -> int | None:
    """The channel dim of an image-like batch tensor, or None.

    4-D ``(N, C, H, W)`` (any memory format) or channels-last ``(N, H, W, C)`` (uint8 with C in
    ``channels``, float with C = 3: the CompVis data classes' NHWC ``image / 127.5 - 1``; a leading
    C wins when both read); 5-D video ``(N, C, T, H, W)`` or ``(N, T, C, H, W)`` (the RGB axis where only one
    axis is 3, else dim 1: :func:`rangewatch.taps.layout.video_channel_dim`); C in ``channels`` and spatial sides of at least 8. Only float and uint8,
    dense tensors with values (nested, sparse and meta tensors are not image-like here: see
    :func:`odd_tensor_kind`).
    """
    if not isinstance(t, torch.Tensor) or odd_tensor_kind(t) is not None or t.dtype not in _PIXEL_DTYPES or t.numel() == 0:
        return None
    s = t.shape
    if t.dim() == 4:
        if s[1] in channels and min(s[2], s[3]) >= _MIN_SIDE:
            return 1
        if s[3] in channels and min(s[1], s[2]) >= _MIN_SIDE and (t.dtype == torch.uint8 or s[3] == 3):
            return 3  # channels-last: uint8 (PIL / numpy images), or float RGB (CompVis `image / 127.5 - 1`)
    elif t.dim() == 5 and min(s[3], s[4]) >= _MIN_SIDE:
        return video_channel_dim(s, channels)
    return None


@functools.lru_cache(maxsize=4096)
def _skipped(path: str, key: str, skip: tuple[str, ...]) -> bool:
    # cached: the same keys come back every step, and fnmatch over every pattern is not free
    k = key.lower()
    return any(fnmatch.fnmatch(k, pat) or fnmatch.fnmatch(path.lower(), pat) for pat in skip)


#: how deep :func:`find_images` walks a batch, and how many items of a list it walks
MAX_DEPTH = 6
MAX_ITEMS = 16


def _sample_list(obj: list | tuple) -> int | None:
    """Channel dim (0) when ``obj`` is a per-sample list of ``(C, H, W)`` image tensors (detection and
    variable-size batches: ``collate_fn=lambda b: b``-style lists), else None."""
    first = obj[0]
    if not (isinstance(first, torch.Tensor) and first.dim() == 3):
        return None
    if image_channel_dim(first[None]) != 1:
        return None
    for v in obj:
        if not (isinstance(v, torch.Tensor) and v.dim() == 3 and v.shape[0] == first.shape[0] and v.dtype == first.dtype):
            return None
    return 0


def _skip_note(notes: list[tuple[str, str]] | None, path: str, why: str) -> None:
    if notes is not None:
        notes.append((path, why))


def _holds_tensor(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 3:
        return False
    if isinstance(obj, Mapping):
        return any(_holds_tensor(v, depth + 1) for v in list(obj.values())[:MAX_ITEMS])
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in obj[:MAX_ITEMS])
    return False


def _leaf(obj: torch.Tensor, path: str, out: list[ImageTensor], notes: list[tuple[str, str]] | None) -> None:
    """One tensor leaf; an odd one (nested, sparse, meta, a subclass, one whose shape cannot be
    read) is skipped with a note, never raised: the rest of the batch is still watched."""
    try:
        if type(obj) is torch.Tensor and obj.layout is torch.strided and not obj.is_nested and obj.device.type != "meta":
            cd = image_channel_dim(obj)  # the common case: no further checks every step
        else:
            kind = odd_tensor_kind(obj)
            if kind is not None:
                _skip_note(notes, path, f"a {kind} tensor (rangewatch reads dense tensors only)")
                return
            cd = image_channel_dim(obj)
    except Exception as e:  # noqa: BLE001
        _skip_note(notes, path, f"its shape or dtype could not be read ({type(e).__name__}: {str(e)[:120]})")
        return
    if "latent" in path.rsplit(".", 1)[-1].lower():  # batch.latents (cached VAE latents, video ones too): a latent tap
        cd = latent_channel_dim(obj) if obj.dim() in (4, 5) else None
        cd = image_channel_dim(obj) if cd is None else cd
    if cd is not None:
        out.append(ImageTensor(path, obj, cd))
    elif obj.is_complex() and notes is not None:  # image-shaped or not: its values have no range to read
        _skip_note(notes, path, f"a {str(obj.dtype).replace('torch.', '')} tensor of shape {tuple(obj.shape)}: "
                                "complex values have no value range to check (watch its .abs() or .real by name with watch.tensor)")


def _collect(obj: Any, path: str, skip: tuple[str, ...], depth: int, out: list[ImageTensor],
             notes: list[tuple[str, str]] | None = None) -> None:
    # plain recursion into a list (no generators): it runs every step
    if isinstance(obj, torch.Tensor):
        _leaf(obj, path, out, notes)
        return
    if depth > MAX_DEPTH:
        if notes is not None and _holds_tensor(obj):
            _skip_note(notes, path, f"nested deeper than {MAX_DEPTH} levels: not walked (name it in batch_keys or flatten the batch)")
        return
    t = type(obj)
    if t is tuple or t is list:  # the common batch types, before the ABC checks
        n = len(obj)
        if n and _sample_list(obj) is not None:  # per-sample (C, H, W) images: one tap for them all
            for v in obj:
                out.append(ImageTensor(f"{path}[*]", v[None], 1))
            return
        for i in range(min(n, MAX_ITEMS)):
            _collect(obj[i], f"{path}[{i}]", skip, depth + 1, out, notes)
        if n > MAX_ITEMS and notes is not None and _holds_tensor(obj[MAX_ITEMS:]):
            _skip_note(notes, f"{path}[{MAX_ITEMS}:]", f"a list of {n} items: only the first {MAX_ITEMS} are walked")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str) and not _skipped(f"{path}.{k}", k, skip):
                _collect(v, f"{path}.{k}", skip, depth + 1, out, notes)
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, str):
        fields = getattr(obj, "_fields", None)  # namedtuple
        if not fields and len(obj) and _sample_list(obj) is not None:
            for v in obj:
                out.append(ImageTensor(f"{path}[*]", v[None], 1))
            return
        for i, v in enumerate(obj[:MAX_ITEMS]):
            if fields:
                if not _skipped(f"{path}.{fields[i]}", fields[i], skip):
                    _collect(v, f"{path}.{fields[i]}", skip, depth + 1, out, notes)
            else:
                _collect(v, f"{path}[{i}]", skip, depth + 1, out, notes)
        if len(obj) > MAX_ITEMS and notes is not None and _holds_tensor(obj[MAX_ITEMS:]):
            _skip_note(notes, f"{path}[{MAX_ITEMS}:]", f"a sequence of {len(obj)} items: only the first {MAX_ITEMS} are walked")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if not _skipped(f"{path}.{f.name}", f.name, skip):
                _collect(getattr(obj, f.name, None), f"{path}.{f.name}", skip, depth + 1, out, notes)


def find_images(batch: Any, keys: list[str] | None = None, skip_keys: tuple[str, ...] = DEFAULT_SKIP_KEYS,
                notes: list[tuple[str, str]] | None = None) -> list[ImageTensor]:
    """Image-like tensors in ``batch``, named by path. ``keys`` (paths such as ``"batch.lq"`` or
    just ``"lq"``) restricts the result; token ids, masks, labels and scalars are skipped.

    Walked: tensors, tuples/lists, mappings, namedtuples (``batch.<field>``), dataclasses
    (``batch.<field>``); a per-sample list of ``(C, H, W)`` images is one entry per sample under one
    path ``batch.images[*]`` (each as ``(1, C, H, W)``). Not walked: lists past their first
    :data:`MAX_ITEMS` items and nesting deeper than :data:`MAX_DEPTH`; when ``notes`` is a list,
    ``(path, why)`` is appended for each such place that holds tensors, and for each odd leaf
    (nested, sparse, meta tensors), which is skipped alone.

    >>> import torch
    >>> [(i.path, i.channel_dim) for i in find_images({"image": torch.zeros(2, 32, 32, 3)})]
    [('batch.image', 3)]
    """
    found: list[ImageTensor] = []
    _collect(batch, "batch", skip_keys if type(skip_keys) is tuple else tuple(skip_keys), 0, found, notes)
    if keys:
        wanted = {k if k.startswith("batch") else f"batch.{k}" for k in keys} | set(keys)
        found = [f for f in found if f.path in wanted]
    return found


def resolve_path(batch: Any, path: str) -> torch.Tensor | None:
    """The tensor at a batch path such as ``batch.cond.latents`` or ``batch[1]`` (None if absent)."""
    import re

    if not path.startswith("batch"):
        return None
    obj = batch
    for name, index in re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", path[len("batch"):]):
        try:
            if index:
                obj = obj[int(index)]
            elif isinstance(obj, Mapping):
                obj = obj[name]
            else:
                obj = getattr(obj, name)
        except (KeyError, IndexError, AttributeError, TypeError):
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def tensor_paths(batch: Any, limit: int = 24) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor in ``batch`` with its path (named as :func:`find_images` names them, skipped keys
    included) and shape, up to ``limit`` of them: what a batch carries, to say where a declared path is
    not. Never raises (a leaf that cannot be read is left out).

    >>> import torch
    >>> tensor_paths((torch.zeros(2, 3, 8, 8), {"ids": torch.zeros(2, 7)}))
    [('batch[0]', (2, 3, 8, 8)), ('batch[1].ids', (2, 7))]
    """
    out: list[tuple[str, tuple[int, ...]]] = []

    def walk(obj: Any, path: str, depth: int) -> None:
        if len(out) >= limit or depth > MAX_DEPTH:
            return
        if isinstance(obj, torch.Tensor):
            try:
                out.append((path, tuple(int(s) for s in obj.shape)))
            except Exception:  # noqa: BLE001
                pass
        elif isinstance(obj, Mapping):
            for k, v in list(obj.items())[:MAX_ITEMS]:
                if isinstance(k, str):
                    walk(v, f"{path}.{k}", depth + 1)
        elif isinstance(obj, (list, tuple)) and not isinstance(obj, str):
            fields = getattr(obj, "_fields", None)
            for i, v in enumerate(obj[:MAX_ITEMS]):
                walk(v, f"{path}.{fields[i]}" if fields else f"{path}[{i}]", depth + 1)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name, None), f"{path}.{f.name}", depth + 1)

    try:
        walk(batch, "batch", 0)
    except Exception:  # noqa: BLE001
        pass
    return out
