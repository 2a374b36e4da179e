"""The one tag layout: every name rangewatch writes to a logger (and every file name it saves), built here and
read back from here by the report (:mod:`rangewatch.sinks.report`) and the TensorBoard plugin.

Groups (TensorBoard shows each as its own section):

- ``rangewatch/``: per tap its ``min``, ``max`` and ``out_of_range`` (``rangewatch/<tap>/<stat>``), the per-channel
  histograms (``rangewatch/<tap>/hist/c<k>``), the findings text (``rangewatch/findings``) and counts
  (``rangewatch/findings/<kind>``, ``.../total``), the latent previews (``rangewatch/<where>/latent_preview``,
  ``rangewatch/<where>/latent_channel_<k>``) and the corrected previews (``rangewatch/preview/<call>/...``);
- ``rangewatch_channels/``: the per-channel detail (``rangewatch_channels/<tap>/<stat>/c<k>``), the non-finite
  count and the expected range.

Tap names keep dots, brackets and colons (the report parses a tag from the right); ``/`` in a tap name becomes
``.`` and a space ``_``. Nothing here touches a writer; :mod:`rangewatch.sinks.loggers` does.
"""

from __future__ import annotations

import re

__all__ = [
    "GROUP", "DETAIL_GROUP", "PREFIX", "DETAIL_PREFIX", "tag", "detail_tag", "HIST", "hist_tag", "LATENT_PREVIEW", "ungrouped", "is_rangewatch_tag",
    "FINDINGS", "FINDINGS_TOTAL", "findings_count", "FINDINGS_JSON", "FINDINGS_MD", "FINDINGS_CATEGORY",
    "FLAGGED_CATEGORY", "OTHER_CATEGORY", "findings_counts_pattern", "tap_charts_pattern", "PREVIEW_GROUP",
    "PREVIEW_PREFIX", "tag_safe", "preview_name", "preview_tag", "preview_histogram_tag", "preview_text_tag",
    "preview_slug", "latent_tag", "latent_preview_tag", "latent_channel_tag", "pipeline_latents_tap",
    "pipeline_latents_where", "latents_png", "REPORT_DIRNAME",
]

# ---------------------------------------------------------------- groups and the taps' statistics
#: the compact group: per tap its ``min``, ``max``, ``out_of_range``; the findings; previews
GROUP = "rangewatch"
#: the per-channel detail group, beside the compact one
DETAIL_GROUP = "rangewatch_channels"
PREFIX = GROUP + "/"
DETAIL_PREFIX = DETAIL_GROUP + "/"


def tag(tap: str, stat: str, channel: int | None = None, group: str = GROUP) -> str:
    """``<group>/<tap>/<stat>/c<k>``; tap names keep dots and colons."""
    safe = tap.replace(" ", "_").replace("/", ".")
    return f"{group}/{safe}/{stat}" + (f"/c{channel}" if channel is not None else "")


#: the stat of a tap's per-channel histograms (``rangewatch/<tap>/hist/c<k>``)
HIST = "hist"
#: the last part of a latent RGB preview's tag
LATENT_PREVIEW = "latent_preview"


def hist_tag(tap: str, channel: int) -> str:
    """``rangewatch/<tap>/hist/c<k>``: one channel of a tap's histogram."""
    return tag(tap, HIST, channel)


def detail_tag(tap: str, stat: str, channel: int | None = None) -> str:
    """``rangewatch_channels/<tap>/<stat>/c<k>``: per-channel statistics, the non-finite count, the expected range."""
    return tag(tap, stat, channel, DETAIL_GROUP)


def ungrouped(t: str) -> str:
    """A tag without its group (``rangewatch/`` or ``rangewatch_channels/``)."""
    return t[len(DETAIL_PREFIX):] if t.startswith(DETAIL_PREFIX) else t[len(PREFIX):]


def is_rangewatch_tag(t: str) -> bool:
    """Whether ``t`` is in one of rangewatch's groups."""
    return t.startswith((PREFIX, DETAIL_PREFIX))


# ---------------------------------------------------------------- findings
#: the findings: markdown text in TensorBoard, a table in W&B
FINDINGS = f"{GROUP}/findings"
#: the problems so far, in all
FINDINGS_TOTAL = f"{FINDINGS}/total"
#: the MLflow artifacts of the findings: the table (columns + data) and the markdown
FINDINGS_JSON = f"{FINDINGS}.json"
FINDINGS_MD = f"{FINDINGS}.md"


