"""Which pixel convention does a tensor follow? (:func:`infer_convention`)

Every pixel convention is an affine image of [0, 1]. Mapping the observed per-channel minimum
and maximum back to [0, 1] under each candidate tells how well it fits: the right convention
puts a photo's extremes near 0 and 1 (natural photos very often contain pixels at exactly 0
and 255, so the minima land *exactly* on the convention's floors), a wrong one either spills
out of [0, 1] or leaves much of it unused. Latent conventions are never inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .conventions import Convention, get_convention, list_conventions
from .stats import RangeStats, RangeSummary

__all__ = ["Inference", "infer_convention"]

# unit-space tolerances (fractions of the [0, 1] range)
_EXACT = 2e-3  # an extreme this close to a bound is an exact hit (uint8 quantisation is 1/255 = 3.9e-3)
_SPILL_WEIGHT = 2.0  # cost per unit of spill past 0 or 1 (bicubic resizing spills a few percent)
_SPILL_MAX = 0.25  # more spill than this on any channel and the convention does not fit at all
_GAP_MAX = 0.9  # mean unused share of the range above which the best fit is still "unknown"
_HIT_BONUS = 0.06  # cost reduction per exact hit of a floor or ceiling
_CONFIDENT_MARGIN = 0.12  # cost gap to the runner-up needed to be confident
_CONFIDENT_MARGIN_NO_HIT = 0.3
_CONFIDENT_SPILL = 0.005  # the right convention leaves nothing outside [0, 1] (until resizing overshoots)
_CONFIDENT_GAP = 0.15  # without exact hits on most bounds, the data must use most of the range


@dataclass
class Inference:
    """Result of :func:`infer_convention`."""

    name: str
    confident: bool
    candidates: list[tuple[str, float]]
    evidence: str
    channel_min: tuple[float, ...] = field(default=())
    channel_max: tuple[float, ...] = field(default=())

    @property
    def convention(self) -> Convention | None:
        return None if self.name == "unknown" else get_convention(self.name)

    def __str__(self) -> str:
        return f"{self.name} ({'confident' if self.confident else 'not confident'}): {self.evidence}"


def _fmt(values) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def _cost(conv: Convention, lo: list[float], hi: list[float]) -> tuple[float, float, float, int]:
    """(cost, worst spill, mean gap, exact hits) of reading per-channel [lo, hi] in ``conv``
    (plain floats: a few channels, and it runs at every check)."""
    c = len(lo)
    means, stds = conv.mean_for(c), conv.std_for(c)
    spills, gaps, hits = [], [], 0
    for l, h, m, s in zip(lo, hi, means, stds):
        ulo, uhi = l * s + m, h * s + m
        spills.append(max(-ulo, 0.0) + max(uhi - 1, 0.0))
        gaps.append(max(ulo, 0.0) + max(1 - uhi, 0.0))
        hits += (abs(ulo) < _EXACT) + (abs(uhi - 1) < _EXACT)
    cost = sum(g + _SPILL_WEIGHT * sp for g, sp in zip(gaps, spills)) / c - _HIT_BONUS * hits / c
    return cost, max(spills), sum(gaps) / c, hits


def _summary(x: torch.Tensor | RangeStats | RangeSummary, channel_dim: int | None) -> RangeSummary:
    if isinstance(x, RangeSummary):
        return x
    if isinstance(x, RangeStats):
        return x.compute()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"infer_convention takes a tensor, RangeStats or RangeSummary, got {type(x).__name__}")
    if x.numel() == 0:
        return RangeStats(channel_dim=channel_dim, sync_on_compute=False).compute()
    st = RangeStats(channel_dim=channel_dim, sync_on_compute=False)  # a tensor given here is judged locally: no collective
    st.update(x, detail=True)
    return st.compute()


def infer_convention(
    x: torch.Tensor | RangeStats | RangeSummary,
    channel_dim: int | None = 1,
    candidates: list[str] | None = None,
) -> Inference:
    """Rank the pixel conventions that could have produced ``x``.

    Args:
        x: a tensor (statistics are computed here), or a :class:`RangeStats` / its summary.
        channel_dim: channel dimension of a tensor ``x``.
        candidates: names to consider (default: every registered pixel convention).

    Returns an :class:`Inference`: ``name`` (or ``"unknown"``), ``confident``, ranked
    ``candidates`` as ``(name, score)`` with higher scores better, and an ``evidence`` sentence.
    """
    r = _summary(x, channel_dim)
    if r.empty:
        return Inference("unknown", False, [], "no values were seen")
    lo, hi = r.range_min, r.range_max
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return Inference("unknown", False, [], "only non-finite values (NaN/Inf) were seen in some channel")
    names = candidates if candidates is not None else list_conventions("pixel")
    if r.integer:
        if "bool" in r.dtypes:
            return Inference("unknown", False, [], "boolean values are a mask, not an image")
        if float(lo.min()) >= 0 and float(hi.max()) <= 255 and r.dtypes == ("uint8",):
            return Inference(
                "uint8", True, [("uint8", 1.0)], f"dtype uint8 with values {_fmt(lo)} .. {_fmt(hi)} per channel",
                tuple(lo.tolist()), tuple(hi.tolist()),
            )
        return Inference(
            "unknown", False, [], f"integer dtype {'/'.join(r.dtypes)} with values {float(lo.min()):g}..{float(hi.max()):g}: "
            "not uint8 pixel data (token ids, labels or a mask?)", tuple(lo.tolist()), tuple(hi.tolist()),
        )
    lo_f, hi_f = lo.tolist(), hi.tolist()
    scored = []
    for n in names:
        conv = get_convention(n)
        if conv.kind != "pixel" or conv.integer:
            continue
        try:
            cost, spill, gap, hits = _cost(conv, lo_f, hi_f)
        except ValueError:  # convention cannot apply to this channel count
            continue
        scored.append((cost, n, spill, gap, hits))
    scored.sort()
    ranked = [(n, round(-cost, 4)) for cost, n, *_ in scored]
    if not scored:
        return Inference("unknown", False, [], f"no pixel convention applies to {r.channels} channels")
    cost, best, spill, gap, hits = scored[0]
    per_ch = f"per-channel minima {_fmt(lo)}, maxima {_fmt(hi)}"
    ch = (tuple(lo.tolist()), tuple(hi.tolist()))
    conv = get_convention(best)
    if spill > _SPILL_MAX or gap > _GAP_MAX:
        why = "spill past every convention's bounds" if spill > _SPILL_MAX else "use little of any convention's range"
        return Inference("unknown", False, ranked, f"{per_ch} {why}: fits no pixel convention", *ch)
    margin = scored[1][0] - cost if len(scored) > 1 else float("inf")
    needed = _CONFIDENT_MARGIN if hits else _CONFIDENT_MARGIN_NO_HIT
    confident = margin >= needed and spill <= _CONFIDENT_SPILL and (gap <= _CONFIDENT_GAP or hits >= r.channels)
    blo, bhi = conv.bounds(r.channels)
    if hits:
        detail = f"{hits} of {2 * r.channels} per-channel extremes sit exactly on the {conv.label} bounds {_fmt(blo)} / {_fmt(bhi)}"
    else:
        detail = f"they fit the {conv.label} bounds {_fmt(blo)} / {_fmt(bhi)} best"
    evidence = f"{per_ch}: {detail}"
    if not confident and len(scored) > 1:
        evidence += f"; {scored[1][1]} fits almost as well"
    return Inference(best, confident, ranked, evidence, *ch)
