"""Sinks: where findings and statistics go (TensorBoard, any Lightning logger, the console).

Only this module touches a writer: :class:`LoggerSink` for the trainer's loggers (TensorBoard, W&B, MLflow,
a plain ``SummaryWriter``: the choice among them is made here only), and the ``write_*`` functions
(:func:`write_image`, :func:`write_text`, :func:`write_histogram`, :func:`write_layout`) for one TensorBoard
``SummaryWriter``, which :func:`rangewatch.log_latents` and :func:`rangewatch.log_previews` use. The tags come
from :mod:`rangewatch.sinks.tags`; image files from :mod:`rangewatch.sinks.files`. Call these on global rank
zero only; the callback takes care of that.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..findings.finding import Finding
from ..stats.range_stats import RangeSummary
from .tags import (DETAIL_GROUP, FINDINGS, FINDINGS_CATEGORY, FINDINGS_JSON, FINDINGS_MD, FINDINGS_TOTAL, FLAGGED_CATEGORY,
                   LATENT_PREVIEW, OTHER_CATEGORY, detail_tag, findings_count, hist_tag, findings_counts_pattern, preview_tag, tag, tap_charts_pattern)

__all__ = ["LoggerSink", "WriterScalars", "is_summary_writer", "takes_histograms", "tag", "detail_tag", "DETAIL_GROUP", "findings_markdown", "findings_from_markdown", "scalars_layout", "FINDINGS_CATEGORY", "FLAGGED_CATEGORY", "OTHER_CATEGORY", "write_histogram",
           "write_image", "write_text", "is_tensorboard_logger"]

#: the machine-readable copy of each finding inside the markdown (an HTML comment: TensorBoard's
#: markdown sanitiser drops comments, so the page shows only the blocks)
_FINDING_COMMENT = "<!-- rangewatch-finding "


def _code_span(s: str) -> str:
    """``s`` as inline code; text that has its own code spans stays markdown."""
    if not s:
        return "–"
    return s if "`" in s else f"`{s}`"


def findings_markdown(findings: list[Finding]) -> str:
    """Each finding as a short markdown block: a headline (kind, where, step, seen vs expected), the
    evidence, and the fix as a code block; problems first, notes last. Each block also carries the
    finding as JSON in an HTML comment (hidden by TensorBoard), which :func:`findings_from_markdown`
    and ``rangewatch report`` read back.

    Example::

        >>> from rangewatch import Finding
        >>> md = findings_markdown([Finding("mismatch", "batch.lq", "unit", "symmetric", "min 0, max 1", "x * 2 - 1", step=0)])
        >>> print(md.splitlines()[0])
        **1 finding** (1 mismatch)
        >>> findings_from_markdown(md)[0].fix
        'x * 2 - 1'
    """
    import json
    from collections import Counter

    quiet = ("note", "internal")
    ordered = [f for f in findings if f.kind not in quiet] + [f for f in findings if f.kind in quiet]
    counts = Counter(f.kind for f in ordered)
    n = len(ordered)
    out = [f"**{n} finding{'s' if n != 1 else ''}** (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")" if n else "**no findings**"]
    for f in ordered:
        at = f", step {f.step}" if f.step is not None else ""
        exp = f" · expected {_code_span(f.expected)}" if f.expected else ""
        head = f"#### {f.kind}: {_code_span(f.where)}{at}"
        seen = f"seen {_code_span(f.observed)}{exp}" + (f" ({f.source})" if f.source else "")
        if "`" in f.fix:  # prose with its own code spans
            fix = f"**fix:** {f.fix}"
        else:  # the fix as a code block
            fix = "**fix:**\n\n" + "\n".join("    " + ln for ln in (f.fix or "–").splitlines())
        comment = _FINDING_COMMENT + json.dumps(f.to_dict()).replace("--", "\\u002d\\u002d") + " -->"
        out.append(f"{head}\n\n{seen}\n\n{f.evidence}\n\n{fix}\n\n{comment}")
    return "\n\n".join(out)


def findings_from_markdown(text: str) -> list[Finding] | None:
    """The findings :func:`findings_markdown` wrote into ``text``; None when it holds none of its comments
    (an older table, or other text)."""
    import json

    out = []
    start = 0
    while True:
        i = text.find(_FINDING_COMMENT, start)
        if i < 0:
            break
        j = text.find(" -->", i)
        if j < 0:
            break
        try:
            d = json.loads(text[i + len(_FINDING_COMMENT):j])
            out.append(Finding(**{k: v for k, v in d.items() if k in Finding.__dataclass_fields__}))
        except (ValueError, TypeError):
            pass
        start = j
    return out if out or "**no findings**" in text else None


def scalars_layout(taps: dict[str, tuple[int, bool]], elsewhere: tuple[str, ...] = ()) -> Any:
    """TensorBoard's custom-scalars layout (a ``layout_pb2.Layout``) of three categories, always these three,
    in this order:

    - :data:`FINDINGS_CATEGORY`: the findings total as a margin chart (drawn unsmoothed) and the count per kind;
    - :data:`FLAGGED_CATEGORY`, open: a chart per finding at no tap (``elsewhere``: a preview call), then the
      charts of each tap with a finding;
    - :data:`OTHER_CATEGORY`, closed: the charts of the other taps.

    ``taps``: name -> (channels, flagged). Each tap is two charts: a margin chart with, per channel, the mean as
    a line and min..max as its band, plus the expected bounds as a band; and the out-of-range share with the
    non-finite count.

    Why fixed categories rather than one per tap: TensorBoard serves one layout for all runs, merged in its
    custom-scalars plugin (``tensorboard/plugins/custom_scalar/custom_scalars_plugin.py``, ``layout_impl``): runs
    in sorted order, the first run's categories in its order, then each later run's categories whose title was
    not seen yet appended at the end; a category seen before gets the charts it lacks. With a category per tap,
    a later run's flagged taps came after the first run's healthy ones. With the same three titles in every
    run, the flagged charts of every run merge into the second category. A chart is the same proto in every
    run that has the tap, so TensorBoard draws it once with every run's data: a tap flagged in one run and not
    in another shows in both categories. The titles are always written, even with no chart, because the
    plugin keeps merging only into categories of the first run (a category first seen in a later run is
    stored as that run's copy, and a third run's charts for it are dropped)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    # the same two charts in every run's layout, so that TensorBoard merges them into one pair across runs
    cat = layout.category.add(title=FINDINGS_CATEGORY)
    total = FINDINGS_TOTAL
    cat.chart.add(title="findings so far (a margin chart: drawn unsmoothed)").margin.series.add(value=total, lower=total, upper=total)
    cat.chart.add(title="findings per kind (count so far)").multiline.tag.append(findings_counts_pattern())
    flagged = layout.category.add(title=FLAGGED_CATEGORY, closed=False)
    other = layout.category.add(title=OTHER_CATEGORY, closed=True)
    for where in elsewhere:  # a finding at no tap (a preview call): its chart opens the flagged category
        flagged.chart.add(title=f"finding at {where}: see TEXT {FINDINGS} or the RANGEWATCH tab").margin.series.add(
            value=total, lower=total, upper=total)
    for name in sorted(taps, key=lambda n: (n.startswith("val/"), n)):
        channels, is_flagged = taps[name]
        cat = flagged if is_flagged else other
        margin = cat.chart.add(title=f"{name}: mean per channel, band min..max; last band: the expected range").margin
        for c in range(channels):
            margin.series.add(value=detail_tag(name, "mean", c), lower=detail_tag(name, "min", c), upper=detail_tag(name, "max", c))
        margin.series.add(value=detail_tag(name, "expected_min"), lower=detail_tag(name, "expected_min"),
                          upper=detail_tag(name, "expected_max"))
        cat.chart.add(title=f"{name}: out-of-range share and non-finite count").multiline.tag.append(tap_charts_pattern(name))
    return layout


