"""The plain-loop front end: :func:`watch`, for hand-written PyTorch training loops (and HF Accelerate).

The training scripts many diffusion projects start from (the diffusers examples, sd-scripts, IP-Adapter)
are plain loops, often under ``accelerate``. :func:`watch` builds a :class:`~rangewatch.Watch`, connects
it to its surroundings and attaches it to the model::

    watch = rangewatch.watch(vae, logger=SummaryWriter("runs/x"))
    for batch in loader:
        watch.batch(batch)            # the batch's image-like tensors
        loss = ...                    # forward: the model's hooks feed the taps
        loss.backward(); opt.step()
        watch.step()                  # checks at check steps: the first check_first_n, then every log_every_n_steps
    watch.close()                     # or: with rangewatch.watch(...) as watch:

Validation: ``watch.begin_validation()``, then ``watch.batch(batch, split="val")`` per batch, then
``watch.end_validation(check=True)``: its taps are ``val/...``, apart from the training windows.

Under several processes (``torchrun``, ``accelerate launch``, ``notebook_launcher``) the statistics are
reduced across all of them through ``torch.distributed`` (every process must call ``step()`` the same
number of times, as a DDP loop does), and only rank zero writes to the logger and speaks: pass the
logger on rank zero only, or on every rank (the others' is not used).

Example::

    >>> import torch
    >>> from torch import nn
    >>> import rangewatch
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    >>> with rangewatch.watch(model, expect={"0": "symmetric"}, policy="log") as watch:
    ...     for step in range(3):
    ...         x = torch.rand(4, 3, 16, 16)          # [0, 1] photos; the first conv expects [-1, 1]
    ...         watch.batch(x)
    ...         model(x).square().mean().backward()
    ...         found = watch.step()
    >>> [(f.kind, f.where, f.observed) for f in watch.findings]
    [('mismatch', '0:input', 'unit')]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .engine.collectives import Collectives, default_collectives
from .engine.watch import Watch

__all__ = ["watch"]


def watch(model: nn.Module | None = None, expect: dict[str, str] | None = None, *, logger: Any = None,
          collectives: Collectives | None = None, **options: Any) -> Watch:
    """A :class:`~rangewatch.Watch` attached to ``model``, for a plain training loop.

    Args:
        model: the model (a ``DistributedDataParallel`` / ``DataParallel`` wrapper, as ``accelerator.prepare``
            returns, is unwrapped: tap names are those of the model itself); None to watch batches only.
        expect: tap -> convention name, as :class:`~rangewatch.RangeWatch` takes it.
        logger: a ``torch.utils.tensorboard.SummaryWriter`` (or a Lightning logger, or a list of them):
            scalars, histograms, the findings table and the previews go there, from rank zero.
        collectives: default: ``torch.distributed`` when it runs more than one process, else none.
        **options: every other :class:`~rangewatch.RangeWatch` option (``policy``, ``check_first_n``,
            ``log_every_n_steps`` (default 50), ``modules``, ``trace_modules``, ...).

    Call :meth:`~rangewatch.Watch.batch` for each training batch and :meth:`~rangewatch.Watch.step` after
    each optimizer step; :meth:`~rangewatch.Watch.close` (or leave the ``with`` block) at the end.
    """
    loggers = [] if logger is None else list(logger) if isinstance(logger, (list, tuple)) else [logger]
    w = Watch(expect=expect, **options)
    coll = collectives if collectives is not None else default_collectives()
    histograms = bool(loggers)
    if coll.world_size > 1:  # decided alike on every rank (the statistics' states must match): any rank's logger
        import torch

        histograms = bool(coll.all_reduce_sum(torch.tensor([float(histograms)], device=coll.device)).item() > 0)
    w.connect(collectives=coll, loggers=loggers, histograms_logged=histograms)
    if model is not None:
        w.attach(_unwrap(model))
    if w.watch_visualization:
        w.watch_previews("training preview")
    return w


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` (and torch.compile's wrapper)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
            model = model._orig_mod
        else:
            return model
