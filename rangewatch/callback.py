"""The Lightning front end: :class:`RangeWatch`, a callback whose hooks each drive the engine
(:class:`~rangewatch.Watch`, :mod:`rangewatch.engine.watch`), with the Trainer's strategy as its collectives."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import lightning.pytorch as pl

from .engine.collectives import LightningCollectives
from .config import ConfigError, config_path, exit_under_cli_parser, load_options
from .rng import rng_kept
from .engine.watch import Watch
from .expect.expectation import Expectation
from .findings.finding import Finding
from .findings.log import Policy
from .options import OPTIONS
from .compat.namespaces import CALLBACK_BASES

__all__ = ["RangeWatch"]

_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")

T = TypeVar("T")


class _EngineOption(Generic[T]):
    """An option of the callback: reads and writes the engine's attribute of the same name (a declared
    descriptor, so that type checkers see ``watch.policy`` as a :data:`~rangewatch.findings.log.Policy`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.__doc__ = f"The ``{name}`` option (the engine's)."

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> "_EngineOption[T]": ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(obj.engine, self.name)

    def __set__(self, obj: Any, value: T) -> None:
        setattr(obj.engine, self.name, value)


class RangeWatch(*CALLBACK_BASES):  # type: ignore[misc]  (both namespaces' Callback: either Trainer takes it)
    r"""Watch the value ranges of batches and model inputs/outputs; say at the first batch when they
    do not follow what each model expects, with the evidence and the fix.

    Taps: every image-like tensor in train and validation batches (named by path: ``batch.image``,
    ``batch[0]``, ``batch.cond.pixels``), and the inputs/outputs of the submodules named in
    ``expect`` or ``modules`` (``"vae.encoder"`` = its input, ``"decoder:output"`` = its output).
    Statistics are accumulated on the tensor's device every step and brought to the host only on
    check steps: the first ``check_first_n`` batches, then every ``log_every_n_steps``.

    Args:
        expect: tap -> convention name, e.g. ``{"batch.lq": "symmetric", "vae.encoder": "symmetric",
            "image_encoder": "clip"}`` (any name from :func:`rangewatch.list_conventions`).
        batch_keys: only watch these batch paths (``"batch.lq"`` or ``"lq"``); default: all image-like.
        skip_keys: glob patterns of batch keys never treated as images (masks, labels, token ids).
        modules: more submodules to watch (inputs and outputs) without an expectation.
        policy: ``"warn"`` (one rank-zero warning per distinct finding), ``"raise"`` (raise
            :class:`~rangewatch.RangeMismatchError` at the first batch that shows one), ``"log"``.
        check_first_n: number of first train batches that are all checked.
        log_every_n_steps: check/log interval; default: the Trainer's ``log_every_n_steps``.
        histograms: per-channel histograms in TensorBoard at check steps: ``"flagged"`` (default:
            only for taps with a finding, from the check step that found it), ``"all"`` (or True:
            every tap) or False (none).
        per_channel_scalars: also log the raw per-channel ``std``, ``nonfinite`` and
            ``out_of_range`` scalars (``rangewatch_channels/<tap>/<stat>/c<k>``); by default each tap
            logs ``rangewatch/<tap>/{min,max,out_of_range}`` (three cards) and, in the
            ``rangewatch_channels/`` group, per-channel ``min``/``mean``/``max``, one ``nonfinite``
            count and its expected range (``expected_min``/``expected_max``).
        hist_bins: histogram bins per channel.
        watch_validation: also watch validation batches (taps ``val/batch...``).
        watch_visualization: from fit start to teardown (``training_step``, validation, epoch ends,
            callbacks listed after this one), observe the calls that turn tensors into images
            (basicsr ``tensor2img``, torchvision ``make_grid``/``save_image``, TensorBoard
            ``add_image``) and report those that clamp away data (kind ``clipping``), stamped with
            the step of the call; calls are measured at check steps and at the first call of each
            call site. Corrected previews go to TensorBoard under ``rangewatch/preview/...``.
        clip_threshold: share of values a visualisation call must clamp to be reported.
        derive_expectations: at fit start, read what each submodule expects from its own metadata
            (diffusers VAEs, timm ``pretrained_cfg``, transformers image processors / model types,
            open_clip ``preprocess_cfg``) and what the data loaders produce from their transforms.
            Declared ``expect`` entries win.
        trace_modules: ``"all"`` (every leaf module) or a list of module names / patterns
            (``"vae.decoder.*"``): per-module max-abs and NaN/Inf counts in forward order, kept on
            the device. When NaN/Inf appear, a ``nonfinite`` finding names the first module whose
            inputs were finite and whose output was not; ``fp16_headroom`` findings name fp16
            modules past ``headroom_share`` of 65504.
        trace_history: steps kept by the tracer.
        trace_exact: exact NaN/Inf counts and finite max-abs per module (an extra pass per call).
        headroom_share: share of the fp16 maximum (65504) that makes an ``fp16_headroom`` finding.
        check_nonfinite_every_step: fail fast on NaN/Inf: one bool is read from the device every
            step (one small sync); otherwise they are checked at the check steps.
        image_processors: submodule path -> a transformers image processor (or any object with
            ``image_mean``/``image_std``/``do_normalize``...) saying what that encoder expects; it wins
            over the model type's documented default.
        moments_every_step: also accumulate sum and sum of squares (mean/std) on every step; by
            default min, max, the element count and the NaN/Inf flag cover every step and mean/std
            come from the check-step batches, which halves the per-step reads of each tensor.

    Loss networks and metrics on the module (``lpips.LPIPS``, torchmetrics LPIPS / FID / KID / IS /
    PSNR / SSIM, basicsr ``PerceptualLoss``, frozen torchvision classifiers, ...) are judged at their
    first call against what each expects: :mod:`rangewatch.integrations`.

    Taps declared with a latent convention (``expect={"unet:input": "sdxl_latent"}``) are watched by a
    latent monitor: scale, shift, colour cast and outliers (``latent_scale``, ``latent_shift``,
    ``color_cast``, ``latent_outliers``), with an RGB preview and per-channel histograms in TensorBoard.

    Example (a Lightning autoencoder fed [0, 1] images where its encoder expects [-1, 1])::

        >>> import torch, lightning.pytorch as pl
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from rangewatch import RangeWatch
        >>> class AutoEncoder(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.encoder, self.decoder = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
        ...     def training_step(self, batch, batch_idx):
        ...         x = batch[0]
        ...         return nn.functional.mse_loss(self.decoder(self.encoder(x)), x)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.01)
        >>> images = TensorDataset(torch.rand(8, 3, 16, 16))  # [0, 1]
        >>> watch = RangeWatch(expect={"encoder": "symmetric"}, policy="log")
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[watch], accelerator="cpu", logger=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(AutoEncoder(), DataLoader(images, batch_size=4))
        >>> [(f.kind, f.where, f.observed, f.expected) for f in watch.findings]
        [('mismatch', 'encoder:input', 'unit', 'symmetric')]
        >>> print(watch.findings[0].fix)
        apply x * 2 - 1 (Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])) before encoder

    TensorBoard tags: ``rangewatch/<tap>/{min,max,out_of_range}`` (three cards per tap) and the findings
    counts ``rangewatch/findings/<kind>``; per channel ``rangewatch_channels/<tap>/<stat>/c<k>`` with stat in
    ``min``, ``max``, ``mean`` (``std``, ``nonfinite``, ``out_of_range`` with ``per_channel_scalars``);
    histograms ``rangewatch/<tap>/hist/c<k>``; the findings as text under ``rangewatch/findings``.
    """

    # each option reads and writes the engine's (the same names as rangewatch.options.Options, in its order)
    expect: _EngineOption[dict[str, str]] = _EngineOption()
    batch_keys: _EngineOption[list[str] | None] = _EngineOption()
    skip_keys: _EngineOption[tuple[str, ...]] = _EngineOption()
    modules: _EngineOption[list[str]] = _EngineOption()
    policy: _EngineOption[Policy] = _EngineOption()
    check_first_n: _EngineOption[int] = _EngineOption()
    log_every_n_steps: _EngineOption[int | None] = _EngineOption()
    histograms: _EngineOption[bool | str] = _EngineOption()
    hist_bins: _EngineOption[int] = _EngineOption()
    watch_validation: _EngineOption[bool] = _EngineOption()
    watch_visualization: _EngineOption[bool] = _EngineOption()
    clip_threshold: _EngineOption[float] = _EngineOption()
    derive_expectations: _EngineOption[bool] = _EngineOption()
    trace_modules: _EngineOption[str | list[str] | None] = _EngineOption()
    trace_history: _EngineOption[int] = _EngineOption()
    trace_exact: _EngineOption[bool] = _EngineOption()
    headroom_share: _EngineOption[float] = _EngineOption()
    check_nonfinite_every_step: _EngineOption[bool] = _EngineOption()
    moments_every_step: _EngineOption[bool] = _EngineOption()
    image_processors: _EngineOption[dict[str, Any]] = _EngineOption()
    per_channel_scalars: _EngineOption[bool] = _EngineOption()

    @rng_kept
    def __init__(
        self,
        expect: dict[str, str] | None = None,
        batch_keys: list[str] | None = None,
        skip_keys: list[str] | None = None,
        modules: list[str] | None = None,
        policy: Policy = "warn",
        check_first_n: int = 3,
        log_every_n_steps: int | None = None,
        histograms: bool | Literal["flagged", "all"] = "flagged",
        hist_bins: int = 64,
        watch_validation: bool = True,
        watch_visualization: bool = True,
        clip_threshold: float = 0.005,
        derive_expectations: bool = True,
        trace_modules: str | list[str] | None = None,
        trace_history: int = 8,
        trace_exact: bool = False,
        headroom_share: float = 0.5,
        check_nonfinite_every_step: bool = False,
        moments_every_step: bool = False,
        image_processors: dict[str, Any] | None = None,
        per_channel_scalars: bool = False,
    ) -> None:
        super().__init__()
        options = dict(locals())
        #: the engine this callback drives (public: taps, findings, summaries, state)
        try:
            self.engine = Watch(**{k: options[k] for k in OPTIONS})
        except ConfigError as e:  # named in a LightningCLI config: the message alone, not jsonargparse's Union traceback
            exit_under_cli_parser(e, f"{type(self).__module__.split('.')[0]}.{type(self).__name__}")
            raise
        self._home_pid = os.getpid()  # the process the user made it in (spawned ranks hand their findings back)
        self._handback_id = uuid.uuid4().hex  # os.urandom: no draw from the user's generators

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RangeWatch":
        """Options from a plain YAML file (top level, under ``rangewatch:``, or a LightningCLI entry)."""
        options = load_options(path, OPTIONS)  # ConfigErrors name the file
        origin = str(config_path(path))
        try:
            watch = cls(**options)
        except ConfigError as e:  # a bad value: name the file it came from
            raise ConfigError(f"{origin}: {e}") from None
        watch.engine.origin = origin  # a submodule the model lacks (found at fit start) names it too
        return watch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(expect=sorted(self.expect.items()), policy=self.policy)

    # ------------------------------------------------------------------ what the engine knows
    @property
    def findings(self) -> list[Finding]:
        self._collect()
        return self.engine.findings

    @property
    def expectations(self) -> dict[str, Expectation]:
        return self.engine.expectations

    @property
    def taps(self) -> Any:
        """:attr:`rangewatch.Watch.taps`: every tap seen, read-only."""
        self._collect()
        return self.engine.taps

    @property
    def notes(self) -> list[str]:
        self._collect()
        return self.engine.notes

    def expectation_for(self, tap: str) -> Expectation | None:
        """The expectation that applies to a tap (validation batch taps share the train key)."""
        return self.engine.expectation_for(tap)

    def watching(self) -> str:
        self._collect()
        return self.engine.watching()

    def summary_line(self) -> str:
        self._collect()
        return self.engine.summary_line()

    # ------------------------------------------------------------------ lifecycle
    @rng_kept
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from .compat.namespaces import sync_rank_zero

        sync_rank_zero(trainer)
        self.engine.connect(collectives=LightningCollectives(trainer), loggers=list(trainer.loggers),
                            clock=lambda: int(trainer.global_step), every=int(getattr(trainer, "log_every_n_steps", 50) or 50))

    @rng_kept
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.attach(pl_module)
        self._previews("training preview")

    @rng_kept
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        engine = self.engine
        if not engine.derive_expectations or engine.loader_expectations:
            return
        from .compat.namespaces import is_overridden  # the inspected object's own namespace

        owners = [getattr(trainer, "lightning_module", None), getattr(trainer, "datamodule", None)]
        moved = [f"{type(o).__name__}.{h}" for o in owners if o is not None for h in _TRANSFER_HOOKS if is_overridden(h, o)]
        if moved:  # the callback sees batches after these hooks: the loader's transforms are not the whole story
            engine.note(f"rangewatch: {', '.join(moved)} changes batches after the loader; transforms are not used to predict them", key="transfer")
            return
        engine.predict_loaders(trainer.train_dataloader, getattr(trainer, "val_dataloaders", None))

    def _previews(self, context: str) -> None:
        # the watch is on from fit start to teardown, so previews made anywhere while the Trainer runs are seen
        if self.engine.watch_visualization:
            self.engine.watch_previews(context)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        check = self.engine.begin_step(int(trainer.global_step))
        self.engine.batch(batch)
        self.engine.flush_previews()  # calls made after the last hook (a callback after this one)
        self.engine.preview_step(judge=check, context="training preview")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.engine.flush_previews()  # previews made in training_step, at this batch's step
        self.engine.preview_step()  # callbacks after this one see the step after the optimizer step
        self.engine.end_step()

    @rng_kept
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.flush_previews()
        self.engine.preview_step(context="training preview")

    @rng_kept
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.flush_previews()
        self.engine.preview_step(judge=True)  # LightningModule.on_train_epoch_end runs after the callbacks

    @rng_kept
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.engine.attached:  # trainer.validate() without fit; a fit attached at its start
            self.engine.attach(pl_module)
        self.engine.begin_validation()
        self._previews("validation preview")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        detail = batch_idx < max(1, self.check_first_n)
        self.engine.preview_step(judge=detail, context="validation preview")
        self.engine.batch(batch, split="val", detail=detail)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.engine.flush_previews(log=False)

    @rng_kept
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation taps only: the training windows are read (and reset) at the training check steps
        self.engine.check(split="val")
        self.engine.preview_step(judge=True)  # LightningModule.on_validation_epoch_end runs after the callbacks

    @rng_kept
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.end_validation()
        self.engine.flush_previews()  # also the previews of LightningModule.on_validation_epoch_end
        self.engine.preview_step(judge=False, context="training preview")

    @rng_kept
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.flush_previews()  # the last batch's on_train_batch_end previews, the last epoch end's

    @rng_kept
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.engine.flush_previews()  # LightningModule.on_train_end's
        self.engine.report_unseen()  # a fit shorter than the check window: its declared taps never seen
        self.engine.say_summary()  # one line: taps checked, batches, findings

    @rng_kept
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            self.engine.detach()  # may raise RangeMismatchError (policy="raise") for the last previews
        finally:
            if os.getpid() != self._home_pid and int(getattr(trainer, "global_rank", 0)) == 0:
                self._hand_back()

    @rng_kept
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.engine.abort(exception)

    # ------------------------------------------------------------------ spawned ranks (ddp_spawn, ddp_fork, ddp_notebook)
    # The Trainer runs in processes it starts (the callback pickled into them, or forked) and brings back the
    # model's weights and callback_metrics only: rank zero leaves the engine's state (findings, batch count,
    # windows) in a file named after this callback, and the callback in the user's process reads it on the
    # first look at its results (findings, notes, taps, watching, summary_line, state_dict).
    def _handback_path(self) -> str:
        return os.path.join(tempfile.gettempdir(), f"rangewatch-handback-{self._handback_id}.pt")

    def _hand_back(self) -> None:
        import torch

        path = self._handback_path()
        try:
            full = self.engine.state_dict()  # the findings and the batch count; windows stay behind (the fit is over)
            state = {"state": {**full, "taps": {}}, "notes": dict(self.engine._notes)}
            torch.save(state, path + ".part")
            os.replace(path + ".part", path)
        except Exception as e:  # noqa: BLE001  (never the cause of a failed run)
            self.engine.internal("ddp", e, "handing the findings back to the process that started the fit",
                                 consequence="the findings stay in the spawned processes' output only")

    def _collect(self) -> None:
        if os.getpid() != self.__dict__.get("_home_pid"):
            return
        path = self._handback_path()
        if not os.path.exists(path):
            return
        import torch

        try:
            state = torch.load(path, weights_only=True)
            os.remove(path)
            self.engine.load_state_dict(state["state"])
            self.engine._notes.update(state.get("notes", {}))
        except Exception as e:  # noqa: BLE001
            self.engine.internal("ddp", e, "reading the findings handed back by the spawned processes",
                                 consequence="the findings stay in the spawned processes' output only")

    def __getstate__(self) -> dict[str, Any]:
        # the engine pickles its options and state (Watch.__getstate__); Lightning's bound LightningModule.log /
        # log_dict, put on every callback at fit start, are put there again at the next fit
        return {k: v for k, v in self.__dict__.items() if k not in ("log", "log_dict")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if os.getpid() == self.__dict__.get("_home_pid"):  # a copy in this process: its own hand-back file
            self._handback_id = uuid.uuid4().hex

    # ------------------------------------------------------------------ state
    @rng_kept
    def state_dict(self) -> dict[str, Any]:
        self._collect()
        return self.engine.state_dict()

    @rng_kept
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"RangeWatch(expect={self.expect}, policy={self.policy!r})"

