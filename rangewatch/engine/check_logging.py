"""The engine's logging at check steps, through its :class:`~rangewatch.sinks.loggers.LoggerSink` (rank zero only).

:class:`CheckLogging` is a collaborator of :class:`rangewatch.Watch` that writes a check's histograms, its overview (the
findings count per kind, TensorBoard's custom-scalars layout) and the latent previews; :class:`_WriterScalars` lets a
plain ``SummaryWriter`` take the scalars that Lightning loggers take through ``log_metrics``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..findings.finding import Finding
from ..findings.log import FindingsLog
from ..sinks.loggers import LoggerSink, tag
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
    """What a check writes beyond the taps' scalars (a collaborator of :class:`~rangewatch.engine.watch.Watch`, rank
    zero only): the per-channel histograms, the findings counts and TensorBoard's custom-scalars layout (rewritten only
    when the taps or their flags change: the one piece of state it keeps), and the latent previews; all through the
    sink."""

    def __init__(self) -> None:
        self._layout_taps: dict[str, Any] = {}  # what the custom-scalars layout last showed

    def write(self, sink: LoggerSink, log: FindingsLog, taps: Mapping[str, Any], summaries: list[tuple[str, RangeSummary]],
              new: list[Finding], step: int, histograms: bool | str) -> None:
        """A check's writes after the scalars: ``taps`` the engine's taps by name (``latent``: a latent tap's
        monitor), ``summaries`` the ones computed at this check, ``new`` its findings not reported yet."""
        if histograms:
            flagged = log.flagged(new)
            for name, s in summaries:
                if taps[name].latent is None and (histograms == "all" or name in flagged):
                    sink.histograms(name, s, step)
        self._overview(sink, log, taps, summaries, new, step)
        if sink.has_tensorboard:
            from ..sinks.latents import log_latents

            for name, _ in summaries:
                if taps[name].latent is not None:
                    for w in sink.writers:
                        log_latents(w, name, taps[name].latent, step)
        if sink.wandb or sink.mlflow:
            self._latents_elsewhere(sink, taps, summaries, step)

    def _overview(self, sink: LoggerSink, log: FindingsLog, taps: Mapping[str, Any], summaries: list[tuple[str, RangeSummary]],
                  new: list[Finding], step: int) -> None:
        """The findings count per kind (``rangewatch/findings/<kind>``, ``.../total``) and, when the
        taps or their flags changed, TensorBoard's custom-scalars layout (flagged taps first:
        :func:`~rangewatch.sinks.loggers.scalars_layout`)."""
        sink.scalars(log.counts(new), step)
        if not sink.has_tensorboard:
            return
        flagged = log.flagged(new)
        shown = {k: v for k, v in self._layout_taps.items() if not k.startswith("\0")}
        layout = dict(shown)
        for name, s in summaries:
            if taps[name].latent is None:
                layout[name] = (s.channels, name in flagged)
        layout = {n: (c, n in flagged) for n, (c, _) in layout.items()}
        # the findings at no tap (a preview call) get a category of their own
        elsewhere = tuple(sorted(w for w in flagged if w not in layout and w not in taps))
        key = {**layout, "\0elsewhere": (len(elsewhere), elsewhere)}
        if key != self._layout_taps:
            from ..sinks.loggers import scalars_layout

            sink.layout(scalars_layout(layout, elsewhere=elsewhere), step)
            self._layout_taps = key

    @staticmethod
    def _latents_elsewhere(sink: LoggerSink, taps: Mapping[str, Any], summaries: list[tuple[str, RangeSummary]], step: int) -> None:
        """The latent RGB preview (and, for W&B, the per-channel histograms) to W&B / MLflow."""
        from torchvision.utils import make_grid

        from ..checks.latents import latent_preview, preview_scale

        for name, s in summaries:
            mon = taps[name].latent
            if mon is None:
                continue
            if mon.last is not None and mon.conv.latent_rgb is not None:
                prev = latent_preview(mon.last[:4], mon.conv, channel_dim=mon.channel_dim)
                k = preview_scale(int(prev.shape[-1]))
                prev = prev.repeat_interleave(k, -1).repeat_interleave(k, -2)
                sink.other_images(f"{tag(name, 'latent_preview')}", make_grid(prev.float(), nrow=4, padding=2, pad_value=1.0), step)
            sink.other_histograms(name, s, step)
