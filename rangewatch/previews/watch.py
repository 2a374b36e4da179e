"""The visualisation watcher: :class:`VisualizationWatch` and :func:`watch_visualization`.

A started watcher is handed each observed call (:mod:`~rangewatch.previews.patching`), measured once
(:mod:`~rangewatch.previews.measure`); it judges the call (:mod:`~rangewatch.previews.judge`), keeps
a :class:`~rangewatch.previews.records.VisRecord`, reports each new finding once and keeps the first
images of flagged call sites as :class:`~rangewatch.previews.drawing.Preview` objects.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from ..findings.finding import Finding, FindingKey, first_seen, note_finding
from .calls import OBSERVED_CALLS
from .drawing import Preview
from .judge import ClippingJudge
from .measure import Observation
from .patching import PATCHER, load_basicsr
from .records import VisRecord
from ..sinks.tags import PREVIEW_GROUP, tag_safe

__all__ = ["VisualizationWarning", "VisualizationWatch", "watch_visualization", "watches"]


class VisualizationWarning(UserWarning):
    """Warning issued for a visualisation finding when a watcher has no ``on_finding`` callable."""


#: every watcher alive (weakly): :func:`~rangewatch.previews.log.log_previews` finds a finding's record through them
_WATCHES: "weakref.WeakSet[VisualizationWatch]" = weakref.WeakSet()


def watches() -> list["VisualizationWatch"]:
    """The watchers alive now (started or not)."""
    return list(_WATCHES)


class VisualizationWatch:
    """Observes image-conversion calls while started; see the module docstring.

    Args:
        threshold: share of values (0..1) a call must clamp to make a ``clipping`` finding.
        max_preview_images: images kept per flagged call site for :func:`~rangewatch.previews.log.log_previews`.
        logger: a ``SummaryWriter`` or Lightning ``TensorBoardLogger``; when given, :meth:`stop`
            logs the pending previews to it (at :attr:`step`).
        context: how findings name the calls, e.g. ``"validation preview"``.
        on_finding: called with each new :class:`Finding`; without it a
            :class:`VisualizationWarning` is issued (``warn=False`` silences that).
        overshoot_threshold: when the data already follows the assumed range (a model output in
            [0, 1] that overshoots a little), clamping is what the call is for: only a share
            above this makes an ``info`` finding.
        previews: keep images of flagged calls for previews (device-side clones of at most
            ``max_preview_images`` images per call site until :meth:`pop_previews`).
        hist_bins: bins of the per-channel preview histogram (0: none).
        basicsr: observe basicsr's ``tensor2img``: ``None`` when installed (it is imported, with
            :func:`rangewatch.compat.basicsr.enable_basicsr_compat`), ``True`` required, ``False`` never.
        calls: names (from :data:`OBSERVED_CALLS`) to observe; default all.
        max_records: records kept until :meth:`pop_records` (oldest dropped first).
        step: the step stamped on findings; the callback keeps it up to date.

    ``threshold`` and ``overshoot_threshold`` live on :attr:`clipping`, the
    :class:`~rangewatch.previews.judge.ClippingJudge` that judges each call.
        gate: ``gate(call_site, filename) -> bool``, asked before a call is measured (``call_site``
            is ``"<call>|<function>|<file>:<line>"``, ``filename`` the caller's full path): False
            skips the call for this watcher at no cost. The callback judges previews at check
            steps and at the first call of each call site this way.
    """

    def __init__(
        self,
        threshold: float = 0.005,
        max_preview_images: int = 4,
        logger: Any = None,
        *,
        context: str = "preview",
        on_finding: Callable[[Finding], Any] | None = None,
        warn: bool = True,
        overshoot_threshold: float = 0.05,
        previews: bool = True,
        hist_bins: int = 64,
        basicsr: bool | None = None,
        calls: Iterable[str] | None = None,
        max_records: int = 1000,
        step: int | None = None,
        gate: Callable[[str, str], bool] | None = None,
    ) -> None:
        if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be a share of values in [0, 1], got {threshold!r}")
        if not (isinstance(max_preview_images, int) and max_preview_images >= 0):
            raise ValueError(f"max_preview_images must be a non-negative int, got {max_preview_images!r}")
        wanted = tuple(OBSERVED_CALLS if calls is None else calls)
        unknown = [c for c in wanted if c not in OBSERVED_CALLS]
        if unknown:
            raise ValueError(f"unknown call name(s) {unknown}; observable calls: {', '.join(OBSERVED_CALLS)}")
        self.clipping = ClippingJudge(threshold, overshoot_threshold)
        self.max_preview_images = max_preview_images
        self.logger = logger
        self.context = context
        self.on_finding = on_finding
        self.warn = warn
        self.keep_previews = previews and max_preview_images > 0
        self.hist_bins = hist_bins
        self.basicsr = basicsr
        self.calls = frozenset(wanted)
        self.step = step
        self.gate = gate
        self.findings: list[Finding] = []
        self._records: deque[VisRecord] = deque(maxlen=max_records)
        self._seen: set[FindingKey] = set()
        self._previews: dict[str, Preview] = {}  # call site -> preview being filled
        self._done_previews: list[Preview] = []
        self._depth = 0
        self._lock = threading.RLock()
        self._record_of: dict[int, tuple[Finding, weakref.ReferenceType[VisRecord]]] = {}  # id(finding) -> its record
        _WATCHES.add(self)

    # ---------------------------------------------------------------- lifecycle
    @property
    def active(self) -> bool:
        return self._depth > 0

    def start(self) -> "VisualizationWatch":
        """Start observing (re-entrant: each ``start`` needs its ``stop``)."""
        with PATCHER.lock:
            if self._depth == 0:
                want_basicsr = bool(self.calls & {"tensor2img", "tensor2img_fast"}) and load_basicsr(self.basicsr)
                PATCHER.add(self, want_basicsr)
            self._depth += 1
        return self

    def stop(self) -> None:
        """Stop observing; the last active watcher restores every patched function. With a
        ``logger``, pending previews are logged."""
        with PATCHER.lock:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth:
                return
            PATCHER.remove(self)
        if self.logger is not None:
            try:
                self.log_previews(self.logger, step=self.step)
            except Exception as exc:  # never mask what happened inside the block
                warnings.warn(f"rangewatch could not log visualisation previews: {type(exc).__name__}: {exc}",
                              VisualizationWarning, stacklevel=2)

    def __enter__(self) -> "VisualizationWatch":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- results
    @property
    def records(self) -> list[VisRecord]:
        """Records of the calls seen since the last :meth:`pop_records` (at most ``max_records``)."""
        with self._lock:
            return list(self._records)

    def pop_records(self) -> list[VisRecord]:
        """Records since the last pop (previews stay attached to them); call sites start new previews."""
        with self._lock:
            out = list(self._records)
            self._records.clear()
            self._done_previews.extend(self._previews.values())
            self._previews.clear()
            return out

    @property
    def has_previews(self) -> bool:
        """Whether :meth:`pop_previews` has anything to hand out (a cheap look, no lock)."""
        return bool(self._done_previews or self._previews)

    def pop_previews(self) -> list[Preview]:
        """Previews (with images) not yet popped; call sites start new ones afterwards."""
        with self._lock:
            out = [p for p in self._done_previews + list(self._previews.values()) if p.images]
            self._done_previews = []
            self._previews.clear()
            return out

    def log_previews(self, experiment: Any, step: int | None = None, tag_prefix: str = PREVIEW_GROUP) -> list[str]:
        """:func:`~rangewatch.previews.log.log_previews` of this watcher's pending previews."""
        from .log import log_previews

        return log_previews(experiment, self, step=self.step if step is None else step, tag_prefix=tag_prefix)

    def record_of(self, finding: Finding) -> VisRecord | None:
        """The record of the call that produced ``finding`` (this very object), while the record is kept."""
        with self._lock:
            entry = self._record_of.get(id(finding))
        if entry is None or entry[0] is not finding:
            return None
        return entry[1]()

    def reset(self) -> None:
        """Forget findings (they will be reported again), records and previews."""
        with self._lock:
            self.findings.clear()
            self._seen.clear()
            self._record_of.clear()
            self._records.clear()
            self._previews.clear()
            self._done_previews.clear()

    # ---------------------------------------------------------------- internals
    def _wants(self, name: str) -> bool:
        return name in self.calls

    def _emit(self, f: Finding) -> bool:
        with self._lock:
            if not first_seen([f], self._seen):
                return False
            self.findings.append(f)
        if self.on_finding is not None:
            self.on_finding(f)
        elif self.warn:
            from ..sinks.console import finding_text, warn

            warn(finding_text(f), VisualizationWarning)  # pointing at the user's preview call
        return True

    def _skipped_video(self, name: str, func: str, site: str, shape: tuple[int, ...]) -> None:
        """A 5-D (video) tensor passed to an image call: not measured, one ``note`` per call site."""
        where = f"{self.context} `{name}` ({func}, {site})"
        self._emit(note_finding(
            where, f"a 5-D tensor of shape {shape}",
            expected=f"`{name}` converts images ((N, C, H, W) at most)",
            evidence=f"`{name}` was given a video-like tensor {shape}; rangewatch did not measure this call",
            fix="pick frames first (`x[:, :, t]` of (N, C, T, H, W), `x[:, t]` of (N, T, C, H, W)) or log the clip "
                "with `SummaryWriter.add_video` ((N, T, C, H, W), floats in [0, 1])",
            step=self.step,
        ))

    def _record(self, obs: Observation) -> None:
        call = obs.call
        where = f"{self.context} `{call.name}` ({obs.func}, {obs.site})"
        rec = VisRecord(
            call=call.name, where=where, assumption=call.assumption, mode=call.mode, assumed_range=call.assumed,
            below_fraction=obs.below, above_fraction=obs.above, nan_fraction=obs.nan, count=obs.count,
            inference=obs.inference, summary=obs.summary, step=self.step,
        )
        candidates, rec.message = self.clipping.judge(obs, where, self.step)
        rec.flagged = bool(candidates)
        with self._lock:
            self._records.append(rec)
        new = [f for f in candidates if self._emit(f)]
        rec.findings = tuple(new)
        with self._lock:
            if rec.flagged and self.keep_previews and obs.summary is not None:
                key = f"{call.name}|{obs.func}|{obs.site}"
                p = self._previews.get(key)
                if p is None:
                    slug = tag_safe(f"{call.name}_in_{obs.func}")
                    p = self._previews[key] = Preview(rec, call, slug, self.max_preview_images, self.hist_bins)
                    p.site = obs.site
                if not p.full:
                    p._add(call, obs.summary)
                    p.findings.extend([f for f in new if f not in p.findings])
                    rec.preview = p
            ref = weakref.ref(rec)
            self._record_of.update({id(f): (f, ref) for f in new})


@contextmanager
def watch_visualization(
    threshold: float = 0.005, max_preview_images: int = 4, logger: Any = None, **kwargs: Any
) -> Iterator[VisualizationWatch]:
    """Observe image-conversion calls inside the ``with`` block; yields the
    :class:`VisualizationWatch` (``.findings``, ``.records``). Patches are restored on exit, also
    after an exception. Keyword arguments go to :class:`VisualizationWatch`."""
    watch = VisualizationWatch(threshold=threshold, max_preview_images=max_preview_images, logger=logger, **kwargs)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
