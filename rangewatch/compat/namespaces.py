"""The two Lightning namespaces: ``lightning.pytorch`` and the older ``pytorch_lightning``.

``lightning`` 2.x installs both packages and they have separate class hierarchies: a
``pytorch_lightning.LightningModule`` is not a ``lightning.pytorch.LightningModule``, a
``pytorch_lightning`` ``TensorBoardLogger`` is not a ``lightning.pytorch`` one, and each Trainer
checks its callbacks against its own ``Callback``. Much published training code (CompVis
latent-diffusion and taming-transformers, many basicsr ports) imports ``pytorch_lightning``.
rangewatch works with either: :data:`CALLBACK_BASES` are the ``Callback`` classes a rangewatch
callback derives from, and the helpers below answer in the namespace of the object they are given.

>>> from rangewatch.compat.namespaces import namespace_of
>>> import lightning.pytorch as pl
>>> namespace_of(pl.LightningModule())
'lightning.pytorch'
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

import lightning.pytorch as _lp

__all__ = ["CALLBACK_BASES", "NAMESPACES", "namespace_of", "lightning_namespaces", "is_overridden", "sync_rank_zero", "tensorboard_logger_types"]

#: the package names, newest first
NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def _import_ptl() -> ModuleType | None:
    if "pytorch_lightning" in sys.modules:
        return sys.modules["pytorch_lightning"]
    try:
        if importlib.util.find_spec("pytorch_lightning") is None:
            return None
        return importlib.import_module("pytorch_lightning")
    except Exception:  # noqa: BLE001 - a broken optional install must not break rangewatch
        return None


_ptl = _import_ptl()

#: the ``Callback`` classes of every importable namespace (``lightning.pytorch`` first)
CALLBACK_BASES: tuple[type, ...] = (_lp.Callback,) + ((_ptl.Callback,) if _ptl is not None else ())


def lightning_namespaces() -> list[ModuleType]:
    """The importable namespaces' top-level modules (``lightning.pytorch`` first)."""
    return [_lp] + ([_ptl] if _ptl is not None else [])


def namespace_of(obj: Any) -> str | None:
    """``"lightning.pytorch"`` or ``"pytorch_lightning"``: the namespace whose Trainer,
    LightningModule, LightningDataModule, Callback or logger ``obj`` is (None: neither)."""
    for ns in lightning_namespaces():
        kinds = [ns.Trainer, ns.LightningModule, ns.LightningDataModule, ns.Callback]
        loggers = getattr(ns, "loggers", None)
        if loggers is not None and hasattr(loggers, "Logger"):
            kinds.append(loggers.Logger)
        if isinstance(obj, tuple(kinds)):
            return ns.__name__
    mod = type(obj).__module__ or ""
    for name in NAMESPACES:
        if mod == name or mod.startswith(name + "."):
            return name
    return None


def is_overridden(method_name: str, instance: Any) -> bool:
    """Lightning's ``is_overridden`` from the namespace ``instance`` belongs to: each one only knows
    its own ``LightningModule`` / ``LightningDataModule`` / ``Callback`` and raises ``ValueError:
    Expected a parent`` for the other's. False for None and for objects of neither namespace."""
    if instance is None:
        return False
    ns = namespace_of(instance)
    if ns is None:
        return False
    helpers = importlib.import_module(f"{ns}.utilities.model_helpers")
    return bool(helpers.is_overridden(method_name, instance))


def tensorboard_logger_types() -> tuple[type, ...]:
    """The ``TensorBoardLogger`` classes of every importable namespace."""
    out = []
    for ns in lightning_namespaces():
        try:
            out.append(importlib.import_module(f"{ns.__name__}.loggers").TensorBoardLogger)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def sync_rank_zero(trainer: Any) -> None:
    """rangewatch warns through ``lightning.pytorch``'s ``rank_zero_warn``, whose rank only a
    ``lightning.pytorch`` Trainer sets; under a ``pytorch_lightning`` Trainer (which sets its own
    copy) give it that Trainer's global rank, so that only rank zero speaks."""
    if namespace_of(trainer) != "pytorch_lightning":
        return
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = int(trainer.global_rank)
    except Exception:  # noqa: BLE001 - a Trainer double without a rank: leave it as it is
        pass