def write_layout(writer: Any, layout: Any, step: int) -> bool:
    """Write a custom-scalars layout with a ``torch.utils.tensorboard`` / tensorboardX writer."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import metadata

    get = getattr(writer, "_get_file_writer", None)
    if get is None:
        return False
    # what torch.utils.tensorboard.summary.custom_scalars writes, with a full Layout proto (several
    # series per margin chart, closed categories), without TensorFlow
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    get().add_summary(Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=smd)]), step)
    return True


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


def write_image(writer: Any, name: str, img: torch.Tensor, step: int | None, dataformats: str = "CHW") -> None:
    """One image (a ``(C, H, W)`` uint8 tensor, or float in [0, 1]) to a TensorBoard writer."""
    writer.add_image(name, img, global_step=step, dataformats=dataformats)


def write_text(writer: Any, name: str, text: str, step: int | None) -> None:
    """One text (markdown) entry to a TensorBoard writer."""
    writer.add_text(name, text, global_step=step)


def is_tensorboard_logger(logger: Any) -> bool:
    """A ``TensorBoardLogger`` of either Lightning namespace (``lightning.pytorch.loggers`` or
    ``pytorch_lightning.loggers``: separate classes, see :mod:`rangewatch.compat.namespaces`)."""
    from ..compat.namespaces import tensorboard_logger_types

    return isinstance(logger, tensorboard_logger_types())


FINDING_COLUMNS = ["step", "kind", "where", "seen", "expected", "evidence", "fix", "source"]


def _finding_rows(findings: list[Finding]) -> list[list[Any]]:
    return [[f.step, f.kind, f.where, f.observed, f.expected, f.evidence, f.fix, f.source] for f in findings]


def _hwc(img: torch.Tensor) -> Any:
    """A ``(C, H, W)`` image (uint8, or float in [0, 1]) as an ``(H, W, 3)`` uint8 numpy array."""
    x = img.detach().cpu()
    if x.is_floating_point():
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x[:3].permute(1, 2, 0).contiguous().numpy()


def mlflow_key(name: str) -> str:
    """A tag as an MLflow metric / image key: ``rangewatch/batch[0]/min/c0`` -> ``rangewatch/batch_0_/min/c0``,
    ``vae.encoder:input`` -> ``vae.encoder_input`` (other characters become ``_``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_/. -]", "_", name)


