"""The engine's taps: the per-tap record (:class:`TapInfo` is its public snapshot), tap creation and feeding.

A tap is one watched tensor stream (a batch key, a module's input or output, a tensor handed to
:meth:`rangewatch.Watch.tensor`). :class:`TapSet` is a collaborator of :class:`rangewatch.Watch` that holds the taps:
it makes a tap the first time a tensor reaches it, feeds its statistics on every step (on the tensor's device, no
host transfer), starts its next window after a check, and saves / resumes the open windows. The check itself is in
:mod:`rangewatch.engine.checker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

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
from .reporter import FindingsReporter
from .surroundings import Surroundings

__all__ = ["TapInfo", "TapSet"]


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


class TapSet:
    """The engine's taps by name (``taps``): a tap is made the first time a tensor reaches it (its statistics, its
    latent monitor, a resumed window), then fed every step on the tensor's device (:meth:`feed`,
    :meth:`on_module_tensor`, :meth:`feed_batch`), and its window reset after each check (:meth:`reset`).

    Feeding state, set by the engine: ``detail`` (full statistics this step), ``phase`` (``"val/"`` while a validation
    loop runs: module taps are split as batch taps are), ``moments`` and ``validation`` (the ``moments_every_step`` and
    ``watch_validation`` options), ``hist_bins`` (histogram bins of new taps: decided alike on every rank at connect).
    ``expectation_for`` says which expectation applies to a tap; ``module_channels`` the channel count a hooked module
    declares per tap; ``declared_batch_paths`` the batch paths ``expect=`` names (fed even when not image-like)."""

    def __init__(self, reporter: FindingsReporter, surroundings: Surroundings, expectation_for: Callable[[str], Expectation | None],
                 declared_batch_paths: list[str], module_channels: Mapping[str, int]) -> None:
        self._reporter, self._env = reporter, surroundings
        self._expectation_for = expectation_for
        self._declared_batch_paths = declared_batch_paths
        self._module_channels = module_channels
        self.taps: dict[str, _Tap] = {}
        self.pending: dict[str, dict[str, Any]] = {}  # saved windows, taken when their tap is first seen again
        #: found while feeding (a declared convention that does not fit a tap): reported at the next check
        self.early: list[Finding] = []
        self.detail = False
        self.phase = ""
        self.moments = False
        self.validation = True
        self.hist_bins = 0

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
        exp = self._expectation_for(name)
        misfit = self._misfit(name, t, channel_dim, exp) if exp is not None and t.numel() else None
        if misfit is not None:  # reported at the next check (a collective point under DDP), never from a hook
            self.early.append(misfit)
            tap = _Tap(name, channel_dim, self._make_stats(channel_dim, None), misfit=True)
            self.taps[name] = tap
            return tap
        if exp is not None and exp.conv.kind == "latent":
            from ..checks.latents import LatentMonitor

            mon = LatentMonitor(exp.conv, channel_dim=channel_dim, dist_sync_fn=stats_sync_fn(self._env.collectives))
            pending = self.pending.pop(name, None)
            steps_checked = 0
            if pending is not None:  # a resumed fit goes on with the saved window
                try:
                    if "latent" in pending:
                        mon.load_state_dict(pending["latent"], device=t.device)
                        mon.stats.dtypes_seen = set(pending.get("dtypes", ()))
                    steps_checked = _count(pending.get("steps_checked", 0))
                except Exception as e:  # noqa: BLE001
                    mon = LatentMonitor(exp.conv, channel_dim=channel_dim, dist_sync_fn=stats_sync_fn(self._env.collectives))
                    self._unreadable_window(name, e)
            tap = _Tap(name, channel_dim, mon.stats, latent=mon)
            tap.steps_checked = steps_checked
            self.taps[name] = tap
            return tap
        bounds = exp.conv if exp is not None and exp.conv.kind == "pixel" else None
        stats = self._make_stats(channel_dim, bounds)
        tap = _Tap(name, channel_dim, stats, bounds=bounds)
        if t.dim() == 4 and channel_dim == 3:
            tap.layout = f"read as channels-last (N, H, W, C): {tuple(t.shape)} has its {t.shape[3]} channels on dim 3"
        pending = self.pending.pop(name, None)
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
        self.taps[name] = tap
        return tap

    def placeholder(self, name: str, channel_dim: int | None) -> _Tap:
        """An empty tap for one that another rank has: it takes part in the reductions with no data."""
        probe = torch.empty(0, device=self._env.collectives.device)
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
        return RangeStats(channel_dim=channel_dim, bounds=bounds, hist_bins=self.hist_bins, dist_sync_fn=stats_sync_fn(self._env.collectives))

    def feed(self, name: str, t: torch.Tensor, channel_dim: int | None) -> None:
        """Feed ``t`` to the tap ``name`` (made at its first tensor, channels on ``channel_dim``; None: per tensor)."""
        tap = self.taps.get(name)
        if tap is None or (self.detail and not tap.steps_checked):  # a tap's first tensor or first detail update:
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
                tap.latent.update(t, preview=self.detail)  # the preview sample copied at check steps only
            else:
                tap.stats.update(t, detail=self.detail, moments=self.moments)
            tap.fed = True
        except (ConfigError, RangeMismatchError):
            raise
        except Exception as e:  # rangewatch must never be the cause of a failed run
            self._reporter.internal(name, e, tap)

    def on_module_error(self, tap_name: str, error: BaseException) -> None:
        """A module hook failed (ModuleTaps never lets it reach the model): that tap is switched off."""
        self._reporter.internal(tap_name, error, self.taps.get(tap_name))

    def on_module_tensor(self, tap_name: str, t: torch.Tensor) -> None:
        """A module's input or output (or a tensor handed to ``Watch.tensor`` without a channel dim): its channel dim
        found at its first tensor; a tensor that cannot be watched is said once."""
        if self.phase:  # a validation forward: its own tap (val/...), never the training window
            if not self.validation:
                return
            tap_name = self.phase + tap_name
        tap = self.taps.get(tap_name)
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
                self.taps[tap_name] = _Tap(tap_name, 1, RangeStats(), disabled=True)
                return
            exp = self._expectation_for(tap_name)
            cd = convention_channel_dim(t, exp.conv) if exp is not None and exp.conv.kind == "latent" else None
            declared = None if cd is not None else self._module_channels.get(tap_name.split("/", 1)[-1])
            if declared is not None:  # the module's own convention (in_channels / out_channels): its axis
                cd = channel_dim_for(t, declared)
            if cd is None:
                cd = image_channel_dim(t, channels=tuple(range(1, 65)))
            if cd is None:
                # not image-like ((B, L, D) token sequences whose L varies, say): per-tensor statistics, which
                # assume no channel axis; a tap with an expectation keeps dim 1 (its convention is per channel)
                cd = 1 if exp is not None else None
            self.feed(tap_name, t, cd)
            return
        self.feed(tap_name, t, tap.channel_dim)

    def feed_batch(self, batch: Any, prefix: str, keys: Any, skip: tuple[str, ...]) -> None:
        """A batch's image-like tensors (found by :func:`~rangewatch.taps.batches.find_images` with the ``batch_keys``
        and ``skip_keys`` options), each a tap named ``prefix`` + its path; declared paths that do not look like images too."""
        skipped: list[tuple[str, str]] = []
        try:
            images = find_images(batch, keys, skip, notes=skipped)
            for path, why in skipped:  # said once per path: what is not watched, and why
                self._reporter.note_once(f"skipped {prefix}{path}", f"rangewatch: {prefix}{path} is not watched: {why}")
        except Exception as e:
            self._reporter.internal(f"{prefix}batch", e, None, what="looking for the image tensors in the batch (this batch is not watched)")
            return
        seen = set()
        for img in images:
            seen.add(img.path)
            self.feed(prefix + img.path, img.tensor, img.channel_dim)
        for key in self._declared_batch_paths:  # declared keys that do not look like images (latents)
            if key not in seen:
                t = resolve_path(batch, key)
                if t is not None and odd_tensor_kind(t) is None and t.is_floating_point() and t.dim() >= 3 and t.numel():
                    tap = self.taps.get(prefix + key)
                    if tap is not None:  # its channel dim was found at its first tensor
                        self.feed(prefix + key, t, tap.channel_dim)
                        continue
                    exp = self._expectation_for(prefix + key)
                    cd = convention_channel_dim(t, exp.conv) if exp is not None else None  # (N, T, C, H, W) latents too
                    self.feed(prefix + key, t, 1 if cd is None else cd)

    def reset(self, tap: _Tap) -> None:
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

    # ------------------------------------------------------------------ reading and saving
    def snapshot(self) -> Mapping[str, TapInfo]:
        """Every tap by name, read-only (``Watch.taps``)."""
        out = {}
        for name, t in sorted(self.taps.items()):
            out[name] = TapInfo(
                name=name, channel_dim=t.channel_dim, channels=t.channels, disabled=t.disabled, error=t.error,
                inferred=t.inferred, expectation=self._expectation_for(name), steps_checked=t.steps_checked, fed=t.fed,
                dtypes=tuple(sorted(t.stats.dtypes_seen)), stats=t.stats, latent=t.latent,
            )
        return MappingProxyType(out)

    def watching(self, expectations: Mapping[str, Expectation], cadence: str) -> str:
        """What is watched (said once per fit after the first checked batch): each tap with its channels and its
        expectation (and where that comes from, unless it is one of ``expectations``, said at fit start) or what the
        data looks like, the taps not watched and why, ``expectations`` whose tap has not been seen yet, the ``cadence``."""
        lines = []
        live = {n: t for n, t in sorted(self.taps.items()) if not t.disabled}
        off = {n: t for n, t in sorted(self.taps.items()) if t.disabled}
        width = min(36, max([len(n) for n in live] + [4]))
        for name, t in live.items():
            exp = self._expectation_for(name)
            ch = f"{t.channels} ch" if t.channels else ""
            if exp is not None:
                listed = any(exp is e for e in expectations.values())
                what = f"expects {exp.convention}" + ("" if listed else f" ({exp.source})")
            elif t.inferred is not None and t.inferred.name != "unknown":
                what = f"no expectation; the data looks like {t.inferred.name}" + ("" if t.inferred.confident else " (not sure)")
            else:
                what = "no expectation; watched for NaN/Inf and range only"
            lines.append(f"  {name:<{width}} {ch:>5}  {what}")
        for name, t in off.items():
            lines.append(f"  not watched: {name} ({t.error or 'not an image-like tensor'})")
        for n in sorted(expectations):
            if n not in self.taps and not n.startswith("val/"):
                lines.append(f"  not seen yet: {n} (expects {expectations[n].convention})")
        head = f"rangewatch: watching {len(live)} tap{'s' if len(live) != 1 else ''} ({cadence})"
        if not live:
            head += ": no image-like tensor in the batches; name tensors with expect= / modules="
        return head + ("\n" + "\n".join(lines) if lines else "")

    def nonfinite_flag(self) -> torch.Tensor:
        """Whether a live tap saw NaN/Inf since the last check, on the device (no host read)."""
        from ..checks.numerics import nonfinite_flag

        return nonfinite_flag([t.stats for t in self.taps.values() if not t.disabled])

    def summaries(self, split: str) -> dict[str, Any]:
        """The current window of each fed tap of ``split``, computed without starting a new one (a collective under
        several processes)."""
        out = {}
        for name in sorted(self.taps):
            tap = self.taps[name]
            if tap.disabled or not tap.fed or name.startswith("val/") != (split == "val"):
                continue
            try:
                out[name] = tap.stats.compute()
            except Exception as e:  # noqa: BLE001
                self._reporter.internal(name, e, tap)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Each live tap's open window: statistics, bounds, channel dim, dtypes, checks so far (a latent tap's monitor too)."""
        taps = {}
        for name, tap in self.taps.items():
            if tap.disabled:
                continue
            try:
                stats = tap.stats.state_dict()
                if any(v.is_meta for v in stats.values()):
                    continue  # no values to save (a meta tap); a checkpoint must never fail on rangewatch's state
                taps[name] = {
                    "stats": {k: v.detach().cpu() for k, v in stats.items()},
                    "bounds": None if tap.bounds is None else tap.bounds.name,
                    "channel_dim": tap.channel_dim,
                    "dtypes": sorted(tap.stats.dtypes_seen),
                    "steps_checked": tap.steps_checked,
                }
                if tap.latent is not None:  # its soft-clamp counts too (LatentMonitor's own state)
                    taps[name]["latent"] = tap.latent.state_dict()
            except Exception as e:  # noqa: BLE001
                self._reporter.internal(name, e, tap)
        return taps

    def load(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        """Resume: the taps start again, each taking its ``saved`` window when it is first seen."""
        self.taps.clear()
        self.pending = dict(saved)
