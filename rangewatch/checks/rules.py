"""Rules: compare what a tap shows with what is expected there and produce findings.

A verdict is held against an expectation only where it rests on evidence that discriminates
(:mod:`rangewatch.checks.inference`): an expectation the data are *compatible* with is never flagged (an
ambiguous verdict is no evidence against it), and a conversion fix is given only for a confident
verdict. Data that merely spill a little past the expected bounds get a warning that names the likely
causes (resampling after ``Normalize``, random-valued erasing, augmentation that overshoots), never a
conversion.
"""

from __future__ import annotations

import torch

from ..expect.conventions import Convention, get_convention
from ..findings.finding import Finding, mismatch_finding
from .fixes import conversion_fix
from .inference import LIKELY_SPILL_CAUSES, Inference
from ..stats.range_stats import RangeSummary

__all__ = ["check_expectation", "spill_fraction", "SPILL_TOLERANCE", "SPILL_SHARE_WARN"]

#: share of [0, 1] display range by which the *extremes* may overshoot the expected bounds (used
#: only when no value sample is available)
SPILL_TOLERANCE = 0.05
#: share of values outside the expected bounds (beyond predicted noise) that makes a spill warning
SPILL_SHARE_WARN = 0.05


def spill_fraction(summary: RangeSummary, conv: Convention) -> float:
    """Worst per-channel overshoot of the observed extremes past ``conv``'s bounds, in display units."""
    lo, hi = conv.bounds(summary.channels)
    lo_t = torch.tensor(lo, dtype=torch.float64)
    hi_t = torch.tensor(hi, dtype=torch.float64)
    span = hi_t - lo_t
    below = ((lo_t - summary.range_min) / span).clamp(min=0)
    above = ((summary.range_max - hi_t) / span).clamp(min=0)
    worst = torch.nan_to_num(torch.maximum(below, above), nan=0.0)
    return float(worst.max()) if worst.numel() else 0.0


def _fmt(values) -> str:
    return "/".join(f"{v:.3g}" for v in values)


def _low_range_note(inference: Inference, observed: Convention, channels: int) -> str:
    """A hint when the data use a small corner of the observed range (12-bit data divided by 65535)."""
    if not inference.channel_max or observed.name not in ("unit", "float255"):
        return ""
    lo, hi = observed.bounds(channels)
    top = max((v - l) / (h - l) for v, l, h in zip(inference.channel_max, lo, hi))
    if top >= 0.25:
        return ""
    return (f"; the data reach only {top:.4g} of {observed.label}: if they are 12-bit (or 10-bit) values stored in "
            f"uint16, scale by the sensor's maximum (x / 4095 for 12-bit), not by 65535")


def check_expectation(
    where: str,
    summary: RangeSummary,
    inference: Inference,
    expected: str | Convention,
    *,
    step: int | None = None,
    source: str = "declared",
    noise_share: float = 0.0,
) -> Finding | None:
    """A ``mismatch`` finding when the data at ``where`` do not follow ``expected``.

    - ``expected`` ruled out and the verdict confident: an error with the conversion fix;
    - ``expected`` ruled out, verdict ambiguous: a warning that lists what the data are compatible
      with, and what to check (no conversion);
    - ``expected`` compatible but more than :data:`SPILL_SHARE_WARN` (beyond ``noise_share``, the
      noise a known augmentation adds) of the values outside its bounds: a warning naming the likely causes;
    - otherwise nothing.
    """
    exp = get_convention(expected)
    if exp.kind != "pixel" or summary.empty:
        return None
    target = where.split(":")[0]
    is_batch = target.startswith(("batch", "val/batch"))
    lo, hi = exp.bounds(summary.channels)
    span_text = f"{exp.label} data would span {_fmt(lo)} .. {_fmt(hi)}"
    if exp.integer:  # uint8 expected: the dtype says it all
        if summary.integer and "uint8" in summary.dtypes:
            return None
        compatible = False
    else:
        compatible = exp.name in inference.compatible or (inference.name == exp.name)
    outside = inference.outside.get(exp.name)
    if compatible:
        if outside is None or outside <= SPILL_SHARE_WARN + noise_share:
            return None
        causes = "; ".join(LIKELY_SPILL_CAUSES)
        return mismatch_finding(
            where=where, observed=inference.name, expected=exp.name,
            evidence=(f"{outside:.1%} of the values at {where} lie outside the {exp.label} bounds {_fmt(lo)} .. {_fmt(hi)}, "
                      f"although the data are compatible with {exp.label}: {inference.evidence}"),
            fix=f"not a conversion: look for what spills the values. Likely causes: {causes}",
            severity="warning", step=step, source=source,
        )
    seen = f"{inference.convention.label}" if inference.convention is not None else "values that fit no known convention"
    evidence = f"{where} looks like {seen}: {inference.evidence}; {span_text}"
    why = inference.excluded.get(exp.name)
    if why and why not in inference.evidence:
        evidence += f"; {exp.name} is ruled out: {why}"
    if not inference.outside:  # extremes only: say how far they overshoot
        spill = spill_fraction(summary, exp)
        if spill > 0:
            evidence += f", but they overshoot by {spill:.1%} of the range"
    observed = inference.name
    if inference.confident and observed != "unknown":
        obs_conv = inference.convention  # carried: a custom convention read from data is not in the catalogue
        assert obs_conv is not None
        fix = conversion_fix(obs_conv, exp, "" if is_batch else target, channels=summary.channels)
        if is_batch:
            fix += f" at the end of the dataset transform that produces {target.removeprefix('val/')}"
        fix += _low_range_note(inference, obs_conv, summary.channels)
        sev = "error"
    else:
        others = [n for n in inference.compatible if n != exp.name]
        fits = f"the data are compatible with {' / '.join(others)}, not with {exp.label}" if others else \
            f"the data fit no known convention, and not {exp.label}"
        fix = f"check the preprocessing feeding {target}: it should produce {exp.label} ({fits}; the evidence cannot say which)"
        if why and "outside its bounds" in why and outside is not None and outside < 0.35:
            fix += ". If the conversion is right, look for what spills the values: " + "; ".join(LIKELY_SPILL_CAUSES)
        sev = "warning"
    return mismatch_finding(
        where=where,
        observed=observed,
        expected=exp.name,
        evidence=evidence,
        fix=fix,
        severity=sev,  # type: ignore[arg-type]
        step=step,
        source=source,
    )