def is_summary_writer(obj: Any) -> bool:
    """A ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's): not a Lightning logger."""
    return hasattr(obj, "add_scalar") and hasattr(obj, "add_histogram_raw") and not hasattr(obj, "log_metrics")


def takes_histograms(loggers: list[Any]) -> bool:
    """Whether any of ``loggers`` shows histograms (a ``SummaryWriter``, a TensorBoard or W&B logger)."""
    return any(is_summary_writer(lg) or is_tensorboard_logger(lg) or type(lg).__name__ == "WandbLogger" for lg in loggers)


class WriterScalars:
    """A ``SummaryWriter`` as a metrics logger (``log_metrics``): one ``add_scalar`` per metric."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)


class LoggerSink:
    """Writes to the trainer's loggers: scalars to every logger with ``log_metrics``; histograms,
    text, images and the custom-scalars layout to TensorBoard loggers; to a ``WandbLogger`` the
    preview images (``wandb.Image``), histograms (``wandb.Histogram``) and the findings as a
    ``wandb.Table``; to an ``MLFlowLogger`` the preview images (``log_image`` with a step) and the
    findings as ``rangewatch/findings.json`` (columns + data, the layout of ``log_table``) and
    ``rangewatch/findings.md`` artifacts (MLflow has no histograms). A plain ``SummaryWriter`` among
    ``loggers`` takes what a TensorBoard logger takes (its scalars through ``add_scalar``).

    Every write of rangewatch to a logger goes through one of these methods: the choice of backends (TensorBoard,
    W&B, MLflow) is made here only, the tags come from :mod:`rangewatch.sinks.tags`."""

    def __init__(self, loggers: list[Any]):
        own = [lg for lg in loggers if is_summary_writer(lg)]
        loggers = [lg for lg in loggers if not is_summary_writer(lg)]
        self.metric_loggers: list[Any] = [lg for lg in loggers if hasattr(lg, "log_metrics")]
        self.writers: list[Any] = [lg.experiment for lg in loggers if is_tensorboard_logger(lg)]
        for w in own:  # a SummaryWriter: histograms, text and images directly, scalars through add_scalar
            self.writers.append(w)
            self.metric_loggers.append(WriterScalars(w))
        self.has_tensorboard = bool(self.writers)
        # by class name: lightning.pytorch and pytorch_lightning each have their own classes
        self.wandb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
        self.mlflow = [lg for lg in loggers if type(lg).__name__ == "MLFlowLogger"]

    @property
    def has_images(self) -> bool:
        """Whether any attached logger takes images (TensorBoard, W&B, MLflow)."""
        return bool(self.writers or self.wandb or self.mlflow)

    @property
    def active(self) -> bool:
        return bool(self.metric_loggers)

    # ------------------------------------------------------------ scalars, text, layout
    def scalars(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        for lg in self.metric_loggers:
            if lg in self.mlflow:  # MLflow keys take letters, digits, "_", "/", ".", " " and "-" only
                lg.log_metrics({mlflow_key(k): v for k, v in clean.items()}, step=step)
            else:
                lg.log_metrics(clean, step=step)

    def finding_counts(self, counts: dict[str, float], step: int) -> None:
        """The problems so far per kind (``counts``: kind -> number) as ``rangewatch/findings/<kind>`` and their sum
        as ``rangewatch/findings/total``."""
        self.scalars({FINDINGS_TOTAL: float(sum(counts.values())), **{findings_count(k): v for k, v in counts.items()}}, step)

    def text(self, name: str, text: str, step: int) -> None:
        for w in self.writers:
            write_text(w, name, text, step)

    def layout(self, layout: Any, step: int) -> None:
        for w in self.writers:
            write_layout(w, layout, step)

    def findings(self, findings: list[Finding], step: int) -> None:
        """The findings so far: markdown blocks to TensorBoard, a table to W&B and MLflow."""
        if self.writers:
            self.text(FINDINGS, findings_markdown(findings), step)
        rows = _finding_rows(findings)
        for lg in self.wandb:
            lg.log_table(FINDINGS, columns=FINDING_COLUMNS, data=rows, step=step)
        for lg in self.mlflow:
            lg.experiment.log_dict(lg.run_id, {"columns": FINDING_COLUMNS, "data": rows}, FINDINGS_JSON)
            lg.experiment.log_text(lg.run_id, findings_markdown(findings), FINDINGS_MD)

    # ------------------------------------------------------------ images
    def image(self, name: str, img: torch.Tensor, step: int, other_name: str | None = None) -> None:
        """One image (``(C, H, W)``, uint8 or float in [0, 1]) to every logger that takes images: TensorBoard at
        ``name``, W&B and MLflow at ``other_name`` (default ``name``)."""
        for w in self.writers:
            write_image(w, name, img, step)
        self.other_images(other_name or name, img, step)

    def other_images(self, name: str, img: torch.Tensor, step: int) -> None:
        """An image to the W&B and MLflow loggers only (TensorBoard's is written with more: see :meth:`previews`,
        :meth:`latents`)."""
        if not (self.wandb or self.mlflow):
            return
        arr = _hwc(img)
        for lg in self.wandb:
            lg.log_image(name, images=[arr], step=step)
        for lg in self.mlflow:
            lg.experiment.log_image(lg.run_id, arr, key=mlflow_key(name), step=step)

    def previews(self, previews: list[Any], step: int) -> None:
        """Corrected previews (:class:`~rangewatch.previews.drawing.Preview`), each at the step of its call (``step``
        when it has none): to TensorBoard the image, histogram and text of
        :func:`~rangewatch.previews.log.log_previews`; to W&B and MLflow the same image at the same tag."""
        if not self.has_images:
            return
        from ..previews.log import log_previews

        for p in previews:
            at = p.record.step if p.record.step is not None else step
            for w in self.writers:
                log_previews(w, p, step=at)
            self.other_images(preview_tag(p.image_tag), p.build_labelled(), at)

    def latents(self, where: str, monitor: Any, step: int, other_name: str | None = None) -> None:
        """A :class:`~rangewatch.checks.latents.LatentMonitor`'s RGB preview grid, to TensorBoard with its
        per-channel histograms (:func:`~rangewatch.sinks.latents.log_latents` at ``where``), the same grid to W&B and
        MLflow at ``other_name`` (default: TensorBoard's tag)."""
        if not self.has_images:
            return
        from .latents import latent_grid, write_latents
        from .tags import latent_preview_tag

        grid = latent_grid(monitor)
        if grid is not None:
            self.image(latent_preview_tag(where), grid, step, other_name)
        for w in self.writers:
            write_latents(w, where, monitor, None, step)  # the channels' histograms

    def latent_tap(self, tap: str, monitor: Any, s: RangeSummary, step: int) -> None:
        """An engine latent tap at a check: :meth:`latents` at ``rangewatch/<tap>/...`` (W&B and MLflow at
        ``rangewatch/<tap as in tag()>/latent_preview``) and, for W&B, the tap's per-channel histograms."""
        self.latents(tap, monitor, step, other_name=tag(tap, LATENT_PREVIEW))
        self.other_histograms(tap, s, step)

    # ------------------------------------------------------------ histograms
    def histograms(self, tap: str, s: RangeSummary, step: int) -> None:
        for w in self.writers:
            for c in range(s.channels):
                write_histogram(w, hist_tag(tap, c), s, c, step)
        self.other_histograms(tap, s, step)

    def other_histograms(self, tap: str, s: RangeSummary, step: int) -> None:
        """Per-channel histograms to W&B (``wandb.Histogram`` from the bin counts and edges)."""
        if not self.wandb or s.hist is None or s.hist_edges is None:
            return
        import numpy as np
        import wandb

        metrics = {}
        for c in range(s.channels):
            counts = s.hist[c].double().cpu().numpy()
            edges = s.hist_edges[c].double().cpu().numpy()
            if s.hist_underflow is not None and s.hist_overflow is not None:  # values outside the bins: one edge bin each
                lo, hi = float(s.finite_min[c]), float(s.finite_max[c])
                lo = lo if math.isfinite(lo) and lo < edges[0] else edges[0] - (edges[1] - edges[0])
                hi = hi if math.isfinite(hi) and hi > edges[-1] else edges[-1] + (edges[1] - edges[0])
                counts = np.concatenate([[float(s.hist_underflow[c])], counts, [float(s.hist_overflow[c])]])
                edges = np.concatenate([[lo], edges, [hi]])
            if counts.sum() <= 0:
                continue
            metrics[hist_tag(tap, c)] = wandb.Histogram(np_histogram=(counts, edges))
        if metrics:
            for lg in self.wandb:
                lg.log_metrics(metrics, step=step)
