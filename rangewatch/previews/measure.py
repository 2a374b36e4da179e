"""Measuring one observed call: one device-side :class:`~rangewatch.stats.range_stats.RangeStats` ``detail=True``
update per tensor (bounds = the range the call assumes), one small host transfer of the statistics,
and the convention the data follows (:func:`~rangewatch.checks.inference.infer_convention`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks.inference import Inference, infer_convention
from ..stats.range_stats import RangeStats, RangeSummary
from .calls import Call

__all__ = ["Observation", "measure", "observe"]


@dataclass
class Observation:
    """One call as measured: the shares it clamps below / above its range, the NaN share, the values
    counted, the statistics and the inferred convention (``summary`` is ``None`` when the call takes
    the data as is and nothing was measured)."""

    call: Call
    func: str
    site: str
    summary: RangeSummary | None = None
    inference: Inference | None = None
    below: float = 0.0
    above: float = 0.0
    nan: float = 0.0
    count: int = 0


def measure(call: Call) -> tuple[RangeSummary | None, int, RangeStats | None]:
    """The call's statistics, on this process only: preview calls happen on some ranks only (rank 0's
    ``logger.experiment.add_image`` while the others hold Lightning's DummyExperiment), so a
    cross-process sync here (RangeStats' default ``compute()`` under torch.distributed) would wait forever."""
    if call.mode == "none":
        return None, 0, None
    bounds = None if call.assumed is None else ((call.assumed[0],), (call.assumed[1],))
    st = RangeStats(channel_dim=call.channel_dim, bounds=bounds, sync_on_compute=False)
    try:
        for t in call.items:
            st.update(t, detail=True)
    except ValueError:  # items with different channel counts: measure them as one channel
        st = RangeStats(channel_dim=None, bounds=bounds, sync_on_compute=False)
        for t in call.items:
            st.update(t, detail=True)
    s = st.compute()  # one small host transfer of per-channel statistics
    return s, int(s.detail_count.sum()), st


def observe(call: Call, func: str, site: str) -> Observation:
    """:func:`measure` ``call`` (made in function ``func`` at ``site``) and infer its data's convention."""
    obs = Observation(call, func, site)
    s, n, st = measure(call)
    if s is not None and n > 0:
        obs.summary, obs.count = s, n
        obs.below = float(s.below.sum()) / n
        obs.above = float(s.above.sum()) / n
        obs.nan = float(s.nan.sum()) / n
        # the call's value sample overrules the extremes when it decides (bright [-1,1] data with
        # erasing zeros read as [0,1] from the extremes alone); when it cannot, the extremes stand
        sampled = infer_convention(s, sample=st.value_sample)
        obs.inference = sampled if sampled.confident else infer_convention(s)
    return obs
