"""Which pixel convention does a tensor follow? (:func:`infer_convention`)

Every pixel convention is an affine image of [0, 1]. Reading the data back into [0, 1] under each
candidate tells how well it fits, and the verdict rests on evidence that *discriminates* between
the candidates, gathered from a sample of the values (:class:`~rangewatch.stats.evidence.ValueSample`),
not from the two extremes alone:

- **spill share**: the share of values outside a candidate's bounds. A wrong convention leaves tens
  of percent outside (``[-1, 1]`` data read as ``[0, 1]``: every dark pixel); a few outliers
  (random-valued erasing noise, bicubic ringing after ``Normalize``) are outliers, not a verdict.
- **clipping piles**: natural photos have clipped shadows and highlights, so values pile up *exactly*
  on the right convention's floor or ceiling with nothing beyond. A pile counts only where the
  candidates compared put different bounds (``[0, 1]`` and ``[-1, 1]`` share the ceiling 1, so a
  white pile cannot tell them apart), and only at 3 or more values with (next to) nothing just
  beyond it; a pile on one candidate's bound that lies inside another's range rules that one out
  when it is seen in at least two channels (one coincidental channel is not enough).
- **8-bit grid**: ``ToTensor`` of an 8-bit image followed by ``Normalize`` gives values that map
  back *exactly* onto ``k / 255`` under the right constants and onto nothing under the wrong ones
  (ImageNet and CLIP constants differ by far more than float32 rounding). Resampled or jittered
  float data is off the grid, and then the grid says nothing.

A candidate that no evidence rules out is *compatible*; when more than one is, the verdict is
ambiguous (``confident=False``, ``compatible`` lists them) and a check holds none of them against
the data. Latent conventions are never inferred. Without a sample (a bare :class:`RangeSummary`),
only the per-channel extremes are used and a verdict is confident only on exact hits of bounds that
differ between the best two candidates.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> x = (x * 255).round() / 255 * 2 - 1          # 8-bit data normalised to [-1, 1]
    >>> x[:, :, :8] = -1.0                            # clipped shadows
    >>> inf = infer_convention(x)
    >>> inf.name, inf.confident, inf.compatible
    ('symmetric', True, ('symmetric',))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..expect.conventions import Convention, get_convention, list_conventions
from ..stats.evidence import ValueSample
from ..stats.range_stats import RangeStats, RangeSummary

__all__ = ["Inference", "infer_convention", "LIKELY_SPILL_CAUSES"]

# ---- extremes only (a RangeSummary without a sample)
_EXACT = 2.5e-4  # an extreme this close to a bound (unit space) is an exact hit; an 8-bit step is 3.9e-3
_SPILL_WEIGHT = 2.0  # cost per unit of spill past 0 or 1 (bicubic resizing spills a few percent)
_SPILL_MAX = 0.25  # more spill than this on any channel and the convention does not fit at all
_GAP_MAX = 0.9  # mean unused share of the range above which the best fit is still "unknown"
_HIT_BONUS = 0.06  # cost reduction per exact hit of a floor or ceiling
_CONFIDENT_MARGIN = 0.12  # cost gap to the runner-up needed to be confident
_CONFIDENT_SPILL = 0.005  # the right convention leaves nothing outside [0, 1] (until resizing overshoots)

# ---- sample evidence (unit-space tolerances: fractions of the [0, 1] range)
_PILE_TOL = 2e-4  # a value this close to a bound sits on it (float32 rounding of an 8-bit value is ~1e-7)
_BEYOND = 3 / 255  # the band just past a bound that must be (nearly) empty for a pile to count
_PILE_MIN = 3  # values on the bound for a pile ...
_PILE_SHARE = 2e-4  # ... and at least this share of the channel's sample
_PILE_RATIO = 3.0  # ... and this many times the values in the band just beyond
_EDGE_MIN = 8  # values in the band inside a bound for an edge ...
_EDGE_RATIO = 10  # ... and this many times those just beyond it
_SOFT = 0.05  # soft edge: ringing past a bound stays within this ...
_SOFT_FAR = 1e-3  # ... (at most this share further out) ...
_SOFT_MIN = 20  # ... and the band inside the bound holds this many values ...
_SOFT_SHARE = 5e-3  # ... and this share of the channel, and at least half as many as the next band ...
_SOFT_RING = 0.2  # ... and the ringing past the bound is at most this share of it
_PILES_TO_EXCLUDE = 2  # piles (channel x bound) needed to rule a candidate out (1 for 1-channel data)
_SPILL_OUT = 0.01  # a value further than this past a bound is outside
#: share of values outside above which a candidate is ruled out (the wrong convention: tens of percent)
SPILL_EXCLUDE = 0.15
_SPILL_ALWAYS = 0.45  # this much outside rules a candidate out whatever the spill looks like
_CONT_BAND = 0.1  # band (share of the range) on each side of a bound compared for continuity
_CONTINUOUS = 0.25  # values just outside at least this share of those just inside: the data run on
_GRID_TOL = 0.02  # |u * 255 - k| below this: on the 8-bit grid (random data: 4% of values)
_GRID_MIN_VALUES = 200
_GRID_STRONG = 0.5  # the best candidate's on-grid share must reach this ...
_GRID_RATIO = 0.7  # ... and a candidate below this share of it is ruled out
_OUT_GRID_MIN = 20  # values outside a candidate's bounds needed to ask whether they sit on its 8-bit grid ...
_OUT_GRID_SHARE = 0.02  # ... when more than this share is outside ...
_OUT_GRID_ON = 0.5  # ... and at least this share of them is on the grid, the candidate is ruled out
_USE_MIN = 0.02  # data spanning less than this of a candidate's range in every channel rules it out ...
_USE_RATIO = 10.0  # ... when another candidate's reading spans this many times more
_PILE_ALL = 0.95  # a "pile" holding more than this share of the channel is constant data, not clipping
_FAR_SHARE = 5e-3  # a clipping pile or edge has at most this share (plus known noise) further than _SOFT beyond it
_FILL_BAND = 0.1  # a pile with (next to) nothing within this band inside its bound is a constant fill ...
_FILL_NEAR = 0.02  # ... (at most this share of the pile there): erasing or padding, not clipped shadows
_FILL_HEAVY = 0.03  # a single value holding more than this share of a channel is left out of the grid test
_GRID_DISTINCT = 8  # on-grid values must take at least this many distinct steps k for the grid to say anything
_GRIDDED = 0.9  # a channel this much on a reading's 8-bit grid: clipping there is exact, so only exact piles count
_ODD_SHARE = 0.97  # on-grid steps this much odd: the grid is 2/255 wide, 8-bit data of a reading twice as wide
_SAMPLE_PER_TENSOR = 32768
_FILL_COMMON = 0.05  # exact zeros at the same sampled positions in every channel (all but this share): a constant fill
_EXACTLY = 2e-6  # unit space: "exactly on a bound" in the evidence (float32 rounding of normalised 8-bit data ~3e-7)

#: what puts a small share of values outside a correct convention's bounds
LIKELY_SPILL_CAUSES = (
    "resampling (bicubic/Lanczos resize, rotation) after Normalize overshoots at edges",
    "random-valued erasing (RandomErasing(value='random'), timm re_mode='pixel'/'rand') adds N(0,1) noise",
    "an augmentation on normalised tensors that does not clamp (colour jitter, noise, Mixup of out-of-range data)",
)


@dataclass
class Inference:
    """Result of :func:`infer_convention`.

    ``compatible``: the conventions the data cannot rule out (the verdict is ambiguous when it holds
    more than one; a check does not flag an expectation listed there). ``outside``: per candidate,
    the share of sampled values outside its bounds (empty without a sample). ``images``: images in
    the sample behind the verdict.
    """

    name: str
    confident: bool
    candidates: list[tuple[str, float]]
    evidence: str
    channel_min: tuple[float, ...] = field(default=())
    channel_max: tuple[float, ...] = field(default=())
    compatible: tuple[str, ...] = field(default=())
    outside: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    discriminating: bool = False
    images: int = 0
    #: the convention named (carried: a custom one read from data need not be in the catalogue)
    conv: Convention | None = field(default=None, repr=False, compare=False)

    @property
    def convention(self) -> Convention | None:
        if self.name == "unknown":
            return None
        return self.conv if self.conv is not None else get_convention(self.name)

    @property
    def ambiguous(self) -> bool:
        return not self.confident and len(self.compatible) > 1

    def __str__(self) -> str:
        state = "confident" if self.confident else ("ambiguous" if self.ambiguous else "not confident")
        return f"{self.name} ({state}): {self.evidence}"


def _fmt(values) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def _cost(conv: Convention, lo: list[float], hi: list[float]) -> tuple[float, float, float, list[tuple[int, int]]]:
    """(cost, worst spill, mean gap, exact hits as (channel, 0 floor / 1 ceiling)) of reading
    per-channel [lo, hi] in ``conv`` (plain floats: a few channels, and it runs at every check)."""
    c = len(lo)
    means, stds = conv.mean_for(c), conv.std_for(c)
    spills, gaps, hits = [], [], []
    for i, (l, h, m, s) in enumerate(zip(lo, hi, means, stds)):
        ulo, uhi = l * s + m, h * s + m
        spills.append(max(-ulo, 0.0) + max(uhi - 1, 0.0))
        gaps.append(max(ulo, 0.0) + max(1 - uhi, 0.0))
        if abs(ulo) < _EXACT:
            hits.append((i, 0))
        if abs(uhi - 1) < _EXACT:
            hits.append((i, 1))
    cost = sum(g + _SPILL_WEIGHT * sp for g, sp in zip(gaps, spills)) / c - _HIT_BONUS * len(hits) / c
    return cost, max(spills), sum(gaps) / c, hits


def _bound_x(conv: Convention, c: int, channel: int, which: int) -> float:
    lo, hi = conv.bounds(c)
    return (lo if which == 0 else hi)[channel]


def _shared(a: Convention, b: Convention, c: int, channel: int, which: int) -> bool:
    """Whether ``a``'s floor/ceiling of ``channel`` is also a bound of ``b`` (then a pile there cannot tell them apart)."""
    x = _bound_x(a, c, channel, which)
    ub = x * b.std_for(c)[channel] + b.mean_for(c)[channel]
    return abs(ub) < 4 * _PILE_TOL or abs(ub - 1) < 4 * _PILE_TOL


