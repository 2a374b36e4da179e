"""The one quiet CPU Lightning ``Trainer`` the tests fit with: no checkpoints, progress bar, model summary
or sanity validation, and no logger unless one is given. A test passes what its run needs (``max_steps``,
``logger``, ``limit_val_batches``, ``precision`` ...) as Trainer keyword arguments, which win."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as lp

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0)


def trainer(callbacks: Any = (), *, namespace: Any = lp, **opts: Any) -> Any:
    """``namespace.Trainer`` (``lightning.pytorch`` or ``pytorch_lightning``) with ``QUIET`` under ``opts``."""
    return namespace.Trainer(callbacks=list(callbacks), **{**QUIET, **opts})


def fit(model: Any, train: Any = None, val: Any = None, *, callbacks: Any = (), datamodule: Any = None,
        namespace: Any = lp, **opts: Any) -> Any:
    """Fits ``model`` on the ``train`` (and ``val``) loaders, or on ``datamodule``, with
    ``trainer(callbacks, **opts)``; returns the Trainer."""
    t = trainer(callbacks, namespace=namespace, **opts)
    if datamodule is not None:
        t.fit(model, datamodule=datamodule)
    else:
        t.fit(model, train, val)
    return t
