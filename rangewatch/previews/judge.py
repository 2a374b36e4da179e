"""The clipping rule and its advice: does an observed call clamp a meaningful share of values, is
that data in another convention or a model output overshooting a correct range, and what call
shows the data right (:class:`ClippingJudge`, :func:`fix_advice`)."""

from __future__ import annotations

import math

from ..expect.conventions import Convention, get_convention
from ..findings.finding import Finding, clipping_finding, nonfinite_finding, note_finding
from ..checks.inference import Inference
from .measure import Observation
from .text import fmt_num, fmt_pair, fmt_pct

__all__ = ["ClippingJudge", "fix_advice", "fix_expr", "same_range", "OVERSHOOT_MAX"]


def fix_expr(conv: Convention, channels: int) -> tuple[str, tuple[float, float] | None]:
    """("(x + 1) / 2", (-1, 1)) for a convention with the same bounds on every channel;
    ("x * std + mean", None) for per-channel mean/std."""
    lo, hi = conv.bounds(channels)
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        lo0, hi0 = lo[0], hi[0]
        if lo0 == 0 and hi0 == 1:
            return "x", (0.0, 1.0)
        if lo0 == -1 and hi0 == 1:
            return "(x + 1) / 2", (-1.0, 1.0)
        if lo0 == 0:
            return f"x / {fmt_num(hi0)}", (0.0, hi0)
        return f"(x - {fmt_num(lo0)}) / {fmt_num(hi0 - lo0)}", (lo0, hi0)
    return "x * std + mean", None


def fix_advice(call: str, conv: Convention | None, inf: Inference | None, channels: int) -> str:
    if conv is None:
        lo, hi = (min(inf.channel_min), max(inf.channel_max)) if inf is not None and inf.channel_min else (None, None)
        if lo is None:
            return f"map the data to [0, 1] before `{call}`"
        rng = fmt_pair((math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100))
        if call.startswith("tensor2img"):
            return f"the data spans {rng} and fits no known convention: pass `min_max={rng}` or map it to [0, 1] first"
        return f"the data spans {rng} and fits no known convention: map it to [0, 1] before `{call}`"
    expr, bounds = fix_expr(conv, channels)
    per_channel = ""
    if bounds is None:
        m = ", ".join(f"{v:.4g}" for v in conv.mean_for(channels))
        s = ", ".join(f"{v:.4g}" for v in conv.std_for(channels))
        per_channel = f" with mean = torch.tensor([{m}]).view(-1, 1, 1), std = torch.tensor([{s}]).view(-1, 1, 1)"
    if call.startswith("tensor2img"):
        if bounds is not None:
            return f"call `{call}(x, min_max={fmt_pair(bounds)})`"
        return f"undo the normalisation first: `{call}(x * std + mean)`{per_channel}"
    if call == "save_image":
        alt = f" or `save_image(x, ..., normalize=True, value_range={fmt_pair(bounds)})`" if bounds is not None else ""
        return f"call `save_image({expr}, ...)`{alt}{per_channel}"
    if call == "make_grid":
        if bounds is not None:
            return f"pass `make_grid(x, normalize=True, value_range={fmt_pair(bounds)})`"
        return f"call `make_grid({expr})`{per_channel}"
    alt = " (or `x.round().clamp(0, 255).to(torch.uint8)`)" if bounds is not None and bounds[1] == 255 else ""
    if call in ("add_image", "add_images") and bounds is not None and bounds != (0.0, 1.0) and not alt:
        # TensorBoard takes float images as [0, 1]: map them, or let make_grid do it with the real range
        alt = f", or build the grid with `make_grid(x, normalize=True, value_range={fmt_pair(bounds)})`"
    return f"pass `{expr}` to `{call}`{alt}{per_channel}"


#: share of clamped values above which clamping is never read as overshoot (data in another convention
#: clamp 30-50%: [-1, 1] data through a [0, 1] call lose every dark pixel)
OVERSHOOT_MAX = 0.2


def same_range(conv: Convention | None, assumed: tuple[float, float] | None, channels: int) -> bool:
    if conv is None or assumed is None:
        return False
    lo, hi = conv.bounds(channels)
    tol = 1e-3 * (assumed[1] - assumed[0])
    return all(abs(l - assumed[0]) <= tol for l in lo) and all(abs(h - assumed[1]) <= tol for h in hi)


