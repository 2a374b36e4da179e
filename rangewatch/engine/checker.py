"""The engine's check step: judging one tap at a check step, on the host.

:class:`TapChecks` is a collaborator of :class:`rangewatch.Watch` that turns a tap's :class:`~rangewatch.stats.range_stats.RangeSummary`
into findings: the values sampled since earlier checks (the evidence), convention inference (:mod:`rangewatch.checks.inference`),
the pixel rules against the tap's expectation (:mod:`rangewatch.checks.rules`), a latent tap's own check
(:mod:`rangewatch.checks.latents`), NaN/Inf, the reconciliation of loader predictions with what reaches a module's input,
and the scalars each tap logs. The engine's check loop (:meth:`rangewatch.Watch.check`) runs it over every tap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from .expectations import ExpectationSources
from .reporter import FindingsReporter
from .surroundings import Surroundings
from .tapset import _Tap
from ..expect.expectation import Expectation
from ..config import ConfigError
from ..findings.finding import Finding, RangeMismatchError, nonfinite_finding, note_finding
from ..checks.inference import Inference, infer_convention
from ..checks.rules import check_expectation
from ..sinks.loggers import detail_tag, tag
from ..stats.range_stats import RangeSummary

__all__ = ["TapChecks"]


class TapChecks:
    """The engine's check step for one tap: :meth:`judge` (the tap's sampled evidence, convention inference, the pixel
    rules against its expectation from ``sources``, the latent monitor's check, NaN/Inf, the withdrawal of a loader
    prediction that a module-input tap rules out: its one piece of state, ``withdrawn``) and :meth:`metrics` (the
    tap's scalars)."""

    def __init__(self, sources: ExpectationSources, reporter: FindingsReporter, surroundings: Surroundings) -> None:
        self._sources, self._reporter, self._env = sources, reporter, surroundings
        self.withdrawn: set[str] = set()  # loader-prediction findings withdrawn (each said once)

    def check_taps(self, taps: dict[str, _Tap], which: Callable[[str], bool], step: int, *, check_first_n: int,
                   per_channel: bool, gather: Callable[[_Tap, int], None] | None = None,
                   ) -> tuple[list[Finding], dict[str, float], list[tuple[str, RangeSummary]]]:
        """Read (the host transfer, and the cross-rank reduction), judge and measure every live tap that ``which``
        selects; returns the findings, the scalars and the summaries read. ``gather``: under several processes, every
        rank's value sample for a tap (every rank then takes part in every tap's reduction, fed this window or not).
        A tap that fails is switched off (an internal error), the others go on."""
        new: list[Finding] = []
        metrics: dict[str, float] = {}
        summaries: list[tuple[str, RangeSummary]] = []
        for name in sorted(taps):
            tap = taps[name]
            if tap.disabled or not which(name) or (not tap.fed and gather is None):
                continue
            try:
                s = tap.stats.compute()  # the host transfer (and the cross-rank reduction)
                tap.channels = s.channels
                if gather is not None and tap.latent is None:
                    gather(tap, s.channels)
                new.extend(self.judge(tap, s, step, check_first_n))
                metrics.update(self.metrics(tap, s, per_channel))
                summaries.append((name, s))
            except (ConfigError, RangeMismatchError):
                raise
            except Exception as e:
                self._reporter.internal(name, e, tap)
        return new, metrics, summaries

    def _take_evidence(self, tap: _Tap) -> Any:
        """This window's sampled values added to what earlier checks sampled (bounded)."""
        import numpy as np

        vs = tap.stats.value_sample
        new = vs.take()
        if new is not None and new.shape[1]:
            old = tap.evidence
            tap.evidence = np.concatenate([old, new], axis=1)[:, -vs.keep :] if old is not None and old.shape[0] == new.shape[0] else new
            tap.images += vs.images
        vs.clear()
        return tap.evidence

    def judge(self, tap: _Tap, s: RangeSummary, step: int, check_first_n: int) -> list[Finding]:
        """The findings of ``tap``'s window ``s`` at check ``step``; a tap checked ``check_first_n`` times (the end of
        the check window) is judged on what evidence there is."""
        out: list[Finding] = []
        if s.empty:
            return out
        tap.steps_checked += 1
        if tap.latent is not None:
            return tap.latent.check(step, where=tap.name)
        stage = "val" if tap.name.startswith("val/") else "train"
        loader = self._sources.loader.get(stage)
        noise = self._sources.loader_noise.get(stage, 0.0)
        sample = self._take_evidence(tap)
        images = tap.images
        prior = loader.conv if loader is not None and tap.name.removeprefix("val/").startswith("batch") else None
        inf = infer_convention(s, sample=sample, images=images, prior=prior, noise_share=noise, extra=self._sources.carried_conventions())
        tap.inferred = inf
        exp = self._sources.for_tap(tap.name)
        # a model's *outputs* (an untrained decoder, say) are not held to a convention: watched, not judged
        judged = exp is not None and not tap.misfit and not (exp.origin == "model" and tap.name.endswith(":output"))
        # one image (batch size 1, first check) is rarely enough: wait for the next check to add evidence
        enough = sample is None or images >= 2 or tap.steps_checked >= max(1, check_first_n)
        if exp is not None and judged and exp.conv.kind == "pixel" and enough:
            f = check_expectation(tap.name, s, inf, exp.conv, step=step, source=exp.source, noise_share=noise)
            if f is not None:
                if tap.layout:  # say how the tensor was read (a channels-last batch, say)
                    f = dataclasses.replace(f, evidence=f"{f.evidence}; {tap.layout}")
                out.append(f)
            elif tap.name.endswith(":input"):
                self._reconcile(tap.name, inf, exp)
        nonfinite = int(s.nonfinite.sum()) if float(s.detail_count.sum()) else 0
        if bool(s.nonfinite_seen.any()):
            chans = [str(i) for i, v in enumerate(s.nonfinite_seen.tolist()) if v]
            count = f"{nonfinite} non-finite values (NaN {int(s.nan.sum())}, Inf {int(s.inf.sum())})" if nonfinite else "NaN/Inf values"
            out.append(nonfinite_finding(
                tap.name, observed="NaN/Inf", evidence=f"{count} in channel(s) {', '.join(chans)} since the last check",
                fix="find where they start: RangeWatch(modules=[...]) on the suspects; in fp16 try bf16 or keep the overflowing module in fp32",
                step=step,
            ))
        return out

    def _reconcile(self, tap: str, inf: Inference, exp: Expectation) -> None:
        """Module-input taps outrank loader predictions: when the data reaching ``tap`` are compatible
        with what the module expects and rule out what the loader was predicted to produce (the model
        converts in between, e.g. ``x * 2 - 1`` before its VAE), the loader-prediction finding for
        ``tap`` is withdrawn, and that is said once."""
        where = f"train dataloader -> {tap}"
        if where in self.withdrawn:
            return
        standing = [f for f in self._reporter.log.findings if f.kind == "mismatch" and f.where == where]
        if not standing or exp.convention not in inf.compatible:
            return
        loader = standing[0].observed
        if loader in inf.compatible:  # the tap cannot tell the loader's convention from the module's
            return
        self.withdrawn.add(where)
        self._reporter.log.withdraw("mismatch", where)
        module = tap.rsplit(":", 1)[0]
        note = note_finding(
            where, "withdrawn", expected=exp.convention,
            evidence=(f"the loader prediction ({loader}) is withdrawn: the values that reach {tap} follow "
                      f"{exp.conv.label}, as {module} expects, and rule out {loader} ({inf.excluded.get(loader, 'see the tap')}); "
                      f"the model converts the loader's output itself"),
            fix="nothing to do", step=self._env.step(), source=exp.source,
        )
        self._reporter.log.add(note)
        self._env.info(f"rangewatch: {note}")

    def metrics(self, tap: _Tap, s: RangeSummary, per_channel: bool = False) -> dict[str, float]:
        """Per tap in the compact ``rangewatch/`` group its ``min``, ``max`` and ``out_of_range`` share (three
        TensorBoard cards); per channel ``min``/``max``/``mean`` (``std`` too with ``per_channel``: the
        ``per_channel_scalars`` option), the ``nonfinite`` count and the expected range in ``rangewatch_channels/``."""
        m: dict[str, float] = {}
        full = per_channel
        stats = (("min", s.range_min), ("max", s.range_max), ("mean", s.mean)) + ((("std", s.std),) if full else ())
        for c in range(s.channels):
            for stat, vals in stats:
                v = float(vals[c])
                if math.isfinite(v):
                    m[detail_tag(tap.name, stat, c)] = v
            if full and float(s.detail_count[c]) > 0:
                m[detail_tag(tap.name, "nonfinite", c)] = float(s.nonfinite[c])
                if s.bounds is not None:
                    m[detail_tag(tap.name, "out_of_range", c)] = float((s.below[c] + s.above[c]) / s.detail_count[c])
        lo_all = [float(v) for v in s.range_min if math.isfinite(float(v))]
        hi_all = [float(v) for v in s.range_max if math.isfinite(float(v))]
        if lo_all and hi_all:
            m[tag(tap.name, "min")], m[tag(tap.name, "max")] = min(lo_all), max(hi_all)
        counted = float(s.detail_count.sum())
        if counted > 0:  # one figure each for the whole tap
            m[detail_tag(tap.name, "nonfinite")] = float(s.nonfinite.sum())
            if s.bounds is not None:
                m[tag(tap.name, "out_of_range")] = float((s.below.sum() + s.above.sum()) / counted)
        exp = self._sources.for_tap(tap.name)
        if exp is not None and exp.conv.kind == "pixel":
            try:
                lo, hi = exp.conv.bounds(s.channels)
            except ValueError:  # a convention that does not fit the channel count (a mismatch finding says so)
                lo = hi = ()
            if lo and hi:
                m[detail_tag(tap.name, "expected_min")], m[detail_tag(tap.name, "expected_max")] = float(min(lo)), float(max(hi))
        return m
