"""Rules: compare what a tap shows with what is expected there and produce findings."""

from __future__ import annotations

import torch

from .conventions import Convention, get_convention
from .findings import Finding
from .fixes import conversion_fix
from .inference import Inference
from .stats import RangeSummary

__all__ = ["check_expectation", "spill_fraction"]

#: share of [0, 1] display range by which data may overshoot the expected bounds (bicubic resizing)
SPILL_TOLERANCE = 0.05


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


def _fmt(v: torch.Tensor) -> str:
    return "/".join(f"{x:.3g}" for x in v.tolist())


def check_expectation(
    where: str,
    summary: RangeSummary,
    inference: Inference,
    expected: str | Convention,
    *,
    step: int | None = None,
    source: str = "declared",
) -> Finding | None:
    """A ``mismatch`` finding when the data at ``where`` does not follow ``expected``.

    It is a mismatch when the inference is confident and names another convention, or when the
    data spills past the expected bounds by more than :data:`SPILL_TOLERANCE` of the range.
    """
    exp = get_convention(expected)
    if exp.kind != "pixel" or summary.empty:
        return None
    if exp.integer:  # uint8 expected: the dtype says it all
        if summary.integer and "uint8" in summary.dtypes:
            return None
    elif inference.name == exp.name:
        return None
    spill = spill_fraction(summary, exp)
    wrong = (inference.confident and inference.name != exp.name) or spill > SPILL_TOLERANCE
    if not wrong:
        return None
    observed = inference.name if inference.name != "unknown" else "unknown"
    seen = (
        f"{inference.convention.label}" if inference.convention is not None else "values that fit no known convention"
    )
    lo, hi = exp.bounds(summary.channels)
    evidence = f"{where} looks like {seen}: {inference.evidence}; {exp.label} data would span {'/'.join(f'{v:.3g}' for v in lo)} .. {'/'.join(f'{v:.3g}' for v in hi)}"
    if spill > 0:
        evidence += f", but they overshoot by {spill:.1%} of the range"
    target = where.split(":")[0]
    is_batch = target.startswith(("batch", "val/batch"))
    if observed != "unknown":
        fix = conversion_fix(observed, exp, "" if is_batch else target)
        if is_batch:
            fix += f" at the end of the dataset transform that produces {target.removeprefix('val/')}"
    else:
        fix = f"check the preprocessing feeding {target}: it should produce {exp.label}"
    sev = "error" if (inference.confident or spill > 0.25) else "warning"
    return Finding(
        kind="mismatch",
        where=where,
        observed=observed,
        expected=exp.name,
        evidence=evidence,
        fix=fix,
        severity=sev,  # type: ignore[arg-type]
        step=step,
        source=source,
    )
