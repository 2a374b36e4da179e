"""Writing corrected previews to TensorBoard: :func:`log_previews`."""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any

from ..findings.finding import Finding
from ..sinks.loggers import write_histogram, write_image, write_text
from ..sinks.tags import PREVIEW_GROUP, preview_histogram_tag, preview_tag, preview_text_tag, tag_safe
from .drawing import Preview
from .patching import PATCHER
from .records import VisRecord
from .text import fmt_num
from .watch import VisualizationWatch, watches

__all__ = ["log_previews"]


def _previews_of(items: Any) -> list[Preview]:
    out: list[Preview] = []

    def add(p: Preview | None) -> None:
        if p is not None and p.images and all(p is not q for q in out):
            out.append(p)

    def visit(obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, VisualizationWatch):
            for p in obj.pop_previews():
                add(p)
        elif isinstance(obj, Preview):
            add(obj)
        elif isinstance(obj, VisRecord):
            add(obj.preview)
        elif isinstance(obj, Finding):
            for watch in watches():
                rec = watch.record_of(obj)
                if rec is not None and any(f is obj for f in rec.findings):
                    add(rec.preview)
        elif isinstance(obj, (list, tuple, set, deque)) or inspect.isgenerator(obj):
            for o in obj:
                visit(o)
        else:
            raise TypeError(f"log_previews takes a VisualizationWatch, VisRecord, Preview or Finding (or a list), got {type(obj).__name__}")

    visit(items)
    return out


def _histogram(writer: Any, preview: Preview, prefix: str, step: int | None) -> list[str]:
    if preview.hist is None:
        return []
    s = preview.hist.compute()  # small host transfer of bin counts
    if s.hist is None or s.hist_edges is None:
        return []
    tags = []
    clamp = f"clamp_{fmt_num(preview.assumed[0])}_{fmt_num(preview.assumed[1])}" if preview.assumed else preview.assumption_slug
    for c in range(s.channels):
        tag = preview_histogram_tag(preview.slug, clamp, c, prefix)
        with PATCHER.suppressed():
            if not write_histogram(writer, tag, s, c, step):
                continue
        tags.append(tag)
    return tags


def log_previews(
    experiment: Any, items: Any, step: int | None = None, tag_prefix: str = PREVIEW_GROUP
) -> list[str]:
    """Write corrected previews to TensorBoard; returns the tags written.

    Args:
        experiment: a ``torch.utils.tensorboard.SummaryWriter`` (Lightning's
            ``TensorBoardLogger.experiment``) or the ``TensorBoardLogger`` itself.
        items: a :class:`VisualizationWatch` (its pending previews are popped), or
            :class:`VisRecord` / :class:`Finding` / :class:`Preview` objects or lists of them.
        step: the global step of the entries.

    For each preview (one per flagged call site): the side-by-side image (left: as the call shows
    it; right: mapped with the inferred convention) at
    ``<prefix>/<call>_in_<function>/broken_<assumption>-vs-corrected_<convention>``, a per-channel
    histogram of the call's values from :class:`RangeStats` bin counts at
    ``<prefix>/<call>_in_<function>/histogram_clamp_<lo>_<hi>/c<k>`` and a text entry at
    ``<prefix>/<call>_in_<function>/finding``.
    """
    writer = getattr(experiment, "experiment", experiment)
    if not hasattr(writer, "add_image"):
        raise TypeError(f"log_previews needs a TensorBoard SummaryWriter (or TensorBoardLogger), got {type(experiment).__name__}")
    prefix = tag_prefix.rstrip("/")
    tags: list[str] = []
    used: set[str] = set()
    for p in _previews_of(items):
        if p.slug in used:  # two call sites of one call in one function: tell them apart by line
            p.slug = tag_safe(f"{p.slug}_line{p.site.rsplit(':', 1)[-1]}")
        used.add(p.slug)
        grid = p.build_labelled()
        tag = preview_tag(p.image_tag, prefix)
        with PATCHER.suppressed():
            write_image(writer, tag, grid, step)
        tags.append(tag)
        if hasattr(writer, "add_histogram_raw"):
            tags += _histogram(writer, p, prefix, step)
        if hasattr(writer, "add_text"):
            ttag = preview_text_tag(p.slug, prefix)
            with PATCHER.suppressed():
                write_text(writer, ttag, p.text(), step)
            tags.append(ttag)
    return tags