def findings_count(kind: str) -> str:
    """``rangewatch/findings/<kind>``: the problems of one kind so far."""
    return f"{FINDINGS}/{kind}"


# ---------------------------------------------------------------- custom-scalars layout
#: the custom-scalars categories, the same titles in every run's layout (see ``sinks.loggers.scalars_layout``)
FINDINGS_CATEGORY = "rangewatch findings"
FLAGGED_CATEGORY = "rangewatch flagged (taps and calls with a finding)"
OTHER_CATEGORY = "rangewatch other taps"


def findings_counts_pattern() -> str:
    """The regular expression of the per-kind findings counts (a multiline chart)."""
    return f"^{FINDINGS}/"


def tap_charts_pattern(tap: str) -> str:
    """The regular expression of a tap's out-of-range share and non-finite count, in either group."""
    t = re.escape(tag(tap, "", group="GROUP")).replace("GROUP", f"({GROUP}|{DETAIL_GROUP})")
    return f"^{t}(out_of_range|nonfinite)(/c[0-9]+)?$"


# ---------------------------------------------------------------- corrected previews
#: the corrected previews' group (``log_previews``'s default ``tag_prefix``)
PREVIEW_GROUP = f"{GROUP}/preview"
PREVIEW_PREFIX = PREVIEW_GROUP + "/"
_TAG_BAD = re.compile(r"[^-/\w.]")


def tag_safe(s: str) -> str:
    """TensorBoard-safe tag text: only letters, digits, ``_ - . /``."""
    return re.sub(r"_+", "_", _TAG_BAD.sub("_", s)).strip("_/") or "untitled"


def preview_name(slug: str, assumption: str, convention: str) -> str:
    """``<call>/broken_<assumption>-vs-corrected_<convention>``: a preview's image within the group."""
    return f"{slug}/broken_{assumption}-vs-corrected_{convention}"


def preview_tag(name: str, prefix: str = PREVIEW_GROUP) -> str:
    """The side-by-side image of a preview (``name``: :func:`preview_name`)."""
    return tag_safe(f"{prefix.rstrip('/')}/{name}")


def preview_histogram_tag(slug: str, clamp: str, channel: int, prefix: str = PREVIEW_GROUP) -> str:
    """``<prefix>/<call>/histogram_<clamp>/c<k>``: one channel of a preview call's histogram."""
    return tag_safe(f"{prefix.rstrip('/')}/{slug}/histogram_{clamp}/c{channel}")


def preview_text_tag(slug: str, prefix: str = PREVIEW_GROUP) -> str:
    """``<prefix>/<call>/finding``: a preview's finding text."""
    return tag_safe(f"{prefix.rstrip('/')}/{slug}/finding")


def preview_slug(t: str) -> tuple[str, str] | None:
    """(call, rest) of a tag in the preview group; None for any other tag."""
    if not t.startswith(PREVIEW_PREFIX):
        return None
    slug, _, rest = t[len(PREVIEW_PREFIX):].partition("/")
    return slug, rest


# ---------------------------------------------------------------- latents
def latent_tag(where: str, prefix: str = GROUP) -> str:
    """``<prefix>/<where>``: the base of a latent tap's preview and histograms (``where`` kept as given)."""
    return f"{prefix}/{where}" if prefix else where


def latent_preview_tag(where: str, prefix: str = GROUP) -> str:
    """``<prefix>/<where>/latent_preview``: the latent RGB preview grid."""
    return f"{latent_tag(where, prefix)}/{LATENT_PREVIEW}"


def latent_channel_tag(where: str, channel: int, prefix: str = GROUP) -> str:
    """``<prefix>/<where>/latent_channel_<k>``: one latent channel's histogram."""
    return f"{latent_tag(where, prefix)}/latent_channel_{channel}"


def pipeline_latents_tap(call: int) -> str:
    """``pipeline.call<k>.latents``: the tap name of a pipeline call's per-step latent scalars."""
    return f"pipeline.call{call}.latents"


def pipeline_latents_where(call: int) -> str:
    """``pipeline/step_latents/call<k>``: where a pipeline call's per-step latent previews go."""
    return f"pipeline/step_latents/call{call}"


# ---------------------------------------------------------------- files
#: the report's folder, inside the log directory
REPORT_DIRNAME = "rangewatch_report"


def latents_png(call: int, step: int) -> str:
    """``latents_call<k>_step<sss>.png``: a pipeline call's latent preview at a denoising step, in ``out_dir``."""
    return f"latents_call{call}_step{step:03d}.png"
