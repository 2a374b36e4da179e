"""Sinks: where findings and statistics go (TensorBoard, any Lightning logger, the console).

Call these on global rank zero only; the callback takes care of that.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .findings import Finding
from .stats import RangeSummary

__all__ = ["LoggerSink", "tag", "findings_markdown", "write_histogram", "is_tensorboard_logger"]


def tag(tap: str, stat: str, channel: int | None = None) -> str:
    """The one tag layout: ``rangewatch/<tap>/<stat>/c<k>``; tap names keep dots and colons."""
    safe = tap.replace(" ", "_").replace("/", ".")
    return f"rangewatch/{safe}/{stat}" + (f"/c{channel}" if channel is not None else "")


def findings_markdown(findings: list[Finding]) -> str:
    rows = ["| step | kind | where | seen | expected | evidence | fix |", "|---|---|---|---|---|---|---|"]
    for f in findings:
        cells = [str(f.step), f.kind, f.where, f.observed, f.expected, f.evidence, f.fix]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


def write_histogram(writer: Any, name: str, s: RangeSummary, channel: int, step: int | None) -> bool:
    """One channel of a :class:`RangeSummary` histogram as a TensorBoard ``add_histogram_raw`` entry:
    the device-side bin counts, no copy of the data. The underflow bucket ends at the first edge,
    the overflow bucket at the larger of the last edge and the finite maximum; NaN is left out.
    Returns False when the summary has no histogram or the channel no counted values."""
    if s.hist is None or s.hist_edges is None or s.hist_underflow is None or s.hist_overflow is None:
        return False
    c = channel
    counts = [float(s.hist_underflow[c])] + s.hist[c].tolist() + [float(s.hist_overflow[c])]
    num = float(sum(counts))
    if num <= 0:
        return False
    edges = s.hist_edges[c].tolist()
    fmin = float(s.finite_min[c]) if math.isfinite(float(s.finite_min[c])) else edges[0]
    fmax = float(s.finite_max[c]) if math.isfinite(float(s.finite_max[c])) else edges[-1]
    mean, std = float(s.mean[c]), float(s.std[c])
    moments = math.isfinite(mean) and math.isfinite(std)
    writer.add_histogram_raw(
        name,
        min=fmin,
        max=fmax,
        num=num,
        sum=mean * num if moments else 0.0,
        sum_squares=(std * std + mean * mean) * num if moments else 0.0,
        bucket_limits=edges + [max(fmax, edges[-1]) + 1e-6],
        bucket_counts=counts,
        global_step=step,
    )
    return True


def is_tensorboard_logger(logger: Any) -> bool:
    """A ``TensorBoardLogger`` of either Lightning namespace (``lightning.pytorch.loggers`` or
    ``pytorch_lightning.loggers``: separate classes, see :mod:`rangewatch.namespaces`)."""
    from .namespaces import tensorboard_logger_types

    return isinstance(logger, tensorboard_logger_types())


class LoggerSink:
    """Writes to the trainer's loggers: scalars to every logger with ``log_metrics``; histograms,
    text and images to TensorBoard loggers only (one note says so when none is attached)."""

    def __init__(self, loggers: list[Any]):
        self.metric_loggers = [lg for lg in loggers if hasattr(lg, "log_metrics")]
        self.writers = []
        for lg in loggers:
            if is_tensorboard_logger(lg):
                self.writers.append(lg.experiment)
        self.has_tensorboard = bool(self.writers)

    @property
    def active(self) -> bool:
        return bool(self.metric_loggers)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        for lg in self.metric_loggers:
            lg.log_metrics(clean, step=step)

    def histograms(self, tap: str, s: RangeSummary, step: int) -> None:
        for w in self.writers:
            for c in range(s.channels):
                write_histogram(w, tag(tap, "hist", c), s, c, step)

    def text(self, name: str, text: str, step: int) -> None:
        for w in self.writers:
            w.add_text(name, text, global_step=step)

    def image(self, name: str, img: torch.Tensor, step: int) -> None:
        for w in self.writers:
            w.add_image(name, img, global_step=step)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()
