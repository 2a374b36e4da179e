"""Taps a front end judges itself: statistics the engine holds, judges the front end brings.

Some tensors mean something only a front end knows how to judge: the diffusers pipeline front end
(:mod:`rangewatch.pipeline.watch`) reads the denoising latents divided by their noise level, the decode's
input mapped back to the model's latent space, the decoded image against its postprocess clamp, and a
tracer's findings with fixes in diffusers' terms. The engine's own tap checks (:mod:`rangewatch.engine.checker`)
would judge and name them differently, and write per-tap scalars and histograms for them.

:class:`JudgedTaps`, a collaborator of :class:`rangewatch.Watch`, holds such taps for a front end. Each is
registered with a name, a statistics factory (a :class:`~rangewatch.stats.range_stats.RangeStats` or a
:class:`~rangewatch.checks.latents.LatentMonitor` with the front end's settings) or a ``source`` fed by
something else (a :class:`~rangewatch.checks.numerics.ModuleTracer`'s hooks), and a judge. The engine:

* holds the statistics: a tap's *window* maps a key (the front end's: a denoising step, a decode; ``None`` by
  default) to one statistics object, made on the first tensor of that key and fed on the tensor's device
  (nothing is read to the host while feeding);
* runs the judges when the front end asks for a check (:meth:`JudgedTaps.check`), in the order it names the
  taps; each judge gets its window and a :class:`Judging` (the step, the front end's context, what the judges
  before it found in this check, the other windows of the check) and returns findings;
* reports all of a check's findings through the engine's findings log in one report (each finding once,
  the policy applied, the sinks written);
* turns an exception in a tap's feed or judge into the engine's internal-error path: reported once, that tap
  switched off, everything else goes on;
* starts a new window for every tap of the check (also when the report raises under ``policy="raise"``);
* writes nothing per tap: no scalars, no histograms (a front end writes what it wants through the sinks).

A window lasts from one check to the next (for the pipeline front end: one pipeline call), so judged taps
take no part in :meth:`rangewatch.Watch.state_dict`: what they found is in the findings log, which does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Hashable, Iterable, Mapping

import torch

from ..findings.finding import Finding
from ..rng import kept_rng

__all__ = ["Judge", "Judging", "JudgedTaps", "FrontEndTaps"]

#: a tap's window: key -> statistics (read-only for judges)
Window = Mapping[Hashable, Any]


@dataclass(frozen=True)
class Judging:
    """What a judge gets besides its own window, at one check."""

    step: int | None  # the step the findings are stamped with (None: the engine's clock)
    context: Any  # what the front end passed to the check (the pipeline front end: the call's record)
    found: Mapping[str, list[Finding]]  # what the judges before this one found in this check, by tap
    windows: Mapping[str, Window]  # the windows of every tap of this check, by tap (a judge may read a sibling's)


#: ``judge(window, judging) -> findings``
Judge = Callable[[Window, Judging], Iterable[Finding]]


@dataclass
class _Judged:
    name: str
    judge: Judge | None  # None: a tap fed for another tap's judge (read through Judging.windows)
    make: Callable[[], Any] | None  # the statistics factory (None for a source)
    source: Any  # an object fed by something else (a tracer's hooks): the window is {None: source}
    where: str  # where an internal error is reported
    what: str  # what feeding the tap does (said when it fails)
    consequence: str  # what switching it off means
    off: Callable[[], None] | None  # called once when the tap is switched off (a tracer's hooks taken off)
    window: dict[Hashable, Any] = field(default_factory=dict)
    disabled: bool = False
    error: str | None = None


class JudgedTaps:
    """The engine's taps judged by a front end (see the module's text).

    Args:
        report: the engine's report, ``report(findings, step) -> fresh findings`` (the findings log, the policy,
            the sinks): :meth:`rangewatch.Watch.report`.
        internal: the engine's internal-error path, ``internal(where, error, what, consequence)``:
            :meth:`rangewatch.Watch.internal`.
    """

    def __init__(self, report: Callable[[list[Finding], int | None], list[Finding]],
                 internal: Callable[[str, BaseException, str, str], None]) -> None:
        self._report = report
        self._internal = internal
        self._taps: dict[str, _Judged] = {}

    # ------------------------------------------------------------------ registration
    def add(self, name: str, judge: Judge | None, stats: Callable[[], Any] | None = None, *, source: Any = None,
            where: str | None = None, what: str | None = None, consequence: str | None = None,
            off: Callable[[], None] | None = None) -> None:
        """Register the tap ``name`` (replacing one of that name, and its window): statistics made by ``stats()``
        per key on the first tensor fed, or a ``source`` fed by something else (its ``reset()`` starts its next
        window); ``judge(window, judging)`` returns its findings at a check (None: read by another tap's judge).
        ``where``, ``what`` and ``consequence`` say an internal error (default: the tap's name, "feeding <name>",
        "this tap is switched off; the run goes on"); ``off()`` runs once when the tap is switched off."""
        if (stats is None) == (source is None):
            raise ValueError(f"judged tap {name!r}: give either a statistics factory or a source, not {'both' if stats else 'neither'}")
        self._taps[name] = _Judged(
            name, judge, stats, source, where or name, what or f"feeding {name}",
            consequence or "this tap is switched off; the run goes on", off,
            window={None: source} if source is not None else {},
        )

    def remove(self, name: str) -> None:
        """Forget the tap ``name`` (nothing when there is none)."""
        self._taps.pop(name, None)

    # ------------------------------------------------------------------ feeding (device only)
    def feed(self, name: str, t: torch.Tensor, key: Hashable = None, **update: Any) -> bool:
        """Feed ``t`` to the statistics of ``key`` in the window of ``name`` (``stats.update(t, **update)``, on the
        tensor's device, no host read); returns whether the tap is on (False once it is switched off). A new key
        makes its statistics with the user's random state kept. An unknown name is a ``KeyError``."""
        tap = self._taps[name]
        if tap.disabled:
            return False
        try:
            stats = tap.window.get(key)
            if stats is None:
                if tap.make is None:
                    raise TypeError(f"judged tap {name!r} is fed by its source, not by feed()")
                with kept_rng():  # lazy imports and the first update: nothing of the user's random state drawn
                    stats = tap.make()
                    stats.update(t, **update)
                tap.window[key] = stats
            else:
                stats.update(t, **update)
            return True
        except Exception as e:  # noqa: BLE001 - rangewatch is never the cause of a failed run
            self._switch_off(tap, e, tap.what)
            return False

    def window(self, name: str) -> Window:
        """The current window of ``name`` (read-only, live until the next check starts a new one)."""
        return MappingProxyType(self._taps[name].window)

    # ------------------------------------------------------------------ the check (host)
    def check(self, names: Iterable[str], step: int | None = None, context: Any = None) -> list[Finding]:
        """Judge the taps ``names`` in that order (unknown names are skipped, switched-off taps not judged), report
        what they found in one report (returns the fresh findings; may raise
        :class:`~rangewatch.RangeMismatchError` under ``policy="raise"``) and start their next windows."""
        taps = [self._taps[n] for n in dict.fromkeys(names) if n in self._taps]
        windows = {tap.name: MappingProxyType(tap.window) for tap in taps}
        found: dict[str, list[Finding]] = {}
        new: list[Finding] = []
        try:
            for tap in taps:
                if tap.disabled or tap.judge is None:
                    continue
                judging = Judging(step, context, MappingProxyType(dict(found)), MappingProxyType(windows))
                try:
                    got = list(tap.judge(windows[tap.name], judging))
                except Exception as e:  # noqa: BLE001
                    self._switch_off(tap, e, f"judging {tap.name}")
                    continue
                found[tap.name] = got
                new.extend(got)
            return self._report(new, step)
        finally:
            for tap in taps:
                self._reset(tap)

    def _reset(self, tap: _Judged) -> None:
        """A new window: a fresh mapping (a front end holding the old one keeps reading it), a source reset."""
        if tap.source is None:
            tap.window = {}
            return
        if tap.disabled:
            return
        try:
            tap.source.reset()
        except Exception as e:  # noqa: BLE001
            self._switch_off(tap, e, f"starting a new window of {tap.name}")

    def _switch_off(self, tap: _Judged, error: BaseException, what: str) -> None:
        """Reported once (the engine's internal-error path); only this tap is switched off."""
        if tap.disabled:
            return
        tap.disabled = True
        tap.window = {}
        tap.error = f"{type(error).__name__}: {error}"
        if tap.off is not None:
            try:
                tap.off()
            except Exception:  # noqa: BLE001 - switched off all the same; the first error is the one said
                pass
        self._internal(tap.where, error, what, tap.consequence)


class FrontEndTaps:
    """What a front end drives of :class:`JudgedTaps` and of the engine's tracing (``Watch.judged``): the
    diffusers pipeline front end registers its latents, its decode's range and its VAE / denoiser tracers here.

    Args:
        report, internal: the engine's report and internal-error path (see :class:`JudgedTaps`).
        numerics: the engine's :class:`~rangewatch.engine.numerics_tracing.NumericsTracing` (front-end tracers).
        headroom_share: the engine's ``headroom_share`` option, read when a tracer is placed.
    """

    def __init__(self, report: Callable[[list[Finding], int | None], list[Finding]],
                 internal: Callable[[str, BaseException, str, str], None], numerics: Any, headroom_share: Callable[[], float]) -> None:
        self._judged, self._numerics, self._share = JudgedTaps(report, internal), numerics, headroom_share

    def tap(self, name: str, stats: Callable[[], Any], judge: Judge | None, *, where: str | None = None,
            what: str | None = None, consequence: str | None = None) -> None:
        """Register a tap the front end judges itself: ``stats()`` makes its statistics (a ``RangeStats`` or a
        ``LatentMonitor`` with the front end's settings) per key of its window; ``judge(window, judging)``
        returns its findings at :meth:`check` (None: a tap another judge reads). ``where`` / ``what`` /
        ``consequence`` say an internal error of the tap. No per-tap scalars or histograms are written."""
        self._judged.add(name, judge, stats, where=where, what=what, consequence=consequence)

    def feed(self, name: str, t: torch.Tensor, key: Any = None, **update: Any) -> bool:
        """Feed ``t`` to the statistics of ``key`` in the judged tap ``name`` (device only); False once the tap
        is switched off (an internal error, reported once)."""
        return self._judged.feed(name, t, key, **update)

    def window(self, name: str) -> Window:
        """The judged tap ``name``'s current window, key -> statistics (read-only, until its next check)."""
        return self._judged.window(name)

    def check(self, names: list[str], step: int | None = None, context: Any = None) -> list[Finding]:
        """Judge the judged taps ``names`` in order, report their findings in one report (each once, the policy
        applied: may raise :class:`~rangewatch.RangeMismatchError`), start their next windows; returns the fresh
        findings. ``context`` reaches every judge (:class:`Judging`)."""
        with kept_rng():
            return self._judged.check(names, step, context)

    def trace(self, prefix: str, module: Any, judge: Judge | None = None, *, auto_step: bool = False,
              enabled: bool = True, history: int = 4, headroom_share: float | None = None,
              where: str | None = None, what: str | None = None, consequence: str | None = None) -> Any:
        """Trace ``module``'s leaf modules (NaN/Inf origin, fp16 headroom) for a front end, under ``prefix``:
        stepped by its forwards (``auto_step``) or by :meth:`trace_step`; with ``judge``, a judged tap ``prefix``
        whose window is the tracer (reset at each :meth:`check` naming it). The engine takes it off
        (:meth:`untrace`, ``Watch.detach``). Returns the :class:`~rangewatch.ModuleTracer`."""
        share = self._share() if headroom_share is None else headroom_share
        with kept_rng():
            tracer = self._numerics.add(prefix, module, auto_step=auto_step, history=history, headroom_share=share, enabled=enabled)
        if judge is not None:
            self._judged.add(prefix, judge, source=tracer, where=where, what=what or f"tracing {prefix}",
                             consequence=consequence, off=lambda: self._numerics.remove(prefix))
        return tracer

    def trace_step(self, prefix: str, step: int | None) -> None:
        """The forwards of the front-end tracer ``prefix`` from now on belong to ``step``."""
        self._numerics.step_front(prefix, step)

    def trace_pause(self, prefix: str) -> None:
        """The front-end tracer ``prefix`` records nothing until the next :meth:`trace_step`."""
        self._numerics.pause_front(prefix)

    def untrace(self, prefix: str | None = None) -> None:
        """Take the front-end tracer ``prefix`` off (every one with None), with its judged tap."""
        for p in self._numerics.remove(prefix):
            self._judged.remove(p)