def _apart(a: Convention, b: Convention, c: int, channel: int, which: int) -> float:
    """How far ``b``'s floor/ceiling of ``channel`` lies from ``a``'s, as a share of ``a``'s range."""
    xb = _bound_x(b, c, channel, which)
    ua = xb * a.std_for(c)[channel] + a.mean_for(c)[channel]
    return abs(ua - float(which))


def _light(a: np.ndarray) -> np.ndarray:
    """``a`` without the values that each hold a large share of it (constant fills: erased rectangles,
    padding, clipped areas), unless too few would be left: the grid test then weighs the image, not the fill."""
    if len(a) < 64:
        return a
    vals, cnt = np.unique(a, return_counts=True)
    heavy = vals[cnt > max(5, _FILL_HEAVY * len(a))]
    if not len(heavy):
        return a
    keep = ~np.isin(a, heavy)
    return a[keep] if int(keep.sum()) >= 64 else a


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


def _pixel_candidates(names: Sequence[str | Convention] | None, extra: Sequence[Convention] = ()) -> dict[str, Convention]:
    """The candidates by name: ``names`` (default: the catalogue's pixel conventions), then the ``extra``
    conventions carried from elsewhere that the catalogue does not hold (non-pixel and integer ones dropped)."""
    out: dict[str, Convention] = {}
    for n in [*(names if names is not None else list_conventions("pixel")), *extra]:
        conv = get_convention(n)
        if conv.kind == "pixel" and not conv.integer and conv.name not in out:
            out[conv.name] = conv
    return out


