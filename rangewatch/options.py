"""The options of :class:`~rangewatch.RangeWatch`, :func:`rangewatch.watch` and :class:`~rangewatch.Watch`,
declared once: :class:`Options`, a frozen dataclass (each field's type, default and meaning), which the engine
validates (:meth:`Options.checked`), the callback's signature mirrors (LightningCLI reads that signature) and
YAML loading accepts (:data:`OPTIONS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import (
    MAX_CHECK_FIRST_N,
    MAX_HIST_BINS,
    MAX_TRACE_HISTORY,
    ConfigError,
    _short,
    check_bool,
    check_choice,
    check_expect,
    check_float,
    check_int,
    check_modules,
    check_str_list,
    check_trace_modules,
)
from .findings.log import POLICIES, Policy

__all__ = ["Options", "OPTIONS"]


def _opt(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Options:
    """Every option, with its default; :class:`~rangewatch.RangeWatch` documents each in full."""

    expect: dict[str, str] | None = _opt(None, "tap -> convention name (rangewatch.list_conventions())")
    batch_keys: list[str] | None = _opt(None, "only watch these batch paths; default: every image-like tensor")
    skip_keys: list[str] | None = _opt(None, "glob patterns of batch keys never treated as images")
    modules: list[str] | None = _opt(None, "more submodules to watch (inputs and outputs) without an expectation")
    policy: Policy = _opt("warn", "'warn', 'raise' or 'log'")
    check_first_n: int = _opt(3, "number of first train batches that are all checked")
    log_every_n_steps: int | None = _opt(None, "check/log interval; default: the Trainer's (50 in plain loops)")
    histograms: bool | Literal["flagged", "all"] = _opt("flagged", "per-channel histograms: 'flagged', 'all' (True) or False")
    hist_bins: int = _opt(64, "histogram bins per channel")
    watch_validation: bool = _opt(True, "also watch validation batches")
    watch_visualization: bool = _opt(True, "judge the calls that turn tensors into images (kind 'clipping')")
    clip_threshold: float = _opt(0.005, "share of values a visualisation call must clamp to be reported")
    derive_expectations: bool = _opt(True, "read expectations from model metadata and loader transforms")
    trace_modules: str | list[str] | None = _opt(None, "'all' or module names / patterns traced for NaN/Inf and fp16 headroom")
    trace_history: int = _opt(8, "steps kept by the tracer")
    trace_exact: bool = _opt(False, "exact NaN/Inf counts and finite max-abs per module (an extra pass per call)")
    headroom_share: float = _opt(0.5, "share of the fp16 maximum (65504) that makes an fp16_headroom finding")
    check_nonfinite_every_step: bool = _opt(False, "read one NaN/Inf flag from the device every step")
    moments_every_step: bool = _opt(False, "also accumulate mean/std on every step")
    image_processors: dict[str, Any] | None = _opt(None, "submodule path -> a transformers image processor")
    per_channel_scalars: bool = _opt(False, "also log raw per-channel std, nonfinite and out_of_range scalars")

    def checked(self) -> "Options":
        """The options validated and normalised (a :class:`~rangewatch.ConfigError` names the key, the bounded
        value and what is allowed): ``expect`` a dict of convention names, ``histograms=True`` is ``"all"``,
        numbers as floats, lists copied."""
        histograms = "all" if self.histograms is True else self.histograms
        # checked in the order the options are declared, so that the first bad one is named
        return dataclasses.replace(
            self,
            expect=check_expect(self.expect),
            batch_keys=check_str_list("batch_keys", self.batch_keys),
            skip_keys=check_str_list("skip_keys", self.skip_keys),
            modules=check_modules(self.modules),
            policy=check_choice("policy", self.policy, POLICIES),  # type: ignore[arg-type]
            check_first_n=check_int("check_first_n", self.check_first_n, 0, maximum=MAX_CHECK_FIRST_N),  # type: ignore[arg-type]
            log_every_n_steps=check_int("log_every_n_steps", self.log_every_n_steps, 1, allow_none=True),
            histograms=histograms if histograms is False else check_choice("histograms", histograms, ("flagged", "all")),  # type: ignore[arg-type]
            per_channel_scalars=check_bool("per_channel_scalars", self.per_channel_scalars),
            hist_bins=check_int("hist_bins", self.hist_bins, 1, maximum=MAX_HIST_BINS),  # type: ignore[arg-type]
            watch_validation=check_bool("watch_validation", self.watch_validation),
            watch_visualization=check_bool("watch_visualization", self.watch_visualization),
            clip_threshold=check_float("clip_threshold", self.clip_threshold, 0.0, 1.0),
            derive_expectations=check_bool("derive_expectations", self.derive_expectations),
            trace_modules=check_trace_modules(self.trace_modules),
            trace_history=check_int("trace_history", self.trace_history, 1, maximum=MAX_TRACE_HISTORY),  # type: ignore[arg-type]
            trace_exact=check_bool("trace_exact", self.trace_exact),
            headroom_share=check_float("headroom_share", self.headroom_share, 0.0, 1.0, lo_open=True),
            check_nonfinite_every_step=check_bool("check_nonfinite_every_step", self.check_nonfinite_every_step),
            moments_every_step=check_bool("moments_every_step", self.moments_every_step),
            image_processors=_check_processors(self.image_processors),
        )


def _check_processors(value: Any) -> dict[str, Any]:
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"option 'image_processors' = {_short(value)} must map submodule paths to image processors")
    return dict(value or {})


#: the option names, in signature order (the callback's ``__init__``, YAML keys, ``rangewatch.watch`` keywords)
OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Options))
