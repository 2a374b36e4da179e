"""The engine's logging at check steps, through its :class:`~rangewatch.sinks.loggers.LoggerSink` (rank zero only).

:class:`CheckLogging` is the part of :class:`rangewatch.Watch` that writes a check's overview (the findings count per
kind, TensorBoard's custom-scalars layout) and the latent previews for W&B / MLflow; :class:`_WriterScalars` lets a
plain ``SummaryWriter`` take the scalars that Lightning loggers take through ``log_metrics``.
"""

from __future__ import annotations

from typing import Any

from ..findings.finding import Finding
from ..sinks.loggers import tag
from ..stats.range_stats import RangeSummary

__all__ = ["CheckLogging"]


class _WriterScalars:
    """A ``SummaryWriter`` as a metrics logger (``log_metrics``): one ``add_scalar`` per metric."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)


def _is_writer(obj: Any) -> bool:
    """A ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's): not a Lightning logger."""
    return hasattr(obj, "add_scalar") and hasattr(obj, "add_histogram_raw") and not hasattr(obj, "log_metrics")


class CheckLogging:
    """What a check writes beyond the taps' scalars (a mixin of :class:`~rangewatch.engine.watch.Watch`): the findings
    counts and TensorBoard's custom-scalars layout, and latent previews for W&B / MLflow; all through the sink."""

    def _log_overview(self, summaries: list[tuple[str, RangeSummary]], new: list[Finding], step: int) -> None:
        """The findings count per kind (``rangewatch/findings/<kind>``, ``.../total``) and, when the
        taps or their flags changed, TensorBoard's custom-scalars layout (flagged taps first:
        :func:`~rangewatch.sinks.loggers.scalars_layout`)."""
        if self._sink is None:
            return
        self._sink.scalars(self._log.counts(new), step)
        if not self._sink.has_tensorboard:
            return
        flagged = self._log.flagged(new)
        shown = {k: v for k, v in self._layout_taps.items() if not k.startswith("\0")}
        taps = dict(shown)
        for name, s in summaries:
            if self._taps[name].latent is None:
                taps[name] = (s.channels, name in flagged)
        taps = {n: (c, n in flagged) for n, (c, _) in taps.items()}
        # the findings at no tap (a preview call) get a chart of their own
        elsewhere = tuple(sorted(w for w in flagged if w not in taps and w not in self._taps))
        key = {**taps, "\0elsewhere": (len(elsewhere), elsewhere)}  # type: ignore[dict-item]
        if key != self._layout_taps:
            from ..sinks.loggers import scalars_layout

            self._sink.layout(scalars_layout(taps, elsewhere=elsewhere), step)
            self._layout_taps = key

    def _latents_elsewhere(self, summaries: list[tuple[str, RangeSummary]], step: int) -> None:
        """The latent RGB preview (and, for W&B, the per-channel histograms) to W&B / MLflow."""
        from torchvision.utils import make_grid

        from ..checks.latents import latent_preview, preview_scale

        for name, s in summaries:
            mon = self._taps[name].latent
            if mon is None:
                continue
            if mon.last is not None and mon.conv.latent_rgb is not None:
                prev = latent_preview(mon.last[:4], mon.conv, channel_dim=mon.channel_dim)
                k = preview_scale(int(prev.shape[-1]))
                prev = prev.repeat_interleave(k, -1).repeat_interleave(k, -2)
                self._sink.other_images(f"{tag(name, 'latent_preview')}", make_grid(prev.float(), nrow=4, padding=2, pad_value=1.0), step)
            self._sink.other_histograms(name, s, step)