def _tolerance(dtypes: tuple[str, ...] | set[str], conv: Convention, c: int) -> float:
    """Unit-space tolerance for 'on a bound': float32 rounding is far below it; half types are coarser."""
    lo, hi = conv.bounds(c)
    big = max(max(abs(v) for v in lo), max(abs(v) for v in hi))
    eps = 0.0
    if "bfloat16" in dtypes:
        eps = 2.0 ** -8
    elif "float16" in dtypes:
        eps = 2.0 ** -11
    return max(_PILE_TOL, eps * big * max(conv.std_for(c)) * 1.5)


def infer_convention(
    x: torch.Tensor | RangeStats | RangeSummary,
    channel_dim: int | None = 1,
    candidates: Sequence[str | Convention] | None = None,
    *,
    sample: np.ndarray | ValueSample | None = None,
    images: int | None = None,
    prior: str | Convention | None = None,
    noise_share: float = 0.0,
    extra: Sequence[Convention] = (),
) -> Inference:
    """Rank the pixel conventions that could have produced ``x``.

    Args:
        x: a tensor (statistics and a value sample are taken here), or a :class:`RangeStats` / its summary.
        channel_dim: channel dimension of a tensor ``x``.
        candidates: names (or conventions) to consider (default: every registered pixel convention).
        sample: with a summary ``x``: a ``(C, n)`` sample of the values (or the :class:`ValueSample`
            that holds it), so that the verdict can use the distribution; without one only the
            extremes are used.
        images: images behind the sample (reported in the evidence).
        prior: a convention known from elsewhere (the transform pipeline), by name or as the convention
            itself (then also a candidate): named when the data are compatible with it and cannot decide.
        noise_share: the largest share of values a known augmentation may replace with N(0, 1)
            noise (random-valued erasing); that much spill never rules a candidate out.
        extra: conventions carried from elsewhere (a loader's or a model's unusual Normalize constants,
            never registered) that are candidates too.

    Returns an :class:`Inference`: ``name`` (or ``"unknown"``), ``confident``, ranked
    ``candidates`` as ``(name, score)`` with higher scores better, ``compatible`` and an ``evidence`` sentence.
    """
    if isinstance(prior, Convention):
        extra, prior = (*extra, prior), prior.name
    r = _summary(x, channel_dim)
    if isinstance(x, RangeStats) and sample is None:
        sample = x.value_sample
    if isinstance(x, torch.Tensor) and sample is None and x.numel() and x.is_floating_point():
        vs = ValueSample(per_update=_SAMPLE_PER_TENSOR, channel_dim=channel_dim)
        vs.update(x)
        images = vs.images if images is None else images
        sample = vs
    if isinstance(sample, ValueSample):
        images = sample.images if images is None else images
        sample = sample.take()
    if r.empty:
        return Inference("unknown", False, [], "no values were seen")
    lo, hi = r.range_min, r.range_max
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return Inference("unknown", False, [], "only non-finite values (NaN/Inf) were seen in some channel")
    if r.integer:
        if "bool" in r.dtypes:
            return Inference("unknown", False, [], "boolean values are a mask, not an image")
        if float(lo.min()) >= 0 and float(hi.max()) <= 255 and r.dtypes == ("uint8",):
            return Inference(
                "uint8", True, [("uint8", 1.0)], f"dtype uint8 with values {_fmt(lo)} .. {_fmt(hi)} per channel",
                tuple(lo.tolist()), tuple(hi.tolist()), compatible=("uint8",), discriminating=True,
            )
        return Inference(
            "unknown", False, [], f"integer dtype {'/'.join(r.dtypes)} with values {float(lo.min()):g}..{float(hi.max()):g}: "
            "not uint8 pixel data (token ids, labels or a mask?)", tuple(lo.tolist()), tuple(hi.tolist()),
        )
    if sample is None or sample.shape[0] != r.channels or sample.shape[1] == 0:
        return _infer_extremes(r, _pixel_candidates(candidates, extra))
    return _infer_sample(r, sample, _pixel_candidates(candidates, extra), images or 0, prior, noise_share)