class ClippingJudge:
    """Judges observed calls: ``clipping`` (and ``nonfinite``, and a ``note`` for a min/max stretch)
    findings, before de-duplication.

    Args:
        threshold: share of values (0..1) a call must clamp to make a ``clipping`` finding.
        overshoot_threshold: when the data already follows the assumed range, only a share above
            this makes an ``info`` finding.

    It remembers the (function, call, range) triples that clamped nothing: another call in the
    same function with the same range that does clamp is then an overshoot, not a wrong range.
    """

    def __init__(self, threshold: float, overshoot_threshold: float) -> None:
        self.threshold = float(threshold)
        self.overshoot_threshold = float(overshoot_threshold)
        self.clean_calls: set[tuple] = set()  # (function, call, range) that clamped nothing: the range is right there

    def _overshoot(self, obs: Observation, conv: Convention | None, inf: Inference | None, frac: float,
                   channels: int, sibling: tuple) -> bool:
        """Whether clamped values are a model output overshooting a correct range rather than data in
        another convention: most values inside, the range a pixel convention's (or a sibling call's
        that clamps nothing), and no confident verdict for a convention with another range."""
        if frac > OVERSHOOT_MAX:
            return False
        if inf is not None and inf.confident and conv is not None:
            return False  # the data confidently follow a convention with another range
        assumed = obs.call.assumed
        known = any(same_range(get_convention(n), assumed, channels) for n in ("unit", "symmetric", "float255"))
        return known or sibling in self.clean_calls

    def judge(self, obs: Observation, where: str, step: int | None = None) -> tuple[list[Finding], str]:
        """Findings for one call (before de-duplication) and a one-line message."""
        call, inf, s = obs.call, obs.inference, obs.summary
        out: list[Finding] = []
        if s is None or obs.count == 0:
            return out, ""
        conv = inf.convention if inf is not None else None
        channels = s.channels
        looks = f"the data looks like {conv.label} ({conv.name})" if conv is not None else (
            f"the data spans {fmt_num(float(s.range_min.min()))}..{fmt_num(float(s.range_max.max()))} and fits no known convention"
        )
        observed = conv.name if conv is not None else "unknown"  # a convention name, like every Finding.observed
        fix = fix_advice(call.name, conv, inf, channels)
        nan_count = int(round(float(s.nan.sum())))
        if nan_count:
            black = "this will be a black image" if obs.nan >= 0.5 else f"{fmt_pct(obs.nan)} of the pixels will be black"
            if call.mode == "stretch":
                black = "NaN makes the min/max stretch NaN: this will be a black image"
            out.append(nonfinite_finding(
                where, observed=f"NaN in {fmt_pct(obs.nan)} of the values passed to `{call.name}`",
                evidence=f"`{call.name}` converts NaN to black: {black} ({nan_count} NaN values)",
                fix="find where NaN first appears (fp16 overflow? see rangewatch's nonfinite checks) before looking at previews",
                step=step,
            ))
        if call.mode == "stretch":
            expected_fix = (f"pass `value_range={fmt_pair(fix_expr(conv, channels)[1])}`"
                            if conv is not None and fix_expr(conv, channels)[1] is not None else
                            "pass the data's real `value_range` (or map it to [0, 1] first)")
            hides = (f"`{call.name}` with normalize=True and no value_range stretches the images to their own min/max, "
                     f"which hides the data's real range; {looks}")
            out.append(note_finding(
                where, observed, expected=f"`{call.name}` with {call.assumption}",
                evidence=hides + (f": {inf.evidence}" if inf is not None else ""),
                fix=expected_fix + " so that the preview shows what the model produces",
                step=step,
            ))
            return out, f"{where}: {hides}; {expected_fix}"
        if call.mode != "clamp" or call.assumed is None:
            return out, (out[0].evidence if out else "")
        expected = f"values in [{fmt_num(call.assumed[0])}, {fmt_num(call.assumed[1])}]: `{call.name}` with {call.assumption}"
        frac = obs.below + obs.above
        matched = same_range(conv, call.assumed, channels)
        limit = max(self.threshold, self.overshoot_threshold) if matched else self.threshold
        sibling = (obs.func, call.name, tuple(call.assumed))
        if frac < limit or frac <= 0:
            if frac < self.threshold:
                self.clean_calls.add(sibling)  # this range is right for the data of this function
            return out, (out[0].evidence if out else "")
        lo, hi = call.assumed
        if not matched and self._overshoot(obs, conv, inf, frac, channels, sibling):
            # the call's range is right (a pixel convention's, or a sibling call's in the same function
            # that clamps nothing), the bulk of the data is inside it: a young model overshooting
            why = ("another call in the same function with the same range clamps nothing" if sibling in self.clean_calls
                   else f"[{fmt_num(lo)}, {fmt_num(hi)}] is a pixel convention's range")
            evidence = (f"`{call.name}` clamps {fmt_pct(frac)} of the values (the data span "
                        f"{fmt_num(float(s.range_min.min()))}..{fmt_num(float(s.range_max.max()))}): the bulk lies inside the "
                        f"range the call assumes and {why}, so the output overshoots it (normal for a young model)")
            out.append(clipping_finding(
                where=where, observed="output overshooting the call's range", expected=expected,
                evidence=evidence, fix="the call is right: keep its range (widening it would show the overshoot as a "
                "washed-out preview); constrain the output (clamp, tanh) only if the overshoot is not intended",
                severity="info", step=step,
            ))
            return out, f"{where}: {evidence}"
        if obs.below >= self.threshold and obs.above >= self.threshold:
            to = f"{fmt_pct(obs.below)} of values to black (below {fmt_num(lo)}) and {fmt_pct(obs.above)} to white (above {fmt_num(hi)})"
        elif obs.below >= obs.above:
            to = f"{fmt_pct(obs.below)} of values to black (below {fmt_num(lo)})"
        else:
            to = f"{fmt_pct(obs.above)} of values to white (above {fmt_num(hi)})"
        if matched:
            evidence = (f"`{call.name}` clamps {to}: the data follows {conv.label} ({conv.name}), the range the call "
                        f"assumes, but overshoots it; {inf.evidence}")
            out.append(clipping_finding(
                where=where, observed=observed, expected=expected,
                evidence=evidence, fix="the call is right for this data; constrain the output (clamp, sigmoid, tanh) "
                "if the overshoot is not intended", severity="info", step=step,
            ))
            return out, f"{where}: {evidence}"
        message = f"{where} clamps {to}: {looks}; {fix}"
        evidence = f"`{call.name}` clamps {to}; {looks}" + (f": {inf.evidence}" if inf is not None else "")
        severity = "error" if inf is not None and inf.confident and frac >= 0.05 else "warning"
        out.append(clipping_finding(where=where, observed=observed, expected=expected,
                           evidence=evidence, fix=fix, severity=severity, step=step))
        return out, message
