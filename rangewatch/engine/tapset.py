"""The engine's taps: the per-tap record (:class:`TapInfo` is its public snapshot), tap creation and feeding.

A tap is one watched tensor stream (a batch key, a module's input or output, a tensor handed to
:meth:`rangewatch.Watch.tensor`). :class:`TapFeeding` is the part of :class:`rangewatch.Watch` that makes a tap the
first time a tensor reaches it, feeds its statistics on every step (on the tensor's device, no host transfer)
and starts its next window after a check. The check itself is in :mod:`rangewatch.engine.checker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError
from ..rng import kept_rng
from ..expect.conventions import Convention, get_convention
from ..expect.expectation import Expectation
from ..findings.finding import Finding, RangeMismatchError, mismatch_finding
from ..checks.inference import Inference
from ..stats.range_stats import RangeStats
from ..taps.batches import find_images, image_channel_dim, odd_tensor_kind, resolve_path
from ..taps.layout import channel_dim_for, convention_channel_dim
from .agreement import stats_sync_fn

__all__ = ["TapInfo", "TapFeeding"]


@dataclass
class _Tap:
    name: str
    channel_dim: int | None  # None: per-tensor statistics (a non-image module tensor)
    stats: RangeStats
    fed: bool = False
    disabled: bool = False
    inferred: Inference | None = None
    bounds: Convention | None = None  # the convention whose bounds the statistics count against (carried, not looked up)
    steps_checked: int = 0
    latent: Any = None  # a LatentMonitor for taps expected to carry latents
    error: str | None = None  # why rangewatch switched this tap off (internal error)
    misfit: bool = False  # its expected convention does not fit its channel count (a mismatch finding said so)
    layout: str | None = None  # the layout assumed when it is not the usual channels-first one
    channels: int = 0  # as the last check step saw them (for the console)
    evidence: Any = None  # (C, n) values sampled on check steps, kept across checks: the evidence behind verdicts
    images: int = 0  # images behind `evidence`


@dataclass(frozen=True)
class TapInfo:
    """What the engine knows about one tap (a snapshot; :attr:`Watch.taps` builds them).

    ``inferred`` is the convention the last check inferred (None before a check, and for latent taps);
    ``stats`` and ``latent`` are the live accumulators (read them, do not feed them)."""

    name: str
    channel_dim: int | None
    channels: int  # as the last check saw them
    disabled: bool
    error: str | None  # why rangewatch switched the tap off after an internal error
    inferred: Inference | None
    expectation: Expectation | None
    steps_checked: int
    fed: bool  # fed since the last check
    dtypes: tuple[str, ...]
    stats: RangeStats
    latent: Any  # the LatentMonitor of a latent tap, else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"steps_checked = {str(value)[:40]} is not a count")
    return value


class TapFeeding:
    """The engine's per-tap bookkeeping (a mixin of :class:`~rangewatch.engine.watch.Watch`): a tap is made the first
    time a tensor reaches it (its statistics, its latent monitor, a resumed window), then fed every step on the
    tensor's device, and its window reset after each check."""

    def _misfit(self, name: str, t: torch.Tensor, channel_dim: int | None, exp: Expectation) -> Finding | None:
        """A ``mismatch`` finding when the expected convention cannot apply to this tensor's channel
        count (16-channel Flux latents declared ``sdxl_latent``, ``imagenet`` on 2 channels): the
        user's declaration (or the model's metadata) does not fit, which is not an internal error."""
        if channel_dim is None or t.dim() == 0:
            return None
        c = int(t.shape[channel_dim])
        conv = exp.conv
        if conv.kind == "latent":
            if conv.channels is None or conv.channels == c:
                return None
            fits = f"{conv.channels} channels"
        else:
            try:
                conv.bounds(c)
                return None
            except ValueError:
                fits = "1 channel, or " + " or ".join(sorted({str(len(conv.mean)), str(len(conv.mean) + 1)})) + " channels"
        return mismatch_finding(
            where=name,
            observed=f"{c} channels",
            expected=f"{exp.convention} ({fits})",
            evidence=(
                f"{name} carries {c} channels (shape {tuple(t.shape)}, channel dim {channel_dim}) but is expected to follow "
                f"{exp.convention} ({exp.source}), a convention for {fits}: the expectation does not fit this tensor, so it "
                "cannot be checked; the tap is watched without it"
            ),
            fix=(
                f"expect the convention that fits {c}-channel data here (`rangewatch conventions` lists them, e.g. flux_latent "
                "or sd3_latent for 16-channel latents), or name the tap that carries the data you meant"
            ),
            severity="error",
            step=self._env.step(),
            source=exp.source,
        )

    def _new_tap(self, name: str, t: torch.Tensor, channel_dim: int | None) -> _Tap:
        exp = self.expectation_for(name)
        misfit = self._misfit(name, t, channel_dim, exp) if exp is not None and t.numel() else None
        if misfit is not None:  # reported at the next check (a collective point under DDP), never from a hook
            self._early.append(misfit)
            tap = _Tap(name, channel_dim, self._make_stats(channel_dim, None), misfit=True)
            self._taps[name] = tap
            return tap
        if exp is not None and exp.conv.kind == "latent":
            from ..checks.latents import LatentMonitor

            mon = LatentMonitor(exp.conv, channel_dim=channel_dim, dist_sync_fn=stats_sync_fn(self.collectives))
            pending = self._pending_states.pop(name, None)
            steps_checked = 0
            if pending is not None:  # a resumed fit goes on with the saved window
                try:
                    if "latent" in pending:
                        mon.load_state_dict(pending["latent"], device=t.device)
                        mon.stats.dtypes_seen = set(pending.get("dtypes", ()))
                    steps_checked = _count(pending.get("steps_checked", 0))
                except Exception as e:  # noqa: BLE001
                    mon = LatentMonitor(exp.conv, channel_dim=channel_dim, dist_sync_fn=stats_sync_fn(self.collectives))
                    self._unreadable_window(name, e)
            tap = _Tap(name, channel_dim, mon.stats, latent=mon)
            tap.steps_checked = steps_checked
            self._taps[name] = tap
            return tap
        bounds = exp.conv if exp is not None and exp.conv.kind == "pixel" else None
        stats = self._make_stats(channel_dim, bounds)
        tap = _Tap(name, channel_dim, stats, bounds=bounds)
        if t.dim() == 4 and channel_dim == 3:
            tap.layout = f"read as channels-last (N, H, W, C): {tuple(t.shape)} has its {t.shape[3]} channels on dim 3"
        pending = self._pending_states.pop(name, None)
        if pending is not None:  # a resumed fit goes on with the saved window
            try:
                saved = self._saved_bounds(pending.get("bounds", bounds), bounds)
                stats = self._make_stats(channel_dim, saved)
                stats.load_state_dict(pending["stats"])
                stats.dtypes_seen = {str(d) for d in pending.get("dtypes", ())}
                stats.to(t.device)
                tap.steps_checked = _count(pending.get("steps_checked", 0))
                tap.bounds, tap.stats = saved, stats
            except Exception as e:  # noqa: BLE001
                self._unreadable_window(name, e)
        self._taps[name] = tap
        return tap

    def _placeholder_tap(self, name: str, channel_dim: int | None) -> _Tap:
        """An empty tap for one that another rank has: it takes part in the reductions with no data."""
        probe = torch.empty(0, device=self.collectives.device)
        tap = self._new_tap(name, probe, channel_dim)
        tap.stats.to(probe.device)
        return tap

    def _unreadable_window(self, name: str, error: BaseException) -> None:
        """A saved window that cannot be read (a tampered or foreign checkpoint): said once, the tap starts empty."""
        self._reporter.note_once("state", f"rangewatch: the saved window of {name} cannot be read ({type(error).__name__}: {str(error)[:200]}); "
                                 "it is dropped and the tap starts an empty window (later ones are dropped the same way)")

    @staticmethod
    def _saved_bounds(saved: Any, current: Convention | None) -> Convention | None:
        """The convention a saved window counted against (saved by name): the tap's expected one when the
        names agree (a custom convention is carried, not in the catalogue), else the catalogue's."""
        if saved is None or isinstance(saved, Convention):
            return saved
        if current is not None and saved == current.name:
            return current
        return get_convention(saved)

    def _make_stats(self, channel_dim: int | None, bounds: Convention | None) -> RangeStats:
        # histograms only where they can be logged (decided alike on every rank: the states must match)
        bins = self.hist_bins if self.histograms and self._has_tensorboard else 0
        return RangeStats(channel_dim=channel_dim, bounds=bounds, hist_bins=bins, dist_sync_fn=stats_sync_fn(self.collectives))

    def _feed(self, name: str, t: torch.Tensor, channel_dim: int | None) -> None:
        tap = self._taps.get(name)
        if tap is None or (self._detail and not tap.steps_checked):  # a tap's first tensor or first detail update:
            # the user's random state kept (lazy imports happen then; later updates run code already run)
            with kept_rng():
                self._feed_tap(name, t, channel_dim, tap)
        else:
            self._feed_tap(name, t, channel_dim, tap)

    def _feed_tap(self, name: str, t: torch.Tensor, channel_dim: int | None, tap: _Tap | None) -> None:
        try:
            if tap is None:
                tap = self._new_tap(name, t, channel_dim)
            if tap.disabled:
                return
            if tap.latent is not None:
                tap.latent.update(t)
            else:
                tap.stats.update(t, detail=self._detail, moments=self.moments_every_step)
            tap.fed = True
        except (ConfigError, RangeMismatchError):
            raise
        except Exception as e:  # rangewatch must never be the cause of a failed run
            self._reporter.internal(name, e, tap)

    def _on_module_error(self, tap_name: str, error: BaseException) -> None:
        """A module hook failed (ModuleTaps never lets it reach the model): that tap is switched off."""
        self._reporter.internal(tap_name, error, self._taps.get(tap_name))

    def _on_module_tensor(self, tap_name: str, t: torch.Tensor) -> None:
        if self._phase:  # a validation forward: its own tap (val/...), never the training window
            if not self.watch_validation:
                return
            tap_name = self._phase + tap_name
        tap = self._taps.get(tap_name)
        if tap is not None and tap.disabled:
            return
        if type(t) is not torch.Tensor or t.layout is not torch.strided or t.is_nested or t.is_meta:
            kind = odd_tensor_kind(t)
            if kind is not None:  # this call is skipped; the tap stays on for the dense tensors it carries
                self._reporter.note_once(f"{tap_name}:{kind}", f"rangewatch: {tap_name} carries a {kind} tensor: rangewatch reads dense tensors only, so it is not watched")
                return
        if tap is None:
            if not (t.is_floating_point() or t.dtype == torch.uint8) or t.dim() < 2 or t.numel() == 0:
                self._reporter.note_once(tap_name, f"{tap_name} carries a {t.dtype} tensor of shape {tuple(t.shape)}: not image-like, not watched")
                self._taps[tap_name] = _Tap(tap_name, 1, RangeStats(), disabled=True)
                return
            exp = self.expectation_for(tap_name)
            cd = convention_channel_dim(t, exp.conv) if exp is not None and exp.conv.kind == "latent" else None
            declared = None if cd is not None else getattr(getattr(self, "_module_taps", None), "channels", {}).get(tap_name.split("/", 1)[-1])
            if declared is not None:  # the module's own convention (in_channels / out_channels): its axis
                cd = channel_dim_for(t, declared)
            if cd is None:
                cd = image_channel_dim(t, channels=tuple(range(1, 65)))
            if cd is None:
                # not image-like ((B, L, D) token sequences whose L varies, say): per-tensor statistics, which
                # assume no channel axis; a tap with an expectation keeps dim 1 (its convention is per channel)
                cd = 1 if self.expectation_for(tap_name) is not None else None
            self._feed(tap_name, t, cd)
            return
        self._feed(tap_name, t, tap.channel_dim)

    def _feed_batch(self, batch: Any, prefix: str) -> None:
        skipped: list[tuple[str, str]] = []
        try:
            images = find_images(batch, self.batch_keys, self.skip_keys, notes=skipped)
            for path, why in skipped:  # said once per path: what is not watched, and why
                self._reporter.note_once(f"skipped {prefix}{path}", f"rangewatch: {prefix}{path} is not watched: {why}")
        except Exception as e:
            self._reporter.internal(f"{prefix}batch", e, None, what="looking for the image tensors in the batch (this batch is not watched)")
            return
        seen = set()
        for img in images:
            seen.add(img.path)
            self._feed(prefix + img.path, img.tensor, img.channel_dim)
        for key in self._declared_batch_paths:  # declared keys that do not look like images (latents)
            if key not in seen:
                t = resolve_path(batch, key)
                if t is not None and odd_tensor_kind(t) is None and t.is_floating_point() and t.dim() >= 3 and t.numel():
                    exp = self.expectation_for(prefix + key)
                    cd = convention_channel_dim(t, exp.conv) if exp is not None else None  # (N, T, C, H, W) latents too
                    self._feed(prefix + key, t, 1 if cd is None else cd)

    def _reset(self, tap: _Tap) -> None:
        """Start a new window; once a convention is known, histograms and out-of-range use its bounds."""
        if tap.latent is not None:
            tap.latent.reset()
            tap.fed = False
            return
        target = tap.bounds
        if target is None and tap.inferred is not None and tap.inferred.confident and tap.inferred.name != "unknown":
            target = tap.inferred.convention
        if target != tap.bounds:
            tap.stats.reset_with_bounds(target)
            tap.bounds = target
        else:
            tap.stats.reset()
        tap.fed = False