def _infer_sample(r: RangeSummary, v: np.ndarray, names: dict[str, Convention], images: int, prior: str | None,
                  noise_share: float) -> Inference:
    c = r.channels
    lo_f, hi_f = r.range_min.tolist(), r.range_max.tolist()
    ch = (tuple(lo_f), tuple(hi_f))
    per_ch = f"per-channel minima {_fmt(lo_f)}, maxima {_fmt(hi_f)}"
    finite = np.isfinite(v)
    xs = [np.sort(v[i][finite[i]]) for i in range(c)]  # sorted once: every count below is a binary search
    n_c = np.asarray([max(len(a), 1) for a in xs], dtype=np.float64)
    grid_v = [_light(a[:: max(1, len(a) // 4096)]) for a in xs]  # the grid test needs a few thousand values
    half = bool({"float16", "bfloat16"} & set(r.dtypes))
    # a constant fill of 0 (RandomErasing(value=0), timm re_mode="const", zero padding or an affine fill after
    # Normalize, black bars): exact zeros at the same positions in every channel (the sample takes the same
    # positions in each channel). 0 lies inside every normalised range, so such a pile says nothing about a
    # floor at 0, nor do the values next to it (resampling blends the fill into the image: a ramp, not a tail)
    zero_fill = False
    if c >= 2 and not half:
        z = v == 0.0
        per = z.sum(axis=1)
        common = int(z.all(axis=0).sum())
        zero_fill = common >= _PILE_MIN and bool(((per - common) <= np.maximum(2, _FILL_COMMON * per)).all())
    convs: dict[str, Convention] = {}
    info: dict[str, dict] = {}

    def between(i: int, a: float, b: float) -> int:  # values in [a, b] of channel i
        return int(np.searchsorted(xs[i], b, "right") - np.searchsorted(xs[i], a, "left"))

    for n, conv in names.items():
        try:
            means, stds = conv.mean_for(c), conv.std_for(c)
        except ValueError:  # convention cannot apply to this channel count
            continue
        convs[n] = conv
        tol = _tolerance(r.dtypes, conv, c)
        out_ch = np.zeros(c)
        cont = np.zeros(c)
        piles: list[tuple[int, int]] = []  # exact piles and edges
        clipped: list[tuple[int, int]] = []  # the piles whose values sit exactly on the bound (the evidence says so)
        soft_piles: list[tuple[int, int]] = []  # soft edges: a bound within a few percent
        out_on = out_n = 0
        span = np.zeros(c)
        on_grid = in_grid = odd = distinct = 0
        for i in range(c):
            m, sd = means[i], stds[i]
            if not len(xs[i]):
                continue
            fx, cx = -m / sd, (1 - m) / sd  # floor and ceiling in data units
            gridded = False
            if not half:
                g = grid_v[i] * sd + m
                g = g[(g >= -_SPILL_OUT) & (g <= 1 + _SPILL_OUT)] * 255.0
                on = np.abs(g - np.round(g)) < _GRID_TOL
                steps = np.round(g[on]).astype(np.int64)
                k_on, n_dist = int(on.sum()), len(np.unique(steps))
                on_grid += k_on
                in_grid += len(g)
                odd += int((steps % 2 == 1).sum())
                distinct = max(distinct, n_dist)
                # 8-bit data under this reading: clipped values sit exactly on the bound, so a value near
                # it but off it (an edge, a soft edge) is no clipping evidence
                gridded = len(g) >= 64 and k_on >= _GRIDDED * len(g) and n_dist >= _GRID_DISTINCT
            d_out, d_tol, d_beyond, d_soft = _SPILL_OUT / sd, tol / sd, _BEYOND / sd, _SOFT / sd
            out_ch[i] = (int(np.searchsorted(xs[i], fx - d_out, "left")) + len(xs[i])
                         - int(np.searchsorted(xs[i], cx + d_out, "right"))) / n_c[i]
            # does the distribution run on across the bound (a wrong convention) or are the values
            # outside sparse (noise, ringing)? values per unit width just outside vs just inside
            w2 = _CONT_BAND / sd
            outside_near = between(i, fx - w2, fx - d_out) + between(i, cx + d_out, cx + w2)
            inside_near = between(i, fx, fx + w2) + between(i, cx - w2, cx)
            cont[i] = outside_near / max(inside_near, 1) * (w2 / max(w2 - d_out, 1e-12))
            ss = xs[i].searchsorted
            for which, bx in ((0, fx), (1, cx)):
                k_at = between(i, bx - d_tol, bx + d_tol)
                if which == 0:  # just below the floor / just above it
                    k_beyond = int(ss(bx - d_tol, "left") - ss(bx - d_beyond, "left"))
                    k_in = int(ss(bx + d_beyond, "right") - ss(bx + d_tol, "right"))
                    j = int(ss(bx - d_tol, "left"))
                    gap = (xs[i][j] - bx) * sd if j < len(xs[i]) else 1.0
                else:  # just above the ceiling / just below it
                    k_beyond = int(ss(bx + d_beyond, "right") - ss(bx + d_tol, "right"))
                    k_in = int(ss(bx - d_tol, "left") - ss(bx - d_beyond, "left"))
                    j = int(ss(bx + d_tol, "right")) - 1
                    gap = (bx - xs[i][j]) * sd if j >= 0 else 1.0
                sgn = -1.0 if which == 0 else 1.0
                far = int(ss(bx - d_soft, "left")) if which == 0 else len(xs[i]) - int(ss(bx + d_soft, "right"))
                # clipping leaves nothing far beyond the bound (bar known noise): a pile with the distribution
                # running on past it (erasing zeros inside [-1, 1] data read as [0, 1]) is no clipping
                clear = far <= max(2, (_FAR_SHARE + noise_share) * n_c[i])
                # a pile: many values exactly on the bound (clipping), (next to) nothing beyond it, and
                # not the whole channel (constant data say nothing)
                pile = (k_at >= _PILE_MIN and k_at >= _PILE_SHARE * n_c[i] and k_at >= _PILE_RATIO * k_beyond
                        and k_at <= _PILE_ALL * n_c[i] and clear)
                if pile and abs(bx) <= d_tol:
                    # a pile at data value 0 with nothing near it inside is a constant fill (RandomErasing(value=0),
                    # timm re_mode="const", zero padding): 0 lies inside every normalised range, so it cannot
                    # tell this reading's floor from a fill of normalised data
                    near = between(i, *sorted((bx - sgn * d_tol * 1.0001, bx - sgn * _FILL_BAND / sd)))
                    if near <= max(2, _FILL_NEAR * k_at):
                        pile = False
                # an edge: dense values right up to the bound (as close as their density predicts), and nothing
                # beyond it at all (bar known noise): the minimum of unclipped data can land near a bound by chance
                near_out = between(i, *sorted((bx + sgn * d_tol, bx + sgn * d_soft)))
                edge = (not gridded and k_in >= _EDGE_MIN and k_in + k_at >= _PILE_SHARE * n_c[i] and k_beyond * _EDGE_RATIO <= k_in
                        and gap <= tol + 3 * _BEYOND / max(k_in, 1) and clear and near_out <= noise_share * _SOFT * n_c[i])
                # a soft edge (resampling after Normalize rings a few percent past the bound): dense up to
                # the bound, some ringing just past it, nothing further out
                in1 = between(i, *sorted((bx - sgn * d_tol, bx - sgn * d_soft)))
                in2 = between(i, *sorted((bx - sgn * d_soft, bx - 2 * sgn * d_soft)))
                soft = (not gridded and far <= max(2, _SOFT_FAR * n_c[i]) and in1 >= max(_SOFT_MIN, _SOFT_SHARE * n_c[i])
                        and in1 >= 0.5 * in2 and near_out <= _SOFT_RING * in1)
                if zero_fill and abs(bx) <= d_tol:  # this bound is data value 0, where a fill sits in every channel
                    pile = edge = soft = False
                if pile or edge:
                    piles.append((i, which))
                    d_ex = (tol if half else _EXACTLY) / sd
                    if pile and between(i, bx - d_ex, bx + d_ex) >= _PILE_MIN:
                        clipped.append((i, which))
                elif soft:
                    soft_piles.append((i, which))
            ulo = min(max(xs[i][0] * sd + m, 0.0), 1.0)
            uhi = min(max(xs[i][-1] * sd + m, 0.0), 1.0)
            span[i] = uhi - ulo
            if not half:
                # values outside the bounds that sit on this reading's 8-bit grid are image data it cannot
                # explain (float 0..255 read as [0, 1]), not noise or ringing (those are off the grid)
                lo_k, hi_k = int(np.searchsorted(xs[i], fx - d_out, "left")), int(np.searchsorted(xs[i], cx + d_out, "right"))
                o = np.concatenate([xs[i][:lo_k], xs[i][hi_k:]]) * sd + m
                o = o * 255.0
                out_on += int((np.abs(o - np.round(o)) < _GRID_TOL).sum())
                out_n += len(o)
        out_share = float((out_ch * n_c).sum() / n_c.sum())
        grid = on_grid / in_grid if in_grid >= _GRID_MIN_VALUES else None
        # values all within the tolerance of one or two steps (data using a tiny part of this range) are
        # "on the grid" without saying anything: such a grid never counts as strong
        strong_ok = grid is not None and distinct >= _GRID_DISTINCT
        odd_share = odd / on_grid if strong_ok and on_grid else None
        cost, spill, gap, hits = _cost(conv, lo_f, hi_f)
        out_grid = out_on / out_n if out_n >= _OUT_GRID_MIN else None
        info[n] = dict(out=out_share, out_ch=out_ch, cont=cont, piles=piles + soft_piles, exact=piles, soft=soft_piles,
                       clipped=clipped,
                       grid=grid, grid_ok=strong_ok, odd=odd_share, span=span, cost=cost, spill=spill, gap=gap, out_grid=out_grid)
    if not info:
        return Inference("unknown", False, [], f"no pixel convention applies to {c} channels", *ch)
    excluded: dict[str, str] = {}
    limit = SPILL_EXCLUDE + noise_share
    for n, d in info.items():
        worst = int(np.argmax(d["out_ch"]))
        # tens of percent outside, and the values run on across the bound: a wrong convention. Sparse
        # values far out (random-valued erasing noise) are outliers unless there are very many
        if d["out"] > max(limit, _SPILL_ALWAYS) or (d["out"] > limit and float(d["cont"][worst]) >= _CONTINUOUS):
            excluded[n] = f"{d['out']:.1%} of the values lie outside its bounds (channel {worst}: {d['out_ch'][worst]:.1%})"
        elif d["out"] > _OUT_GRID_SHARE and d["out_grid"] is not None and d["out_grid"] >= _OUT_GRID_ON:
            excluded[n] = (f"{d['out']:.1%} of the values lie outside its bounds, {d['out_grid']:.0%} of them on its 8-bit grid "
                           "(image data, not noise)")
        elif bool((d["span"] < _USE_MIN).all()) and any(
                bool((info[o]["span"] >= _USE_MIN).any()) for o in info if o != n):
            excluded[n] = f"the data span under {_USE_MIN:.0%} of its range in every channel"
    # all readings use little of their range (12-bit data in uint16 / 65535): one that uses far less
    # than another reading that fits is still the less likely (float 0..255 for values below 0.02)
    for n, d in info.items():
        wide = [float(info[o]["span"].max()) for o in info if o != n and o not in excluded]
        if n not in excluded and float(d["span"].max()) < _USE_MIN and wide and max(wide) >= _USE_RATIO * float(d["span"].max()):
            excluded[n] = f"the data span under {_USE_MIN:.0%} of its range in every channel ({max(wide) / max(float(d['span'].max()), 1e-12):.0f} times less than another reading's)"
    # 8-bit grid: values on k/255 under one reading and off it under another
    grids = {n: d["grid"] for n, d in info.items() if d["grid"] is not None and n not in excluded}
    strong = {n: g for n, g in grids.items() if info[n]["grid_ok"]}
    grid_best = max(strong.values()) if strong else 0.0
    if grid_best >= _GRID_STRONG:
        best_n = max(strong, key=strong.get)
        for n, g in grids.items():
            if g < _GRID_RATIO * grid_best:
                excluded.setdefault(n, f"only {g:.0%} of the values map back onto the 8-bit grid k/255 under it "
                                       f"({grid_best:.0%} under {best_n})")
    # on-grid values that take odd steps k only: the grid under this reading is 2/255 wide, so the data are
    # the 8-bit data of a reading twice as wide ([-1, 1] data 2k/255 - 1 read as [0, 1])
    for n, d in info.items():
        if n in excluded or d["odd"] is None or d["odd"] < _ODD_SHARE or (d["grid"] or 0) < _GRIDDED:
            continue
        fine = [o for o, e in info.items() if o != n and o not in excluded and (e["grid"] or 0) >= _GRIDDED
                and (e["odd"] or 0) < _ODD_SHARE]
        if fine:
            excluded[n] = (f"the values take only odd steps k/255 under it ({d['odd']:.0%} of them): the 8-bit grid of "
                           f"{fine[0]}, which is twice as fine")
    # clipping piles on one candidate's bound that lie inside (or outside) another's range
    need = min(_PILES_TO_EXCLUDE, c)
    for n, d in info.items():
        if n in excluded or not d["piles"]:
            continue
        for o in info:
            if o == n or o in excluded:
                continue
            # a soft edge (a bound within a few percent) says nothing against a candidate whose bound is as close
            disc = [(i, w) for i, w in d["exact"] if not _shared(convs[n], convs[o], c, i, w)]
            disc += [(i, w) for i, w in d["soft"] if _apart(convs[n], convs[o], c, i, w) >= 2 * _SOFT]
            if len(disc) >= need:
                i, w = disc[0]
                bx = _bound_x(convs[n], c, i, w)
                what = ("clipped piles" if (i, w) in d["clipped"] else
                        "values running up to them and none beyond" if (i, w) in d["exact"] else "values stopping within 5% of them")
                excluded.setdefault(o, f"{len(disc)} channel bound(s) of {n} carry {what} (e.g. channel {i} "
                                       f"at {bx:.3f}), and they are not bounds of {o}")
    compatible = [n for n in info if n not in excluded]
    # ranking: compatible first, then by extremes cost less pile bonus
    def score(n: str) -> float:
        d = info[n]
        return -(d["cost"] - 0.05 * len(d["piles"]) / c) - (10.0 if n in excluded else 0.0)

    ranked_names = sorted(info, key=score, reverse=True)
    compatible.sort(key=score, reverse=True)
    if prior in compatible:
        compatible.remove(prior)
        compatible.insert(0, prior)
    ranked = [(n, round(score(n), 4)) for n in ranked_names]
    outside = {n: round(d["out"], 6) for n, d in info.items()}
    img = f" ({images} image{'s' if images != 1 else ''} sampled)" if images else ""
    if not compatible:
        spills = all(d["out"] > limit for d in info.values())
        why = ("spill past every convention's bounds" if spills else
               "contradict every convention (" + "; ".join(f"{k}: {w}" for k, w in list(excluded.items())[:3]) + ")")
        return Inference("unknown", False, ranked, f"{per_ch} {why}: fits no pixel convention{img}", *ch,
                         compatible=(), outside=outside, excluded=excluded, images=images)
    best = compatible[0]
    d = info[best]
    conv = convs[best]
    blo, bhi = conv.bounds(c)
    # evidence that discriminates: something ruled the others out other than the extremes
    discriminating = bool(excluded)
    confident = len(compatible) == 1 and discriminating and (bool(d["piles"]) or (strong.get(best) or 0) >= _GRID_STRONG
                                                              or d["gap"] <= 0.15)
    parts = []
    # each sentence says only what was measured: exact piles, values running up to a bound, values stopping near it
    n_clip, n_edge, n_soft = len(d["clipped"]), len(d["exact"]) - len(d["clipped"]), len(d["soft"])
    bounds = f"the {conv.label} bounds {_fmt(blo)} / {_fmt(bhi)}"
    if n_clip:  # name the bounds that hold the piles, never the ones that do not (a max of 0.957 is not "on 1")
        at = ", ".join(f"channel {i} {'min' if side == 0 else 'max'} {(blo if side == 0 else bhi)[i]:.3f}"
                       for i, side in sorted(d["clipped"])[:6])
        parts.append(f"{n_clip} of {2 * c} per-channel bounds ({at}) hold values that sit exactly on the {conv.label} bound, "
                     "in piles with none beyond (what clipped shadows/highlights leave)")
    if n_edge:
        parts.append(f"{'in ' + str(n_edge) + ' more' if n_clip else f'in {n_edge} of {2 * c}'} the values run densely up to "
                     f"{'the bound' if n_clip else bounds} and none lie beyond")
    if n_soft:
        parts.append(f"{'in ' + str(n_soft) + ' more' if n_clip or n_edge else f'in {n_soft} of {2 * c}'} the values stop within "
                     f"{_SOFT:.0%} of {'the bound' if n_clip or n_edge else bounds}, as resampling ringing does")
    if not parts:
        parts.append(f"they fit {bounds}")
    if (strong.get(best) or 0) >= _GRID_STRONG:
        parts.append(f"{grids[best]:.0%} of the values map back onto the 8-bit grid k/255")
    if d["out"] > 0:
        parts.append(f"{d['out']:.2%} of the values lie outside them")
    ruled = [f"{k} ruled out: {w}" for k, w in excluded.items() if k in ("unit", "symmetric", "imagenet", "clip", "float255")
             or (prior is not None and k == prior)]
    evidence = f"{per_ch}: " + "; ".join(parts) + img
    if ruled:
        evidence += "; " + "; ".join(ruled[:4])
    if len(compatible) > 1:
        evidence += f"; the data cannot tell {' / '.join(compatible)} apart (ambiguous)"
    elif not confident:
        evidence += "; too little evidence for a confident verdict"
    name = best
    if len(compatible) > 1 and not d["piles"] and (strong.get(best) or 0) < _GRID_STRONG:
        name = "unknown"  # nothing speaks for any of them: e.g. noise, or data using little of any range
    return Inference(name, confident, ranked, evidence, *ch, compatible=tuple(compatible), outside=outside,
                     excluded=excluded, discriminating=discriminating, images=images,
                     conv=convs[name] if name in convs else None)


def _infer_extremes(r: RangeSummary, names: dict[str, Convention]) -> Inference:
    """Verdict from the per-channel extremes only (no sample)."""
    lo, hi = r.range_min, r.range_max
    lo_f, hi_f = lo.tolist(), hi.tolist()
    scored = []
    for n, conv in names.items():
        try:
            cost, spill, gap, hits = _cost(conv, lo_f, hi_f)
        except ValueError:  # convention cannot apply to this channel count
            continue
        scored.append((cost, n, spill, gap, hits))
    scored.sort(key=lambda t: (t[0], t[1]))
    ranked = [(n, round(-cost, 4)) for cost, n, *_ in scored]
    if not scored:
        return Inference("unknown", False, [], f"no pixel convention applies to {r.channels} channels")
    cost, best, spill, gap, hits = scored[0]
    c = r.channels
    per_ch = f"per-channel minima {_fmt(lo)}, maxima {_fmt(hi)}"
    ch = (tuple(lo_f), tuple(hi_f))
    conv = names[best]
    fits = [n for cst, n, sp, gp, _ in scored if sp <= _SPILL_MAX and gp <= _GAP_MAX]
    if spill > _SPILL_MAX or gap > _GAP_MAX:
        why = ("spill past every convention's bounds" if spill > _SPILL_MAX else
               "sit in a narrow band that uses little of any convention's range")
        return Inference("unknown", False, ranked, f"{per_ch} {why}: fits no pixel convention", *ch,
                         compatible=tuple(fits))
    runner = scored[1] if len(scored) > 1 else None
    disc = [h for h in hits if runner is None or not _shared(conv, names[runner[1]], c, *h)]
    margin = runner[0] - cost if runner is not None else float("inf")
    confident = margin >= _CONFIDENT_MARGIN and spill <= _CONFIDENT_SPILL and len(disc) >= min(2, c)
    blo, bhi = conv.bounds(c)
    if hits:
        detail = (f"{len(hits)} of {2 * c} per-channel extremes lie within {_EXACT:.2%} of the range of the {conv.label} bounds "
                  f"{_fmt(blo)} / {_fmt(bhi)}")
    else:
        detail = f"they fit the {conv.label} bounds {_fmt(blo)} / {_fmt(bhi)} best"
    evidence = f"{per_ch}: {detail}"
    compatible = (best,) if confident else tuple(n for cst, n, sp, gp, _ in scored if sp <= _CONFIDENT_SPILL * 10 and cst - cost < _CONFIDENT_MARGIN) or (best,)
    if not confident and runner is not None:
        evidence += f"; {runner[1]} fits almost as well" if runner[0] - cost < _CONFIDENT_MARGIN else "; too little evidence for a confident verdict"
    return Inference(best, confident, ranked, evidence, *ch, compatible=compatible, discriminating=bool(disc), conv=conv)
