"""Taps: where tensors are seen.

- :func:`find_images` walks a batch (tensor, tuple/list, dict, nested) and names the image-like
  tensors by path: ``batch``, ``batch[0]``, ``batch.image``, ``batch.cond.pixels``.
- :class:`ModuleTaps` adds forward (pre-)hooks to named submodules and hands their input/output
  tensors to a callback; hooks never change what flows through the model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import compiled as compile_hooks

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "ImageTensor", "find_images", "resolve_path", "image_channel_dim", "odd_tensor_kind",
           "ModuleTaps", "parse_tap_key", "DEFAULT_SKIP_KEYS"]

#: batch keys that hold masks, labels and other non-image tensors even when they are image-shaped
DEFAULT_SKIP_KEYS: tuple[str, ...] = ("*mask*", "*label*", "*seg*", "*depth*", "*flow*", "*token*", "*ids*", "*target_idx*")

_IMAGE_CHANNELS = (1, 3, 4)
_PIXEL_KWARGS = ("pixel_values", "x", "sample", "images", "image", "input")
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
    C wins when both read); 5-D video ``(N, T, C, H, W)`` or
    ``(N, C, T, H, W)``; C in ``channels`` and spatial sides of at least 8. Only float and uint8,
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
    elif t.dim() == 5:
        if s[2] in channels and min(s[3], s[4]) >= _MIN_SIDE:
            return 2
        if s[1] in channels and min(s[3], s[4]) >= _MIN_SIDE:
            return 1
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
    if cd is not None:
        out.append(ImageTensor(path, obj, cd))


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


def parse_tap_key(key: str) -> tuple[str, str]:
    """``"vae.encoder"`` -> (``"vae.encoder"``, ``"input"``); ``"decoder:output"`` -> (``"decoder"``, ``"output"``)."""
    if ":" in key:
        name, side = key.rsplit(":", 1)
        if side not in ("input", "output"):
            raise ValueError(f"tap {key!r}: the part after ':' must be 'input' or 'output', got {side!r}")
        return name, side
    return key, "input"


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a module's args/outputs (tensor, tuple, list, dict, ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        for v in obj.values():
            t = first_tensor(v)
            if t is not None:
                return t
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            t = first_tensor(v)
            if t is not None:
                return t
    else:
        for attr in ("sample", "latent_dist"):  # diffusers outputs
            v = getattr(obj, attr, None)
            if isinstance(v, torch.Tensor):
                return v
            mean = getattr(v, "mean", None)
            if isinstance(mean, torch.Tensor):
                return mean
    return None


def _module_input(args: Any, kwargs: Any) -> torch.Tensor | None:
    """The tensor a forward pre-hook measures: the first positional tensor, else a pixel keyword
    (transformers models take ``pixel_values=...``), else the first keyword tensor."""
    t = first_tensor(args)
    if t is None and kwargs:
        t = first_tensor([kwargs[k] for k in _PIXEL_KWARGS if k in kwargs] or list(kwargs.values()))
    return t


def is_script_module(m: nn.Module) -> bool:
    """TorchScript modules take no Python forward hooks."""
    return isinstance(m, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule))


class ModuleTaps:
    """Forward hooks on named submodules; ``on_tensor(tap_name, tensor)`` sees a module's first
    input tensor (``"<name>:input"``) and/or first output tensor (``"<name>:output"``).

    Hook bodies never raise into the model (``on_error(tap_name, exception)`` hears of a failure)
    and are invisible to ``torch.compile``: inside a compiled model each hook is one call of the
    rangewatch operator (:mod:`rangewatch.taps.compiled`; no graph break, no guard on rangewatch's
    state), and ``on_tensor`` runs at run time with the tensor, in its eager strides (a buffer of the
    compiled code, which reuses it after the call: ``on_tensor`` copies what it keeps, as it must
    in eager mode, where the model may change the tensor in place later). Modules whose hooks cannot be placed (TorchScript
    modules) are skipped, with a line in :attr:`skipped`; a module whose registration fails keeps
    none of its hooks."""

    def __init__(self, on_tensor: Callable[[str, torch.Tensor], None], on_error: Callable[[str, BaseException], None] | None = None):
        self.on_tensor = on_tensor
        self.on_error = on_error
        self.handles: list[RemovableHandle] = []
        self.attached: dict[str, tuple[str, ...]] = {}
        self.skipped: list[str] = []
        self._keys: list[int] = []  # rangewatch operator keys of the placed hooks (compile_hooks)

    def attach(self, root: nn.Module, wanted: dict[str, set[str]]) -> list[str]:
        """Hook ``{module name: {"input", "output"}}``; returns the names that do not exist."""
        self.detach()
        # every name a module is reachable by: `self.decoder = self.vae.decoder` registers one module
        # twice, and named_modules() would only list the first name (vae.decoder)
        modules = dict(root.named_modules(remove_duplicate=False))
        missing = []
        try:
            for name, sides in wanted.items():
                mod = modules.get(name)
                if mod is None:
                    missing.append(name)
                    continue
                if is_script_module(mod):
                    self.skipped.append(
                        f"{name} is a TorchScript module ({type(mod).__name__}), which takes no forward hooks: not watched; "
                        "watch the module that calls it, or the batch, instead"
                    )
                    continue
                placed: list[RemovableHandle] = []
                try:
                    if "input" in sides:
                        placed.append(mod.register_forward_pre_hook(self._pre_hook(f"{name}:input"), with_kwargs=True))
                    if "output" in sides:
                        placed.append(mod.register_forward_hook(self._hook(f"{name}:output")))
                except Exception as e:  # noqa: BLE001  (this module keeps none of its hooks)
                    for h in placed:
                        h.remove()
                    self.skipped.append(f"{name}: its hooks cannot be placed ({type(e).__name__}: {str(e)[:160]}): not watched")
                    continue
                self.handles.extend(placed)
                self.attached[name] = tuple(sorted(sides))
        except BaseException:
            self.detach()  # never leave some hooks behind
            raise
        return missing

    def _fail(self, tap: str, e: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(tap, e)
            except Exception:  # noqa: BLE001
                pass

    def _deliver(self, tap: str) -> Callable[[list[torch.Tensor], str], None]:
        """The run-time half of a hook traced into a compiled graph: the tensor it measures goes to
        ``on_tensor``, as in eager mode (see :mod:`rangewatch.taps.compiled`)."""

        def deliver(tensors: list[torch.Tensor], tag: str) -> None:
            try:
                self.on_tensor(tap, tensors[0])
            except Exception as e:  # noqa: BLE001  (never raised into the model)
                self._fail(tap, e)

        return deliver

    def _hook_pair(self, tap: str, pick: Callable[..., torch.Tensor | None], eager: Callable) -> Callable:
        """``eager`` (the hook body) in eager mode; inside a graph being traced, one call of the
        rangewatch operator with the picked tensor (no graph break, no guard on rangewatch's state),
        or ``eager`` as a graph break for a tensor the operator cannot take (nested, sparse)."""
        def measure(*rest: Any) -> tuple[list[torch.Tensor], str] | None:
            t = pick(*rest)
            if t is None:
                return compile_hooks.SKIP
            if not (t.layout == torch.strided and not t.is_nested):
                return None
            return [t.detach()], ""

        return compile_hooks.hook_in_graph(self._keys, self._deliver(tap), eager, measure)

    def _pre_hook(self, tap: str) -> Callable:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            try:
                t = _module_input(args, kwargs)
                if t is not None:
                    self.on_tensor(tap, t)
            except Exception as e:  # noqa: BLE001  (never raised into the model)
                self._fail(tap, e)
            return None

        return self._hook_pair(tap, _module_input, hook)

    def _hook(self, tap: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            try:
                t = first_tensor(output)
                if t is not None:
                    self.on_tensor(tap, t)
            except Exception as e:  # noqa: BLE001  (never raised into the model)
                self._fail(tap, e)
            return None

        return self._hook_pair(tap, lambda args, output: first_tensor(output), hook)

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for k in self._keys:
            compile_hooks.unregister(k)
        self._keys.clear()
        self.attached.clear()
        self.skipped.clear()
