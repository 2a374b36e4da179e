"""Models seen through sharding and checkpointing wrappers, as the user wrote them.

Large diffusion and video models are trained sharded, and the wrappers change what a module looks like:

- FSDP2 (``torch.distributed.fsdp.fully_shard``) swaps a module's class for a generated subclass
  ``FSDP<Name>(FSDPModule, <Name>)`` made in ``torch.distributed.fsdp._fully_shard._fsdp_init``
  (pytorch/pytorch, torch/distributed/fsdp/_fully_shard/_fsdp_init.py; ``replicate`` makes
  ``Replicate<Name>`` the same way). :func:`user_class` finds the user's class in the MRO, so the
  readers that recognise models by class and module of origin (diffusers VAEs, timm, transformers, loss
  networks) still recognise them.
- FSDP1 (``FullyShardedDataParallel``) and activation checkpointing wrap a module in another one whose
  child is ``_fsdp_wrapped_module`` (torch/distributed/fsdp/_common_utils.py, ``FSDP_WRAPPED_MODULE``) or
  ``_checkpoint_wrapped_module`` (torch/distributed/algorithms/_checkpoint/checkpoint_wrapper.py), which
  puts those segments into every path below it. :func:`user_name` drops them, so taps are named as the user
  named the modules (``encoder:input``, not ``_fsdp_wrapped_module.encoder:input``) and ``expect=`` takes
  either spelling; :func:`user_named_modules` lists each module once by that name, the wrapped module (the
  user's own class) rather than its wrapper.

Nothing here imports ``torch.distributed``: wrappers are recognised by name and module of origin.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["WRAPPER_SEGMENTS", "user_class", "user_name", "user_named_modules"]

#: path segments that wrappers insert between a module and its children
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def user_class(obj: Any) -> type:
    """The class the user instantiated: ``type(obj)``, or for a module that FSDP2's ``fully_shard`` (or
    ``replicate``) gave a generated subclass (``FSDPAutoencoderKL``), the class it was made from."""
    cls = type(obj)
    for _ in range(4):  # fully_shard over replicate over ...: a few layers at most
        if not (getattr(cls, "__module__", "") or "").startswith("torch.distributed."):
            break
        inner = [b for b in cls.__bases__
                 if not (getattr(b, "__module__", "") or "").startswith("torch.distributed.") and cls.__name__.endswith(b.__name__)]
        if not inner:
            break
        cls = inner[0]
    return cls


def user_name(name: str) -> str:
    """A module path without the segments wrappers insert (``_fsdp_wrapped_module.encoder`` -> ``encoder``);
    also takes a tap key (``...:input``)."""
    if "_wrapped_module" not in name:
        return name
    path, sep, side = name.partition(":")
    return ".".join(p for p in path.split(".") if p not in WRAPPER_SEGMENTS) + sep + side


def user_named_modules(root: nn.Module, remove_duplicate: bool = True) -> list[tuple[str, nn.Module]]:
    """``root.named_modules()`` named by :func:`user_name`: a wrapper and the module it wraps share a name, and
    the wrapped module (listed after its wrapper) is the one kept, in the wrapper's place."""
    out: dict[str, nn.Module] = {}
    for name, m in root.named_modules(remove_duplicate=remove_duplicate):
        out[user_name(name)] = m
    return list(out.items())
