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

Training scripts that hold several separate models (the diffusers example scripts, IP-Adapter's
``tutorial_train.py``, kohya sd-scripts, the video trainers: a frozen VAE, frozen text/image encoders and
the trained UNet or transformer) pass them by name, as the script names them::

    watch = rangewatch.watch(vae=vae, image_encoder=image_encoder, unet=unet)   # or watch({"vae": vae, ...})
    ...
    latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
    watch.tensor("latents", latents)  # judged against the attached VAE's own latent scaling

Taps are then named ``vae.encoder:input``, ``image_encoder:input``, ``unet:input``; the wrappers
``accelerator.prepare`` returns (``DistributedDataParallel``, DeepSpeed's engine, FSDP, ``torch.compile``)
are looked through.

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

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from .config import ConfigError, _short
from .engine.collectives import Collectives, default_collectives
from .engine.watch import Watch
from .options import OPTIONS

__all__ = ["watch"]

_NO_MODEL: Any = object()  # watch() with no model: batches (and tensors) only; watch(None) is a mistake


def watch(model: nn.Module | Mapping[str, nn.Module] | None = _NO_MODEL, expect: dict[str, str] | None = None, *,
          logger: Any = None, collectives: Collectives | None = None, **options: Any) -> Watch:
    """A :class:`~rangewatch.Watch` attached to the model(s), for a plain training loop.

    Args:
        model: the model (a ``DistributedDataParallel`` / ``DataParallel`` / DeepSpeed / FSDP wrapper, as
            ``accelerator.prepare`` returns, is unwrapped: tap names are those of the model itself), or a
            mapping ``{name: model}`` of several separate models; leave it out to watch batches (and
            :meth:`~rangewatch.Watch.tensor` tensors) only. ``None`` is a :class:`~rangewatch.ConfigError`
            (an optional model that was never built).
        expect: tap -> convention name, as :class:`~rangewatch.RangeWatch` takes it; with several models
            the taps are named ``"<model name>.<submodule>"`` (``"vae.encoder"``, ``"image_encoder"``). A key
            that names no submodule (and does not start with a model's name) is a tensor tap, fed by
            :meth:`~rangewatch.Watch.tensor` (``expect={"latents": "sdxl_latent"}``).
        logger: a ``torch.utils.tensorboard.SummaryWriter`` (or a Lightning logger, or a list of them):
            scalars, histograms, the findings table and the previews go there, from rank zero.
        collectives: default: ``torch.distributed`` when it runs more than one process, else none.
        **options: every other :class:`~rangewatch.RangeWatch` option (``policy``, ``check_first_n``,
            ``log_every_n_steps`` (default 50), ``modules``, ``trace_modules``, ...); any other keyword
            whose value is a model is one of several named models: ``watch(vae=vae, unet=unet)``.

    Call :meth:`~rangewatch.Watch.batch` for each training batch and :meth:`~rangewatch.Watch.step` after
    each optimizer step; :meth:`~rangewatch.Watch.close` (or leave the ``with`` block) at the end.
    """
    named: dict[str, Any] = {}
    for key in [k for k in options if k not in OPTIONS and k != "messages"]:  # messages=: Watch's voice
        named[key] = options.pop(key)
    root = _root(model, named)
    loggers = [] if logger is None else list(logger) if isinstance(logger, (list, tuple)) else [logger]
    w = Watch(expect=expect, **options)
    coll = collectives if collectives is not None else default_collectives()
    histograms = bool(loggers)
    if coll.world_size > 1:  # decided alike on every rank (the statistics' states must match): any rank's logger
        import torch

        histograms = bool(coll.all_reduce_sum(torch.tensor([float(histograms)], device=coll.device)).item() > 0)
    w.connect(collectives=coll, loggers=loggers, histograms_logged=histograms)
    if root is not None:
        w.attach(root, tensor_taps=True)
    if w.watch_visualization:
        w.watch_previews("training preview")
    return w


class Models(nn.Module):
    """Several separate models under the names a training script gives them (``vae``, ``image_encoder``,
    ``unet``): a plain container whose children are the user's models themselves (nothing is copied or
    changed; it has no forward and is never called). Its submodule paths are the tap names
    (``vae.encoder``)."""

    def __init__(self, models: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, m in models.items():
            self.add_module(name, m)

    def extra_repr(self) -> str:
        return ", ".join(self._modules)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _root(model: Any, named: dict[str, Any]) -> nn.Module | None:
    """The module the watch attaches to: the one model, or a :class:`Models` container of the named ones."""
    if model is None:
        raise ConfigError(
            "rangewatch.watch(None): the model is None (an optional model that was never built?); pass the model, "
            "several models by name (rangewatch.watch(vae=vae, unet=unet)), or no model at all to watch batches only"
        )
    if isinstance(model, Mapping):
        for k, v in model.items():
            if k in named:
                raise ConfigError(f"rangewatch.watch: model {_short(k)} is given twice (in the mapping and as a keyword)")
            named[k] = v
        model = _NO_MODEL
    if not named:
        if model is _NO_MODEL:
            return None
        return _unwrap(_check_model("model", model))
    if model is not _NO_MODEL:
        raise ConfigError(
            f"rangewatch.watch: a model without a name ({type(model).__name__}) beside named ones "
            f"({', '.join(map(repr, named))}); name every model, so that each tap says which model it is in: "
            f"rangewatch.watch({{'<name>': model, {', '.join(f'{k!r}: ...' for k in named)}}})"
        )
    models: dict[str, nn.Module] = {}
    for k, v in named.items():
        if not isinstance(k, str) or not _NAME.match(k) or hasattr(nn.Module, k):
            raise ConfigError(
                f"rangewatch.watch: model name {_short(k)} must be a Python identifier that is no nn.Module attribute "
                "(the tap names start with it: 'vae.encoder:input')"
            )
        models[k] = _unwrap(_check_model(k, v))
    return Models(models)


def _check_model(name: str, value: Any) -> nn.Module:
    if value is None:
        raise ConfigError(
            f"rangewatch.watch: model {name!r} is None (an optional model that was never built?); leave it out"
        )
    if not isinstance(value, nn.Module):
        import difflib

        options = [o for o in OPTIONS if o != "expect"] + ["logger", "collectives"]
        close = difflib.get_close_matches(str(name), options, n=1)
        raise ConfigError(
            f"rangewatch.watch: {name} = {_short(value)} is neither an option"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f" nor a model (an nn.Module); options: {', '.join(options)}"
        )
    return value


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside the wrappers a training script's model comes back in: ``DistributedDataParallel`` /
    ``DataParallel``, FSDP (``FullyShardedDataParallel``), DeepSpeed's ``DeepSpeedEngine`` (all keep it as
    ``.module``) and torch.compile's ``OptimizedModule`` (``._orig_mod``), as HF Accelerate's own
    ``extract_model_from_parallel`` unwraps them (huggingface/accelerate ``src/accelerate/utils/other.py``).
    DeepSpeed is recognised by class name and module of origin, never imported."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    wrappers: tuple[type, ...] = (DistributedDataParallel, DataParallel)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except Exception:  # pragma: no cover - torch without distributed
        pass
    for _ in range(16):
        if isinstance(model, wrappers) or (
            any(c.__name__ == "DeepSpeedEngine" and (c.__module__ or "").startswith("deepspeed.") for c in type(model).__mro__)
        ):
            inner = getattr(model, "module", None)  # FSDP's is a property
            if isinstance(inner, nn.Module):
                model = inner
                continue
            return model
        orig = model.__dict__.get("_orig_mod")
        if orig is None:
            orig = model.__dict__.get("_modules", {}).get("_orig_mod")
        if isinstance(orig, nn.Module):
            model = orig
            continue
        return model
    return model
