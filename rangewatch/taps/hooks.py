"""Module taps: :class:`ModuleTaps` adds forward (pre-)hooks to named submodules and hands their
input/output tensors to a callback; hooks never change what flows through the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import compiled as compile_hooks
from .sharding import user_named_modules
from .layout import module_channels

__all__ = ["ModuleTaps", "parse_tap_key", "first_tensor", "is_script_module"]

_PIXEL_KWARGS = ("pixel_values", "x", "sample", "images", "image", "input")


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
        #: tap name -> the channel count its module declares for that side (in_channels / out_channels, of the
        #: module, its config or its first / last convolution): the tap reads the axis that carries it
        self.channels: dict[str, int] = {}
        self._keys: list[int] = []  # rangewatch operator keys of the placed hooks (compile_hooks)

    def attach(self, root: nn.Module, wanted: dict[str, set[str]]) -> list[str]:
        """Hook ``{module name: {"input", "output"}}``; returns the names that do not exist."""
        self.detach()
        # every name a module is reachable by: `self.decoder = self.vae.decoder` registers one module
        # twice, and named_modules() would only list the first name (vae.decoder)
        modules = dict(user_named_modules(root, remove_duplicate=False))  # as the user named them (sharding.py)
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
                for side in sides:
                    try:
                        c = module_channels(mod, side)
                    except Exception:  # noqa: BLE001  (the shape rule decides then)
                        c = None
                    if c is not None:
                        self.channels[f"{name}:{side}"] = c
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
        self.channels.clear()
