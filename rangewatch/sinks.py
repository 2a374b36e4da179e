"""Sinks: where findings and statistics go (TensorBoard, any Lightning logger, the console).

Call these on global rank zero only; the callback takes care of that.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .findings import Finding
from .stats import RangeSummary

__all__ = ["LoggerSink", "tag", "findings_markdown"]


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


class LoggerSink:
    """Writes to the trainer's loggers: scalars to every logger with ``log_metrics``; histograms,
    text and images to TensorBoard loggers only (one note says so when none is attached)."""

    def __init__(self, loggers: list[Any]):
        from lightning.pytorch.loggers import TensorBoardLogger

        self.metric_loggers = [lg for lg in loggers if hasattr(lg, "log_metrics")]
        self.writers = []
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
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
        if s.hist is None or s.hist_edges is None or not self.writers:
            return
        for c in range(s.channels):
            counts = torch.cat([s.hist_underflow[c : c + 1], s.hist[c], s.hist_overflow[c : c + 1]])
            num = float(counts.sum())
            if num == 0:
                continue
            edges = s.hist_edges[c]
            lo = float(s.finite_min[c]) if math.isfinite(float(s.finite_min[c])) else float(edges[0])
            hi = float(s.finite_max[c]) if math.isfinite(float(s.finite_max[c])) else float(edges[-1])
            limits = [float(edges[0])] + edges[1:].tolist() + [max(hi, float(edges[-1])) + 1e-6]
            for w in self.writers:
                w.add_histogram_raw(
                    tag(tap, "hist", c),
                    min=min(lo, float(edges[0])) if float(counts[0]) else lo,
                    max=hi,
                    num=num,
                    sum=float(s.mean[c] * s.count[c]) if math.isfinite(float(s.mean[c])) else 0.0,
                    sum_squares=float((s.std[c] ** 2 + s.mean[c] ** 2) * s.count[c]) if math.isfinite(float(s.std[c])) else 0.0,
                    bucket_limits=limits,
                    bucket_counts=counts.tolist(),
                    global_step=step,
                )

    def text(self, name: str, text: str, step: int) -> None:
        for w in self.writers:
            w.add_text(name, text, global_step=step)

    def image(self, name: str, img: torch.Tensor, step: int) -> None:
        for w in self.writers:
            w.add_image(name, img, global_step=step)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()
