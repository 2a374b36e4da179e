"""The engine: taps -> statistics -> checks -> findings -> sinks, driven by any front end.

:class:`Watch` owns everything between a tensor and a finding, through collaborators that each hold one step of
the flow (docs/ARCHITECTURE.md, "The engine's files"). The front ends (:class:`~rangewatch.RangeWatch`,
:func:`rangewatch.watch`, ``rangewatch check``, ``watch_pipeline``) only drive it: per training step ``begin_step``
(optional), ``batch``, the forward and backward, ``end_step`` (a check at check steps: the first ``check_first_n``,
then every ``log_every_n_steps``; statistics are brought to the host only then). Under several processes every
rank takes part in each check's reductions (:mod:`rangewatch.engine.collectives`), so every rank reaches the same
verdicts; only rank zero writes.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from rangewatch import Watch
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    >>> watch = Watch(expect={"batch.image": "symmetric"}, policy="log", watch_visualization=False,
    ...               derive_expectations=False)
    >>> _ = watch.attach(model)
    >>> for step in range(2):
    ...     x = torch.rand(4, 3, 16, 16)            # [0, 1] images where [-1, 1] is expected
    ...     watch.batch({"image": x})
    ...     _ = model(x)
    ...     _ = watch.end_step()
    >>> [(f.kind, f.where, f.observed, f.expected) for f in watch.findings]
    [('mismatch', 'batch.image', 'unit', 'symmetric')]
    >>> watch.taps["batch.image"].inferred.name
    'unit'
    >>> watch.close()
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .collectives import Collectives
from ..rng import kept_rng, rng_kept
from .agreement import RankAgreement
from ..config import ConfigError, _short, check_choice
from ..options import OPTIONS, Options
from ..expect.expectation import Expectation
from ..findings.finding import Finding, RangeMismatchError
from ..findings.log import POLICIES, Policy
from ..sinks.loggers import LoggerSink
from ..stats.range_stats import RangeSummary
from .cadence import StepCadence
from .checker import TapChecks
from .expectations import ExpectationSources, tap_name_for_key
from .reporter import FindingsReporter
from .state import STATE_VERSION, engine_state, read_state
from .surroundings import Surroundings
from .check_logging import CheckLogging
from .model_hooks import ModelHooks
from .numerics_tracing import NumericsTracing
from .judged_taps import FrontEndTaps
from .preview_gate import PreviewGate
from .tapset import TapInfo, TapSet
from .unseen import UnseenTaps
from ..taps.batches import DEFAULT_SKIP_KEYS
from ..taps.sharding import user_name

__all__ = ["Watch", "TapInfo", "OPTIONS", "STATE_VERSION"]


def _tapset_option(attr: str, doc: str) -> property:
    """An option the tap set holds (``Watch._tapset.<attr>``), read and set through the engine."""
    return property(lambda self: getattr(self._tapset, attr), lambda self, value: setattr(self._tapset, attr, value), doc=doc)


class Watch:
    r"""The rangewatch engine. Options are those of :class:`~rangewatch.RangeWatch` (see there; declared once in
    :class:`rangewatch.options.Options`, given as keywords, ``expect`` also first positional); the
    keyword-only arguments connect it to its surroundings.

    Args:
        collectives: the cross-process operations (:mod:`rangewatch.engine.collectives`); default one process.
        loggers: where statistics and findings go on rank zero: Lightning loggers and/or
            ``torch.utils.tensorboard.SummaryWriter`` objects.
        messages: ``fn(level, text)`` with level ``"info"`` or ``"warn"``, for every line the engine
            says (rank zero only); default: Lightning's ``rank_zero_info`` / ``rank_zero_warn``.
        clock: returns the current training step (stamped on findings); default: the engine's own
            step counter (advanced by :meth:`end_step`).
    """

    @rng_kept
    def __init__(
        self,
        expect: dict[str, str] | None = None,
        *,
        collectives: Collectives | None = None,
        loggers: list[Any] | None = None,
        messages: Callable[[str, str], None] | None = None,
        clock: Callable[[], int | None] | None = None,
        **options: Any,
    ) -> None:
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:  # a misspelt keyword is a TypeError, as for any Python signature
            raise TypeError(f"Watch() got an unexpected keyword argument {unknown[0]!r}; options: {', '.join(OPTIONS)}")
        o = Options(expect=expect, **options).checked()  # the options as given, validated
        self.expect: dict[str, str] = {user_name(k): v for k, v in (o.expect or {}).items()}  # FSDP1 segments dropped
        self.batch_keys, self.skip_keys = o.batch_keys, tuple(o.skip_keys or DEFAULT_SKIP_KEYS)
        self.modules = [user_name(m) for m in o.modules or ()]
        self.histograms: bool | str = o.histograms
        # sizes and thresholds, then switches (types as Options declares them)
        self.check_first_n, self.log_every_n_steps, self.hist_bins = o.check_first_n, o.log_every_n_steps, o.hist_bins
        self.trace_modules, self.trace_history, self.trace_exact = o.trace_modules, o.trace_history, o.trace_exact
        self.clip_threshold, self.headroom_share = o.clip_threshold, o.headroom_share
        self.derive_expectations, self.watch_visualization = o.derive_expectations, o.watch_visualization
        self.check_nonfinite_every_step, self.per_channel_scalars = o.check_nonfinite_every_step, o.per_channel_scalars
        self.image_processors: dict[str, Any] = dict(o.image_processors or {})
        #: where the options came from (a YAML file: ``RangeWatch.from_yaml``), named in ConfigErrors found later
        self.origin: str | None = None

        # the collaborators, each with its own state (docs/ARCHITECTURE.md, "The engine's files")
        self._env = Surroundings(messages)  # collectives, sinks, clock, voice: set by connect()
        self._reporter = FindingsReporter(o.policy, self._env)  # the findings log, notes said once, internal errors
        self._sources = ExpectationSources(self.expect, self._reporter, self._env)  # declared, derived, loader-predicted
        self._numerics = NumericsTracing()  # the module tracer of trace_modules
        self._front = FrontEndTaps(self.report, self.internal, self._numerics, lambda: self.headroom_share)  # Watch.judged
        self._hooks = ModelHooks(self._reporter, self._env, self._numerics,  # module hooks, loss networks, the tracer
                                 lambda name, t: self.tensor(name, t),  # the hooks feed through the public entry
                                 lambda name, e: self._tapset.on_module_error(name, e))
        batch_paths = [k if k.startswith("batch") else f"batch.{k}" for k in self.expect if k.startswith("batch")]
        self._tapset = TapSet(self._reporter, self._env, self._sources.for_tap, batch_paths, self._hooks.module_taps.channels)
        self._tapset.moments, self._tapset.validation = o.moments_every_step, o.watch_validation
        self._agreement = RankAgreement(self._env, self._reporter)  # the ranks agree on the taps before each check
        self._checks = TapChecks(self._sources, self._reporter, self._env)  # judging each tap at a check step
        self._unseen = UnseenTaps(lambda: (self.expect, self.modules))  # declared taps never seen
        self._previews = PreviewGate()  # the preview watch: which calls are measured, their findings
        self._check_logging = CheckLogging()  # a check's histograms, overview and latent previews
        self._steps = StepCadence(self.log_every_n_steps or 50)  # check steps, the open step, batches so far
        self._announced = False
        if collectives is not None or loggers is not None or clock is not None:
            self.connect(collectives=collectives, loggers=loggers, clock=clock)

    # ------------------------------------------------------------------ public surface
    @property
    def policy(self) -> Policy:
        """``"warn"``, ``"raise"`` or ``"log"`` (may be changed between steps)."""
        return self._reporter.log.policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        self._reporter.log.policy = check_choice("policy", value, POLICIES)  # type: ignore[assignment]

    @property
    def findings(self) -> list[Finding]:
        """Every finding so far, each once, in the order found (notes and internal errors included)."""
        return self._reporter.log.findings

    @property
    def taps(self) -> Mapping[str, TapInfo]:
        """Every tap seen so far (``batch.image``, ``vae.encoder:input``, ``val/...``), read-only."""
        return self._tapset.snapshot()

    watch_validation = _tapset_option("validation", "The ``watch_validation`` option (validation forwards feed ``val/...`` taps).")
    moments_every_step = _tapset_option("moments", "The ``moments_every_step`` option (mean and std on every step).")

    @property
    def _notes(self) -> dict[str, str]:  # what was said once, by key (the callback's checkpoint carries it)
        return self._reporter.notes

    @property
    def notes(self) -> list[str]:
        """What was said once (skipped tensors, modules without hooks, ...), in the order said."""
        return [t.removeprefix("rangewatch: ") for t in self._reporter.notes.values()]

    @property
    def expectations(self) -> dict[str, Expectation]:
        """The expectation of each tap, by tap name: declared (``expect=``), read from the model's metadata (at
        :meth:`attach`), bound to a tensor named as latents."""
        return self._sources.expectations

    @property
    def loader_expectations(self) -> Mapping[str, Expectation]:
        """What the loaders produce, predicted from their transforms (``"train"``, ``"val"``)."""
        return MappingProxyType(self._sources.loader)

    @property
    def skipped_modules(self) -> list[str]:
        """Why named submodules carry no hooks (TorchScript modules, hooks that cannot be placed)."""
        return list(self._hooks.module_taps.skipped)

    @property
    def tracer(self) -> Any:
        """The :class:`~rangewatch.ModuleTracer` placed by ``trace_modules`` (None without it, or after :meth:`detach`)."""
        return self._numerics.tracer

    @property
    def attached(self) -> bool:
        """Whether :meth:`attach` placed the hooks (until :meth:`detach`)."""
        return self._hooks.attached

    @property
    def train_batches(self) -> int:
        """Training batches seen (steps closed by :meth:`end_step`), across a resume."""
        return self._steps.batches

    @property
    def every(self) -> int:
        """The check interval in steps."""
        return self._steps.every

    @rng_kept
    def connect(self, collectives: Collectives | None = None, loggers: list[Any] | None = None,
                clock: Callable[[], int | None] | None = None, every: int | None = None,
                histograms_logged: bool | None = None) -> None:
        """Where the engine runs: its collectives, its loggers (kept on rank zero only), the step
        clock, the default check interval (``log_every_n_steps`` wins) and whether histograms can be
        logged (decide it alike on every rank: the statistics' states must match across ranks)."""
        logged = self._env.connect(collectives, loggers, clock)  # whether these loggers can show histograms
        if every is not None:
            self._steps.every = self.log_every_n_steps or max(1, int(every))
        logged = logged if histograms_logged is None else histograms_logged
        self._tapset.hist_bins = self.hist_bins if self.histograms and logged else 0  # alike on every rank

    @property
    def collectives(self) -> Collectives:
        """The cross-process operations given to :meth:`connect` (default: one process)."""
        return self._env.collectives

    @property
    def messages(self) -> Callable[[str, str], None] | None:
        """``fn(level, text)`` for every line the engine says (rank zero only); None: the default voice."""
        return self._env.messages

    @messages.setter
    def messages(self, value: Callable[[str, str], None] | None) -> None:
        self._env.messages = value

    @property
    def judged(self) -> "FrontEndTaps":
        """Taps and tracers a front end judges itself (:class:`~rangewatch.engine.judged_taps.FrontEndTaps`)."""
        return self._front

    @property
    def sink(self) -> LoggerSink | None:
        """The sinks the loggers given to :meth:`connect` became (rank zero only; None elsewhere and
        without loggers): a front end writes its own images, scalars and text through them."""
        return self._env.sink

    @rng_kept
    def report(self, findings: list[Finding], step: int | None = None) -> list[Finding]:
        """Report findings a front end's own checks built (a diffusers pipeline's, say) through the
        findings log (each once, the policy applied: may raise :class:`~rangewatch.RangeMismatchError`)
        and the sinks; returns the fresh ones. Under several processes with ``policy="raise"``, every
        rank must call this together."""
        return self._reporter.report(list(findings), self._env.now() if step is None else int(step))

    @rng_kept
    def internal(self, where: str, error: BaseException, what: str, consequence: str | None = None) -> None:
        """A front end's own piece ``where`` failed with ``error`` while doing ``what``: reported once
        (an ``internal`` finding and one warning), as the engine reports its own; the front end switches
        that piece off and says so in ``consequence`` (default: the step is skipped, the run goes on)."""
        self._reporter.internal(where, error, None, what=what, consequence=consequence)

    @rng_kept
    def note(self, text: str, key: str | None = None) -> None:
        """Say ``text`` once (per ``key``, default the text itself)."""
        self._reporter.note_once(key or text, text)

    def is_check_step(self, step: int) -> bool:
        """Whether ``step`` is a check step: one of the first ``check_first_n`` batches, or a multiple of :attr:`every`."""
        return self._steps.is_check_step(step, self.check_first_n)

    # ------------------------------------------------------------------ the training step
    def begin_step(self, step: int | None = None, detail: bool | None = None) -> bool:
        """Open training step ``step`` (default: the clock's); returns whether it is a check step.
        ``detail`` (default: at check steps) takes full statistics of this step's tensors."""
        step = self._env.now() if step is None else int(step)
        check = self._steps.begin(step, self.check_first_n)
        self._tapset.detail = check if detail is None else bool(detail)
        self._numerics.start_step(step)
        return check

    def batch(self, batch: Any, split: str = "train", detail: bool | None = None) -> None:
        """Feed a batch (a tensor, or any nest of dicts, lists, tuples and dataclasses): its image-like
        tensors become taps named by path (``batch.image``, ``batch[0]``; ``val/...`` for ``split="val"``).
        A training batch opens a step at the clock's step when none is open."""
        if split not in ("train", "val"):
            raise ConfigError(f"split = {_short(split)} must be 'train' or 'val'")
        if split == "train" and not self._steps.open:
            self.begin_step()
        if detail is not None:
            self._tapset.detail = bool(detail)
        if split == "train":
            if not self._unseen.done:
                self._unseen.record_batch(batch)
            self._tapset.feed_batch(batch, "", self.batch_keys, self.skip_keys)
        elif self._tapset.validation:
            self._tapset.feed_batch(batch, "val/", self.batch_keys, self.skip_keys)

    def tensor(self, name: str, t: torch.Tensor, channel_dim: int | None = None) -> None:
        """Feed one tensor to the tap ``name`` (as a module hook does; a name without a side is read as
        ``expect`` reads it: ``"latents"`` is ``"latents:input"``): image-like tensors get per-channel
        statistics (channels on ``channel_dim``, found when not given), others per-tensor."""
        if ":" not in name and not name.startswith(("batch", "val/")):
            name = tap_name_for_key(name)
        taps, phase = self._tapset, self._tapset.phase
        if not self._steps.open and not phase and not name.startswith("val/"):
            self.begin_step()  # a loop that feeds tensors and no batch: the step opens here, as batch() opens it
        if not phase and not self._unseen.done:
            self._unseen.saw_tensor(name, self._hooks.hooked)
        if name not in taps.taps and self._sources.vae_latents and not name.startswith(("batch", "val/")):
            bound = self._sources.bind_latent(name, t)  # once per tap: a tensor named as latents, judged against the VAE's config
            if bound is not None and channel_dim is None and phase + name not in taps.taps:
                channel_dim = bound
        if channel_dim is None or name in taps.taps:
            taps.on_module_tensor(name, t)
        elif not phase or taps.validation:
            taps.feed(phase + name, t, channel_dim)

    def end_step(self) -> list[Finding]:
        """Close the training step: at a check step, check the training taps; returns the findings
        reported by this call."""
        before = len(self.findings)
        steps = self._steps
        steps.close(self._env.now, self.check_first_n)  # a step with no batch(), tensor() or begin_step(): the clock's
        try:
            if steps.check:
                self.check(steps.at, "train")
                if not self._announced:
                    self._announced = True
                    self._reporter.say(self.watching)
            elif self.check_nonfinite_every_step and self.check_nonfinite():
                self.check(steps.at, "train")
            if not self._unseen.done and steps.window_closed(self.check_first_n):  # every rank alike: the same batch count
                self._reporter.report(self._check_unseen(steps.at), steps.at)
            elif self._unseen.probing:
                self._unseen.drop_probes_once_seen(self._tapset.taps, self._hooks.hooked)
        finally:
            self._tapset.detail = False
            steps.check = False
            if self._env.clock is None:
                self._env.own_step += 1
        return self.findings[before:]

    def step(self) -> list[Finding]:
        """The plain-loop name of :meth:`end_step`: call it once per training step (after ``batch()`` when the
        loop feeds batches; a loop that only runs the attached models is checked at the same steps)."""
        return self.end_step()

    def begin_validation(self) -> None:
        """Validation forwards from now on feed their own taps (``val/...``), never the training windows."""
        self._numerics.pause()  # validation forwards would mix into the training step
        self._tapset.phase = "val/"

    def end_validation(self, check: bool = False) -> None:
        """Back to training; with ``check``, check the validation taps first."""
        if check:
            self.check(split="val")
        self._tapset.phase = ""

    @rng_kept
    def check(self, step: int | None = None, split: str = "train") -> None:
        """Check the taps of ``split`` (``"train"``: also the tracer and the loss networks) now: read
        the statistics (a collective under several processes: every rank must call it), judge, log,
        report, and start new windows."""
        if split not in ("train", "val"):
            raise ConfigError(f"split = {_short(split)} must be 'train' or 'val'")
        which = (lambda n: n.startswith("val/")) if split == "val" else (lambda n: not n.startswith("val/"))
        self._check(which, step=step, train_check=split == "train")
        if split == "val":
            self._tapset.detail = False

    @rng_kept
    def summaries(self, split: str = "train") -> dict[str, RangeSummary]:
        """The current window of each fed tap of ``split``, computed without starting a new one (a
        collective under several processes)."""
        return self._tapset.summaries(split)

    def check_nonfinite(self) -> bool:
        """Whether any tap (or the tracer) saw NaN/Inf since the last check: one bool read from the
        device (a small sync; a collective under several processes)."""
        flag = self._numerics.nonfinite_flag(self._tapset.nonfinite_flag())
        coll = self.collectives
        if coll.world_size > 1:  # every rank must then check, or none
            flag = coll.all_reduce_sum(flag.to(coll.device, torch.float32)) > 0
        return bool(flag.item())

    @rng_kept
    def close(self) -> None:
        """Report what is pending (previews), take every hook off, say the summary line."""
        try:
            self.report_unseen()
            self.detach()
        finally:
            self.say_summary()

    def _check_unseen(self, step: int) -> list[Finding]:
        return self._unseen.check(step, self._steps.batches, self._tapset.taps, self._hooks.hooked, raising=self.policy == "raise")

    def report_unseen(self) -> list[Finding]:
        """A run that ends before its check window closed: the declared taps not seen so far are
        ``unseen`` warnings (logged and said on rank zero; never raised, nothing exchanged between
        ranks: the run is over). Nothing once the window has closed, or before any training batch."""
        if self._unseen.done or not self._steps.batches:
            return []
        return self._reporter.report_as_warnings(lambda: self._check_unseen(self._env.now()), self._env.now())

    @rng_kept
    def say_summary(self) -> None:
        """Say :meth:`summary_line` (rank zero)."""
        self._reporter.say(self.summary_line)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None and exc[0] is not RangeMismatchError:
            self.abort(exc[1])
        self.close()

    def __repr__(self) -> str:
        return f"Watch(expect={self.expect}, policy={self.policy!r})"

    # ------------------------------------------------------------------ pickling and copying
    def __getstate__(self) -> dict[str, Any]:
        """What a copy or a pickle carries (``ddp_spawn``, LightningCLI, Ray Tune and Optuna copy callbacks,
        before and after a fit): the options and :meth:`state_dict` (findings, batch count, open windows), never
        the hooks, the tracer, the preview watch, the loggers, the collectives or the step clock, which the next
        :meth:`connect` and :meth:`attach` place again. A ``messages`` callable that cannot be pickled (a lambda)
        falls back to the default voice in a pickle."""
        options = {**{k: getattr(self, k) for k in OPTIONS}, "skip_keys": list(self.skip_keys), "policy": self.policy}
        return {
            "options": options, "messages": self._env.picklable_messages(), "state": self.state_dict(), "notes": dict(self._reporter.notes),
            "every": self._steps.every, "own_step": self._env.own_step, "announced": self._announced, "origin": self.origin,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["options"], messages=state.get("messages"))  # type: ignore[misc]
        self.load_state_dict(state["state"])
        self._reporter.notes.update(state.get("notes", {}))
        self._steps.every = int(state.get("every", self._steps.every))
        self._env.own_step = int(state.get("own_step", 0))
        self._announced, self.origin = bool(state.get("announced", False)), state.get("origin")

    # ------------------------------------------------------------------ expectations
    def expectation_for(self, tap: str) -> Expectation | None:
        """The expectation that applies to a tap (validation batch taps share the train key)."""
        return self._sources.for_tap(tap)

    @rng_kept
    def watch_previews(self, context: str = "training preview") -> None:
        """Observe the calls that turn tensors into images (until :meth:`detach`); ``context`` names
        the phase in the findings (``"training preview"``, ``"validation preview"``)."""
        if self.watch_visualization and not self._previews.watch(self._reporter, self._env, threshold=self.clip_threshold,
                                                                 hist_bins=self.hist_bins, context=context):
            self.watch_visualization = False

    def preview_step(self, judge: bool | None = None, context: str | None = None) -> None:
        """Keep the watch's step (and phase) current, so a call is stamped with the step it was made at."""
        self._previews.at(self._env.now(), context, judge)

    def flush_previews(self, log: bool = True, final: bool = False) -> None:
        """Report the findings of the calls made since the last hook (at the step of each call) and log
        their corrected previews. Under DDP preview calls happen on some ranks only, so their findings
        wait for the next check (or the end of the fit), where every rank takes part."""
        if self._previews.idle(log):
            return  # nothing to report or log (every step: kept cheap)
        with kept_rng():
            self._previews.flush(self._reporter, self._env, log=log, final=final)

    @rng_kept
    def attach(self, model: nn.Module, tensor_taps: bool = False) -> "Watch":
        """Read what the model expects from its metadata (unless ``derive_expectations=False``), hook
        the named submodules, the loss networks and the tracer. Raises :class:`~rangewatch.ConfigError`
        (leaving nothing behind) when ``expect``, ``modules`` or ``trace_modules`` name a submodule the
        model lacks. With ``tensor_taps`` (a front end whose user feeds :meth:`tensor`), a key that names no
        submodule (nor a near miss of one) is a tensor tap instead (``latents``): see ``UnseenTaps.split_tensor_keys``."""
        if self.derive_expectations:
            self._sources.derive(model, self.image_processors)
        self._hooks.attach_watchers(model, losses=self.derive_expectations, trace_modules=self.trace_modules,
                                    history=self.trace_history, headroom_share=self.headroom_share, exact=self.trace_exact,
                                    origin=self.origin)
        wanted = self._sources.hooked_sides(self.expect, self.modules)
        if tensor_taps:
            wanted = self._unseen.split_tensor_keys(model, wanted, self._sources.derived_names())
        missing = self._hooks.attach_taps(model, wanted)
        self._unseen.probe(model, self._hooks.module_taps.attached)
        if missing:
            raise self._hooks.unknown(model, missing, self.origin)
        said = self._sources.describe()
        if said:
            self._env.info(said)
        return self

    @rng_kept
    def predict_loaders(self, train: Any = None, val: Any = None) -> None:
        """What the loaders' transforms produce (read from their datasets' transforms, no batch is
        pulled); a disagreement with a module's expectation is reported at once (the cheapest possible
        warning). Once per fit; nothing with ``derive_expectations=False``."""
        if not self.derive_expectations or self._sources.loader:
            return
        self._reporter.report(self._sources.predict_loaders(train, val), self._env.now())

    @rng_kept
    def detach(self) -> None:
        """Take every hook off the model and stop observing previews (their last findings are
        reported: under ``policy="raise"`` this may raise). A later :meth:`attach` starts a new fit."""
        self._hooks.detach()
        self._unseen.unprobe()
        self._sources.new_fit()
        try:
            self._previews.stop(self._reporter, self._env)  # may raise RangeMismatchError (policy="raise") for the last previews
        finally:
            self._numerics.detach()

    @rng_kept
    def abort(self, exception: BaseException | None = None) -> None:
        """The run failed with ``exception``: take every hook off; unless rangewatch itself stopped
        the run, let the tracer still name where NaN/Inf came from (a NaN loss that raised)."""
        self._hooks.abort(exception)
        self._unseen.unprobe()
        self._previews.halt()

    # ------------------------------------------------------------------ the check
    def _check(self, which: Callable[[str], bool], step: int | None = None, train_check: bool = False) -> None:
        """The check loop: the ranks agree on the taps, each tap is read and judged (engine/checker.py), the sinks
        written, the windows reset, the tracer and the loss networks checked, and every finding reported at once."""
        step = self._env.now() if step is None else step
        coll, taps = self.collectives, self._tapset.taps
        several = coll.world_size > 1
        if several and not self._agreement.agree_on_taps(taps, self._tapset.placeholder, self._tapset.early):
            return  # every rank skips this check together (said once); the windows go on filling
        new: list[Finding] = list(self._tapset.early)  # found in hooks since the last check (a declared convention that does not fit)
        self._tapset.early.clear()
        if self._previews.pending and several:  # previews judged on some ranks only: reported here, where all ranks are
            new.extend(self._previews.take())
        found, metrics, summaries = self._checks.check_taps(taps, which, step, check_first_n=self.check_first_n, per_channel=self.per_channel_scalars,
                                                            gather=self._agreement.gather_sample if several else None)
        new.extend(found)
        synced = self._agreement.sync_latents(taps, summaries) if several else []
        sink = self._env.sink
        if sink is not None and coll.rank == 0:
            try:
                if metrics:
                    sink.scalars(metrics, step)
                    if not sink.has_images and sink.active:
                        self._reporter.note_once("histograms", "rangewatch: histograms, images and text need a TensorBoard, W&B or MLflow logger; other loggers get scalars only")
                self._check_logging.write(sink, self._reporter.log, taps, summaries, new, step, self.histograms)
            except Exception as e:
                self._reporter.internal("logging", e, None)
        for st in synced:
            st.unsync()
        for name, _ in summaries:
            self._tapset.reset(taps[name])
        new.extend(self._hooks.check(step, train_check, coll.all_gather_bytes if several else None))  # tracer, loss networks
        self._reporter.report(new, step)

    def watching(self) -> str:
        """What is watched, said once per fit after the first checked batch: each tap with its channels and its
        expectation or what the data looks like, the taps not watched and why, expectations not seen yet, the cadence."""
        cadence = f"checked at the first {self.check_first_n} batches, then every {self._steps.every} steps"
        return self._tapset.watching(self.expectations, cadence)

    def summary_line(self) -> str:
        """One line for the end of a fit: taps checked, batches, findings by kind."""
        checked = sum(1 for t in self._tapset.taps.values() if t.steps_checked)
        return self._reporter.summary_line(checked, self._steps.batches)

    # ------------------------------------------------------------------ state
    @rng_kept
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the findings log, the batch count and each tap's open window (statistics,
        bounds, latent monitor state), so that a resumed run neither repeats findings nor loses data."""
        return engine_state(self._steps.batches, self._reporter.log, self._tapset.state_dict())

    @rng_kept
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: taps take their saved window when they are first seen again.

        A state this version cannot read (another ``version``, a foreign or tampered dict) never stops the
        resume: it is noted once and dropped (the run goes on from an empty state); a tap whose saved window
        cannot be read starts an empty one."""
        try:
            batches, taps, log = read_state(state_dict, self.policy)
        except Exception as e:  # noqa: BLE001  (a resume never fails on rangewatch's state)
            self._reporter.note_once("state", f"rangewatch: the saved rangewatch state cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                                     "it is dropped and the run goes on from an empty rangewatch state")
            return
        self._steps.batches = batches
        if self._steps.window_closed(self.check_first_n):  # the saved run held its declared taps to account at its window's end
            self._unseen.close()
        self._reporter.log.reported, self._reporter.log.findings = log.reported, log.findings
        self._tapset.load(taps)
