"""Shared pieces of the tests of published-code idioms (issue 12): the CompVis package copies on
sys.path, a loss recorder, a Trainer runner for either Lightning namespace, TensorBoard read-back."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers import fit as quiet
from helpers.events import decode_png, read_events

COMPVIS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "compvis")
if COMPVIS not in sys.path:
    sys.path.insert(0, COMPVIS)  # tests/compvis/{ldm,taming,sgm}: tiny copies of those repositories


def namespace(name: str) -> Any:
    """``lightning.pytorch`` or ``pytorch_lightning``."""
    if name == "pytorch_lightning":
        import pytorch_lightning

        return pytorch_lightning
    import lightning.pytorch

    return lightning.pytorch


_PORTED: dict[str, Any] = {}


def compvis_module(ns: str, name: str = "ldm.models.autoencoder") -> Any:
    """The CompVis copy's module as published (``import pytorch_lightning as pl``), or, for
    ``lightning.pytorch``, the same source ported the way users port it: that import line changed.
    The port keeps the module name, as the class's ``__module__`` (what rangewatch reads)."""
    import importlib
    import types

    if ns == "pytorch_lightning":
        return importlib.import_module(name)
    if name not in _PORTED:
        path = os.path.join(COMPVIS, *name.split(".")) + ".py"
        src = Path(path).read_text().replace("import pytorch_lightning as pl", "import lightning.pytorch as pl")
        mod = types.ModuleType(name)
        mod.__file__ = path
        exec(compile(src, path, "exec"), mod.__dict__)
        _PORTED[name] = mod
    return _PORTED[name]


def loss_recorder(pl: Any) -> Any:
    class LossRecorder(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.losses.append(float(loss.detach()))

    return LossRecorder()


def fit(pl: Any, model_fn: Any, datamodule_fn: Any, callbacks: list, logdir: Path | None, seed: int = 0, **trainer_kw: Any) -> tuple[Any, Any, list[float]]:
    """Seeded fit; returns (model, logger, the per-step losses)."""
    pl.seed_everything(seed, workers=True)
    model = model_fn()
    rec = loss_recorder(pl)
    logger = pl.loggers.TensorBoardLogger(str(logdir), name="tb") if logdir is not None else False
    kw = {"max_steps": 4, "logger": logger, "limit_val_batches": 0, "deterministic": True, **trainer_kw}
    quiet.fit(model, datamodule=datamodule_fn(), namespace=pl, callbacks=[rec] + callbacks, **kw)
    return model, logger, rec.losses


def loud(findings: list) -> list:
    """Warning and error findings (what must not appear in a correct run)."""
    return [f for f in findings if f.severity in ("warning", "error")]


events = read_events  # every event kept


def decoded(acc: Any, tag: str) -> list[tuple[int, np.ndarray]]:
    """(step, HxWx3 float array) of each image event under ``tag``."""
    return [(e.step, decode_png(e.encoded_image_string).astype(float)) for e in acc.Images(tag)]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
