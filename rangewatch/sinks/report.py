"""``rangewatch report LOGDIR``: one self-contained HTML page of what RangeWatch logged to TensorBoard.

The event files are read with TensorBoard's own reader (``EventAccumulator``, every event kept);
every directory under ``LOGDIR`` holding event files is a run (TensorBoardLogger versions, resumed
runs, several experiments), and each run with rangewatch tags gets a section:

* the findings (the latest ``rangewatch/findings`` table: it holds every finding so far);
* an overview of the taps and a table of non-finite counts and out-of-range shares;
* per tap: per-channel charts of min, max and mean ± std over the steps (inline SVG), charts of
  the out-of-range share and of non-finite counts, the histograms of the latest step, the findings
  about that tap and the values per step;
* the visualisation previews (``rangewatch/preview/<call>/...``): the broken | corrected image
  (embedded as a data URI, also written as a PNG file next to the page), the call's histogram
  with the range it clamps to, and the preview's finding text;
* anything else under ``rangewatch/`` (latent previews and histograms, new tags): images shown,
  histograms drawn, scalars charted, text shown, and every tag listed.

Charts are hand-written SVG: the page needs no plotting library and no network. The tag layout is
the one :mod:`rangewatch.sinks.loggers` and :mod:`rangewatch.visualization` write: scalars
``rangewatch/<tap>/<stat>/c<k>`` (tap names keep dots, brackets and colons; parsed from the right),
histograms ``rangewatch/<tap>/hist/c<k>``, text ``rangewatch/findings``.

Usage::

    from rangewatch.sinks.report import build_report
    index = build_report("lightning_logs")          # lightning_logs/rangewatch_report/index.html

Example (a plain loop logs one check to TensorBoard; the report reads it back)::

    >>> import tempfile, torch, rangewatch
    >>> from torch import nn
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> tmp = tempfile.TemporaryDirectory()
    >>> logdir = tmp.name
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    >>> with rangewatch.watch(model, expect={"0": "symmetric"}, logger=SummaryWriter(logdir), policy="log") as watch:
    ...     x = torch.rand(4, 3, 16, 16)                  # [0, 1] photos; the first conv expects [-1, 1]
    ...     watch.batch(x)
    ...     _ = model(x)
    ...     _ = watch.step()
    >>> index = build_report(logdir)
    >>> index.parent.name, index.name
    ('rangewatch_report', 'index.html')
    >>> page = index.read_text(encoding="utf-8")
    >>> "1 finding" in page and "apply x * 2 - 1" in page   # the finding and its fix, read back from the events
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..rng import rng_kept
from .tags import FINDINGS, HIST, PREFIX, REPORT_DIRNAME, is_rangewatch_tag, preview_slug
from .tags import ungrouped as _ungrouped

__all__ = ["build_report", "REPORT_DIRNAME", "STATS"]

#: per-channel statistics the callback logs as scalars
STATS = ("min", "max", "mean", "std", "nonfinite", "out_of_range")
_RANGE_STATS = ("min", "max", "mean", "std")
_EXPECTED = ("expected_min", "expected_max")  # the tap's expected range (one value for all channels)
_CHANNEL = re.compile(r"^c(\d+)$")
_TEXT_SUFFIX = "/text_summary"
_TABLE_STEPS = 10  # the values table shows the first and last this many steps
_CHART_POINTS = 600  # more points than this per series are reduced per bucket (min of min, max of max)
_MARKER_POINTS = 60  # markers with tooltips up to this many points


def _no_data(logdir: Path) -> str:
    return f"no rangewatch data under {logdir}: run training with RangeWatch and a TensorBoardLogger"


# ============================================================================ reading
@dataclass
class _Scalar:
    step: int
    wall: float
    value: float


@dataclass
class _Hist:
    step: int
    wall: float
    min: float
    max: float
    num: float
    sum: float
    sum_squares: float
    limits: list[float]
    counts: list[float]


@dataclass
class _Image:
    step: int
    wall: float
    data: bytes
    width: int
    height: int


@dataclass
class _Text:
    step: int
    wall: float
    text: str


@dataclass
class _Tap:
    name: str
    # stat -> channel (None: no channel suffix) -> step -> value (the last event of a step wins)
    series: dict[str, dict[int | None, dict[int, float]]] = field(default_factory=dict)
    hists: dict[int | None, _Hist] = field(default_factory=dict)  # latest per channel

    @property
    def channels(self) -> list[int | None]:
        chans = {c for per in self.series.values() for c in per} | set(self.hists)
        return sorted(chans, key=lambda c: (c is not None, c or 0))

    @property
    def steps(self) -> list[int]:
        return sorted({s for per in self.series.values() for vals in per.values() for s in vals})

    def values(self, stat: str, channel: int | None) -> dict[int, float]:
        return self.series.get(stat, {}).get(channel, {})


@dataclass
class _Preview:
    slug: str
    images: dict[str, list[_Image]] = field(default_factory=dict)  # tag -> events
    hists: dict[str, _Hist] = field(default_factory=dict)  # tag -> latest
    texts: list[_Text] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


@dataclass
class _Run:
    name: str
    path: Path
    taps: dict[str, _Tap] = field(default_factory=dict)
    findings: list[_Text] = field(default_factory=list)
    previews: dict[str, _Preview] = field(default_factory=dict)
    images: dict[str, list[_Image]] = field(default_factory=dict)
    hists: dict[str, _Hist] = field(default_factory=dict)
    scalars: dict[str, list[_Scalar]] = field(default_factory=dict)
    texts: dict[str, list[_Text]] = field(default_factory=dict)
    unread: list[tuple[str, str]] = field(default_factory=list)  # (kind, tag) of tags not understood
    all_tags: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.all_tags.values())


def _run_dirs(root: Path, skip: Path | None) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        dirnames.sort()
        if any("tfevents" in f for f in filenames):
            out.append(here)
    return out


def _latest(events: Sequence[Any]) -> Any:
    return max(events, key=lambda e: (e.step, e.wall))


def _hist_from_popo(step: int, wall: float, h: Any) -> _Hist:
    return _Hist(step, wall, float(h.min), float(h.max), float(h.num), float(h.sum), float(h.sum_squares),
                 [float(v) for v in h.bucket_limit], [float(v) for v in h.bucket])


def _decode_tensor(acc: Any, tag: str, events: list[Any]) -> tuple[str, list[Any]]:
    """A tensor summary as ("text" | "scalar" | "hist" | "image" | "", events) by its plugin."""
    from tensorboard.util import tensor_util

    try:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
    except Exception:
        plugin = ""
    out: list[Any] = []
    kind = ""
    for ev in events:
        try:
            arr = tensor_util.make_ndarray(ev.tensor_proto)
        except Exception:
            return "", []
        step, wall = int(ev.step), float(ev.wall_time)
        if plugin == "text" or (not plugin and arr.dtype.kind in "SOU"):
            kind = "text"
            flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()]
            out.append(_Text(step, wall, "\n\n".join(flat)))
        elif plugin == "scalars" and arr.size == 1:
            kind = "scalar"
            out.append(_Scalar(step, wall, float(arr.reshape(-1)[0])))
        elif plugin == "histograms" and arr.ndim == 2 and arr.shape[1] == 3:
            kind = "hist"
            left, right, counts = arr[:, 0].tolist(), arr[:, 1].tolist(), arr[:, 2].tolist()
            num = float(sum(counts))
            mids = [(a + b) / 2 for a, b in zip(left, right)]
            s = float(sum(m * c for m, c in zip(mids, counts)))
            sq = float(sum(m * m * c for m, c in zip(mids, counts)))
            out.append(_Hist(step, wall, float(left[0]) if left else 0.0, float(right[-1]) if right else 0.0, num, s, sq,
                             [float(r) for r in right], [float(c) for c in counts]))
        elif plugin == "images" and arr.ndim == 1 and arr.size >= 3:
            kind = "image"
            w, h = (int(arr[0]), int(arr[1])) if arr[0] and arr[1] else (0, 0)
            for blob in arr[2:].tolist():
                out.append(_Image(step, wall, bytes(blob), w, h))
        else:
            return "", []
    return kind, out


def _add_text(run: _Run, name: str, items: list[_Text]) -> None:
    if name == FINDINGS:
        run.findings.extend(items)
    elif (sr := preview_slug(name)) is not None:
        slug, rest = sr
        p = run.previews.setdefault(slug, _Preview(slug))
        if rest == "finding":
            p.texts.extend(items)
        else:
            run.texts.setdefault(name, []).extend(items)
    else:
        run.texts.setdefault(name, []).extend(items)


def _stat_parts(tag: str) -> tuple[str, str, int | None] | None:
    """(tap, stat, channel) of a tap's statistic (``<group>/<tap>/<stat>[/c<k>]``, read from the right); None for
    any other tag."""
    parts = _ungrouped(tag).split("/")
    if len(parts) >= 3 and _CHANNEL.match(parts[-1]) and parts[-2] in STATS:
        return "/".join(parts[:-2]), parts[-2], int(parts[-1][1:])
    if len(parts) >= 2 and (parts[-1] in STATS or parts[-1] in _EXPECTED):
        return "/".join(parts[:-1]), parts[-1], None
    return None


def _hist_parts(tag: str) -> tuple[str, int | None] | None:
    """(tap, channel) of a tap's histogram (``<group>/<tap>/hist[/c<k>]``); None for any other tag."""
    parts = _ungrouped(tag).split("/")
    if len(parts) >= 3 and parts[-2] == HIST and _CHANNEL.match(parts[-1]):
        return "/".join(parts[:-2]), int(parts[-1][1:])
    if len(parts) >= 2 and parts[-1] == HIST:
        return "/".join(parts[:-1]), None
    return None


def _add_scalar(run: _Run, tag: str, items: list[_Scalar]) -> None:
    if tag.startswith(FINDINGS + "/"):  # the findings counts: the summary says them
        return
    parsed = _stat_parts(tag)
    if parsed is None or not parsed[0] or preview_slug(tag) is not None:
        run.scalars.setdefault(tag, []).extend(items)
        return
    tap, stat, channel = parsed
    t = run.taps.setdefault(tap, _Tap(tap))
    vals = t.series.setdefault(stat, {}).setdefault(channel, {})
    for ev in sorted(items, key=lambda e: (e.step, e.wall)):
        vals[ev.step] = ev.value


def _add_hist(run: _Run, tag: str, items: list[_Hist]) -> None:
    if not items:
        return
    last = _latest(items)
    if (sr := preview_slug(tag)) is not None:
        slug = sr[0]
        run.previews.setdefault(slug, _Preview(slug)).hists[tag] = last
        return
    parsed = _hist_parts(tag)
    if parsed is None:
        run.hists[tag] = last
        return
    tap, channel = parsed
    run.taps.setdefault(tap, _Tap(tap)).hists[channel] = last


def _add_images(run: _Run, tag: str, items: list[_Image]) -> None:
    if (sr := preview_slug(tag)) is not None:
        slug = sr[0]
        run.previews.setdefault(slug, _Preview(slug)).images.setdefault(tag, []).extend(items)
    else:
        run.images.setdefault(tag, []).extend(items)


def _read_run(path: Path, name: str) -> _Run:
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        str(path),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 1, ea.AUDIO: 1},
    )
    acc.Reload()
    tags = acc.Tags()
    run = _Run(name, path)
    for kind in ("scalars", "histograms", "images", "tensors", "audio"):
        run.all_tags[kind] = sorted(t for t in tags.get(kind, []) if is_rangewatch_tag(t))
    for tag in run.all_tags["scalars"]:
        _add_scalar(run, tag, [_Scalar(int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag)])
    for tag in run.all_tags["histograms"]:
        _add_hist(run, tag, [_hist_from_popo(int(e.step), float(e.wall_time), e.histogram_value) for e in acc.Histograms(tag)])
    for tag in run.all_tags["images"]:
        _add_images(run, tag, [_Image(int(e.step), float(e.wall_time), bytes(e.encoded_image_string), int(e.width), int(e.height))
                               for e in acc.Images(tag)])
    for tag in run.all_tags["tensors"]:
        kind, items = _decode_tensor(acc, tag, acc.Tensors(tag))
        name_ = tag[: -len(_TEXT_SUFFIX)] if tag.endswith(_TEXT_SUFFIX) else tag
        if kind == "text":
            _add_text(run, name_, items)
        elif kind == "scalar":
            _add_scalar(run, tag, items)
        elif kind == "hist":
            _add_hist(run, tag, items)
        elif kind == "image":
            _add_images(run, tag, items)
        else:
            run.unread.append(("tensor", tag))
    for tag in run.all_tags["audio"]:
        run.unread.append(("audio", tag))
    return run


# ============================================================================ formatting helpers
def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: float) -> str:
    """Display form of a logged value: integers as integers, else 6 significant digits."""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _tick(v: float) -> str:
    s = f"{v:.4g}"
    return "0" if s in ("-0", "0") else s


def _pct(v: float) -> str:
    return f"{100 * v:.3g}%"


def _chan(c: int | None) -> str:
    return "all" if c is None else f"c{c}"


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline(s: str) -> str:
    """Escaped text with markdown code spans and bold."""
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", _e(s))
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _markdown(text: str) -> str:
    """A small markdown subset: paragraphs, ``- `` lists, tables, code spans, bold."""
    table = _md_table(text)
    if table is not None:
        return _table_html(*table)
    blocks: list[str] = []
    items: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if para:
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(s[2:])
        elif not s:
            flush()
        else:
            if items:
                flush()
            para.append(s)
    flush()
    return "\n".join(blocks)


_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _md_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a markdown pipe table, or None."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("|") or not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?", lines[1]):
        return None

    def cells(line: str) -> list[str]:
        parts = _CELL_SPLIT.split(line)
        if parts and not parts[0].strip():
            parts = parts[1:]
        if parts and not parts[-1].strip():
            parts = parts[:-1]
        return [p.strip().replace("\\|", "|") for p in parts]

    return cells(lines[0]), [cells(ln) for ln in lines[2:] if ln.startswith("|")]


def _table_html(header: list[str], rows: list[list[str]], cls: str = "findings",
                link: Callable[[str], str | None] | None = None) -> str:
    """A findings-style table; ``link(where)`` gives the anchor of a ``where`` cell's tap, if any."""
    kind_col = header.index("kind") if "kind" in header else None
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        kind = r[kind_col] if kind_col is not None and kind_col < len(r) else ""
        attrs = f' class="kind-{_e(re.sub(r"[^a-z0-9_]", "", kind.lower()))}" data-kind="{_e(kind)}"' if kind else ""
        cells = []
        for i, c in enumerate(r):
            name = header[i] if i < len(header) else ""
            inner = f'<span class="badge">{_e(c)}</span>' if i == kind_col else _inline(c)
            anchor = link(c) if link is not None and name == "where" else None
            if anchor:
                inner = f'<a href="#{_e(anchor)}">{inner}</a>'
            cells.append(f'<td data-col="{_e(name)}">{inner}</td>')
        out.append(f"<tr{attrs}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _slug(s: str, used: set[str] | None = None, limit: int = 120) -> str:
    """File/anchor-safe text; with ``used``, made unique (a short hash of ``s`` is appended)."""
    base = (re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._-") or "x")[:limit]
    if used is None:
        return base
    out = base
    if out in used:
        out = f"{base}-{hashlib.sha1(s.encode()).hexdigest()[:8]}"
    used.add(out)
    return out


def _tap_key(where: str) -> str:
    """A finding's ``where`` in tag form (as :func:`rangewatch.sinks.loggers.tag` writes tap names)."""
    return where.replace(" ", "_").replace("/", ".")


def _image_type(data: bytes) -> tuple[str, str]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg", "jpg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif", "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return "application/octet-stream", "bin"


# ============================================================================ SVG charts
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def _nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if step >= raw:
            break
    if integer:
        step = max(1.0, round(step))
    start = math.ceil(lo / step - 1e-9)
    ticks = []
    i = start
    while i * step <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(i * step)
        i += 1
    return ticks


def _reduce(xs: list[int], ys: list[float], how: str, limit: int = _CHART_POINTS) -> tuple[list[int], list[float]]:
    """At most ``limit`` points: consecutive buckets reduced by min, max or mean (spikes survive)."""
    n = len(xs)
    if n <= limit:
        return xs, ys
    k = math.ceil(n / limit)
    fx, fy = [], []
    for i in range(0, n, k):
        chunk = [y for y in ys[i : i + k] if math.isfinite(y)]
        fx.append(xs[i])
        if not chunk:
            fy.append(float("nan"))
        elif how == "min":
            fy.append(min(chunk))
        elif how == "max":
            fy.append(max(chunk))
        else:
            fy.append(sum(chunk) / len(chunk))
    return fx, fy


@dataclass
class _Line:
    label: str
    color: str
    xs: list[int]
    ys: list[float]
    width: float = 1.5
    dash: str = ""


@dataclass
class _Band:
    label: str
    color: str
    xs: list[int]
    lo: list[float]
    hi: list[float]
    opacity: float = 0.18


class _Frame:
    """Coordinates of one chart."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, width: int, height: int,
                 left: int = 56, right: int = 10, top: int = 34, bottom: int = 28, floor0: bool = False):
        if x1 <= x0:
            x0, x1 = x0 - 1, x1 + 1
        if floor0 and y0 >= 0:  # counts and shares: the axis starts at zero
            y0, y1 = 0.0, (y1 * 1.06 if y1 > 0 else 1.0)
        elif not (y1 > y0):
            pad = abs(y0) * 0.1 if y0 else 0.5
            y0, y1 = y0 - pad, y1 + pad
        else:
            pad = (y1 - y0) * 0.06
            y0, y1 = y0 - pad, y1 + pad
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1
        self.w, self.h = width, height
        self.px0, self.px1, self.py0, self.py1 = left, width - right, height - bottom, top

    def x(self, v: float) -> float:
        return self.px0 + (v - self.x0) / (self.x1 - self.x0) * (self.px1 - self.px0)

    def y(self, v: float) -> float:
        return self.py0 - (v - self.y0) / (self.y1 - self.y0) * (self.py0 - self.py1)

    def axes(self, integer_x: bool = True, y_tick: Callable[[float], str] | None = None) -> str:
        out = [f'<rect x="{self.px0}" y="{self.py1}" width="{self.px1 - self.px0}" height="{self.py0 - self.py1}" class="plot"/>']
        for t in _nice_ticks(self.y0, self.y1, 4):
            y = self.y(t)
            out.append(f'<line x1="{self.px0}" x2="{self.px1}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{self.px0 - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{_e((y_tick or _tick)(t))}</text>')
        for t in _nice_ticks(self.x0, self.x1, 5, integer=integer_x):
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.py0}" y2="{self.py0 + 4}" class="axis"/>'
                       f'<text x="{x:.1f}" y="{self.py0 + 15}" class="tick" text-anchor="middle">{_e(_tick(t))}</text>')
        return "".join(out)


def _legend(items: list[tuple[str, str, str]], x: float = 56, y: float = 27) -> str:
    """(label, color, "line" | "band") entries in one row."""
    out = []
    for label, color, kind in items:
        if kind == "band":
            out.append(f'<rect x="{x:.0f}" y="{y - 7}" width="14" height="8" fill="{color}" fill-opacity="0.35"/>')
        else:
            out.append(f'<line x1="{x:.0f}" x2="{x + 14:.0f}" y1="{y - 3}" y2="{y - 3}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{x + 17:.0f}" y="{y}" class="legend">{_e(label)}</text>')
        x += 24 + 6.2 * len(label)
    return "".join(out)


def _segments(xs: list[int], ys: list[float]) -> list[list[tuple[int, float]]]:
    segs: list[list[tuple[int, float]]] = [[]]
    for x, y in zip(xs, ys):
        if math.isfinite(y):
            segs[-1].append((x, y))
        elif segs[-1]:
            segs.append([])
    return [s for s in segs if s]


def _title(title: str, width: int, x: float = 56) -> str:
    room = max(8, int((width - x - 4) / 6.6))
    shown = title if len(title) <= room else title[: room - 1] + "…"
    return f'<text x="{x}" y="13" class="title">{_e(shown)}</text>'


def _line_chart(title: str, lines: list[_Line], bands: list[_Band] = (), *, width: int = 330, height: int = 200,  # type: ignore[assignment]
                attrs: str = "", y_format: Callable[[float], str] = _fmt, y_tick: Callable[[float], str] | None = None,
                legend: bool = True, floor0: bool = False) -> str:
    ys = [y for ln in lines for y in ln.ys if math.isfinite(y)] + [y for b in bands for y in (*b.lo, *b.hi) if math.isfinite(y)]
    xs = [x for ln in lines for x in ln.xs] + [x for b in bands for x in b.xs]
    if not xs or not ys:
        return ""
    fr = _Frame(min(xs), max(xs), min(ys), max(ys), width, height, top=34 if legend else 22, floor0=floor0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" {attrs}><title>{_e(title)}</title>',
           _title(title, width), fr.axes(y_tick=y_tick)]
    for b in bands:
        pts = [(x, lo, hi) for x, lo, hi in zip(b.xs, b.lo, b.hi) if math.isfinite(lo) and math.isfinite(hi)]
        if len(pts) >= 2:
            poly = " ".join(f"{fr.x(x):.1f},{fr.y(hi):.1f}" for x, _, hi in pts)
            poly += " " + " ".join(f"{fr.x(x):.1f},{fr.y(lo):.1f}" for x, lo, _ in reversed(pts))
            out.append(f'<polygon points="{poly}" fill="{b.color}" fill-opacity="{b.opacity}" stroke="none"/>')
        elif len(pts) == 1:
            x, lo, hi = pts[0]
            out.append(f'<line x1="{fr.x(x):.1f}" x2="{fr.x(x):.1f}" y1="{fr.y(lo):.1f}" y2="{fr.y(hi):.1f}" '
                       f'stroke="{b.color}" stroke-opacity="0.45" stroke-width="8"/>')
    for ln in lines:
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        for seg in _segments(ln.xs, ln.ys):
            if len(seg) >= 2:
                pts = " ".join(f"{fr.x(x):.1f},{fr.y(y):.1f}" for x, y in seg)
                out.append(f'<polyline points="{pts}" fill="none" stroke="{ln.color}" stroke-width="{ln.width}"{dash}/>')
        if len(ln.xs) <= _MARKER_POINTS:
            for x, y in zip(ln.xs, ln.ys):
                if math.isfinite(y):
                    out.append(f'<circle cx="{fr.x(x):.1f}" cy="{fr.y(y):.1f}" r="2.6" fill="{ln.color}">'
                               f"<title>step {x}: {_e(ln.label)} = {_e(y_format(y))}</title></circle>")
    if legend:
        out.append(_legend([(b.label, b.color, "band") for b in bands] + [(ln.label, ln.color, "line") for ln in lines]))
    out.append("</svg>")
    return "".join(out)


def _range_chart(tap: _Tap, c: int | None) -> str:
    def series(stat: str) -> tuple[list[int], list[float]]:
        vals = tap.values(stat, c)
        xs = sorted(vals)
        return _reduce(xs, [vals[s] for s in xs], {"min": "min", "max": "max"}.get(stat, "mean"))

    (mnx, mn), (mxx, mx), (mex, me), (sdx, sd) = (series(s) for s in _RANGE_STATS)
    lines, bands = [], []
    if mex:
        std = dict(zip(sdx, sd))
        both = [x for x in mex if x in std]
        mean = dict(zip(mex, me))
        if both:
            bands.append(_Band("mean±std", "#2ca02c", both, [mean[x] - std[x] for x in both], [mean[x] + std[x] for x in both], 0.22))
    if mnx and mxx:
        hi = dict(zip(mxx, mx))
        both = [x for x in mnx if x in hi]
        lo = dict(zip(mnx, mn))
        if both:
            bands.append(_Band("min..max", "#1f77b4", both, [lo[x] for x in both], [hi[x] for x in both], 0.08))
    if mnx:
        lines.append(_Line("min", "#1f77b4", mnx, mn, 1.2))
    if mxx:
        lines.append(_Line("max", "#d62728", mxx, mx, 1.2))
    if mex:
        lines.append(_Line("mean", "#222222", mex, me, 1.8))
    for stat in _EXPECTED:
        vals = tap.values(stat, None)
        if vals:
            xs = sorted(vals)
            lines.append(_Line("expected", "#888888", xs, [vals[x] for x in xs], 1.0, "4 3"))
    return _line_chart(f"{tap.name} · {_chan(c)}", lines, bands, legend=False,
                       attrs=f'data-kind="range" data-tap="{_e(tap.name)}" data-channel="{_e(_chan(c))}"')


def _per_channel_chart(tap: _Tap, stat: str, title: str, how: str, y_format: Callable[[float], str],
                       y_tick: Callable[[float], str] | None = None) -> str:
    lines = []
    for i, c in enumerate(ch for ch in tap.channels if tap.values(stat, ch)):
        vals = tap.values(stat, c)
        xs = sorted(vals)
        rx, ry = _reduce(xs, [vals[s] for s in xs], how)
        lines.append(_Line(_chan(c), _PALETTE[i % len(_PALETTE)], rx, ry, 1.4))
    if not lines:
        return ""
    return _line_chart(title, lines, attrs=f'data-kind="{stat}" data-tap="{_e(tap.name)}"', y_format=y_format,
                       y_tick=y_tick, legend=len(lines) <= 8, floor0=True)


def _hist_chart(h: _Hist, title: str, *, under_over: bool, clamp: tuple[float, float] | None = None,
                width: int = 330, height: int = 170, attrs: str = "") -> str:
    counts, limits = h.counts, h.limits
    n = len(counts)
    if n == 0 or len(limits) != n:
        return ""
    left0 = min(h.min, limits[0]) if math.isfinite(h.min) else limits[0]
    edges = [left0] + limits  # bucket i spans [edges[i], edges[i + 1])
    top = max(counts) or 1.0
    fr = _Frame(0, n, 0, top, width, height, top=22)
    fr.y0 = 0.0  # bars start at zero
    slot = (fr.px1 - fr.px0) / n
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart hist" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" {attrs}><title>{_e(title)}</title>', _title(title, width),
           f'<rect x="{fr.px0}" y="{fr.py1}" width="{fr.px1 - fr.px0}" height="{fr.py0 - fr.py1}" class="plot"/>']
    for t in _nice_ticks(0, fr.y1, 3):
        y = fr.y(t)
        out.append(f'<line x1="{fr.px0}" x2="{fr.px1}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{fr.px0 - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{_e(_tick(t))}</text>')

    def xpos(v: float) -> float:
        if v <= edges[0]:
            return fr.px0
        for i in range(n):
            a, b = edges[i], edges[i + 1]
            if v < b or i == n - 1:
                frac = 0.0 if b <= a else min(1.0, max(0.0, (v - a) / (b - a)))
                return fr.px0 + (i + frac) * slot
        return fr.px1

    if clamp is not None:
        lo, hi = clamp
        xl, xh = xpos(lo), xpos(hi)
        if xl > fr.px0:
            out.append(f'<rect x="{fr.px0}" y="{fr.py1}" width="{xl - fr.px0:.1f}" height="{fr.py0 - fr.py1}" class="clamped"/>')
        if xh < fr.px1:
            out.append(f'<rect x="{xh:.1f}" y="{fr.py1}" width="{fr.px1 - xh:.1f}" height="{fr.py0 - fr.py1}" class="clamped"/>')
    for i, cnt in enumerate(counts):
        if cnt <= 0:
            continue
        x = fr.px0 + i * slot
        y = fr.y(cnt)
        edge = under_over and i in (0, n - 1)
        a, b = edges[i], edges[i + 1]
        if under_over and i == 0:
            tip = f"below {_fmt(limits[0])}: {_fmt(cnt)}"
        elif under_over and i == n - 1:
            tip = f"at or above {_fmt(edges[i])}: {_fmt(cnt)}"
        else:
            tip = f"[{_fmt(a)}, {_fmt(b)}): {_fmt(cnt)}"
        out.append(f'<rect x="{x:.2f}" y="{y:.1f}" width="{max(slot - 0.4, 0.6):.2f}" height="{fr.py0 - y:.1f}" '
                   f'class="{"bar out" if edge else "bar"}"><title>{_e(tip)}</title></rect>')
    if clamp is not None:
        for v in clamp:
            x = xpos(v)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{fr.py1}" y2="{fr.py0}" class="bound"/>')
    # x labels: round values over the buckets' range (the under/overflow buckets are open-ended)
    lo_v, hi_v = (edges[1], edges[-2]) if under_over and n > 2 else (edges[0], edges[-1])
    last_x = -1e9
    for t in _nice_ticks(lo_v, hi_v, 4):
        x = xpos(t)
        if x - last_x < 24:
            continue
        last_x = x
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{fr.py0}" y2="{fr.py0 + 4}" class="axis"/>'
                   f'<text x="{x:.1f}" y="{fr.py0 + 15}" class="tick" text-anchor="middle">{_e(_tick(t))}</text>')
    out.append("</svg>")
    return "".join(out)


def _hist_caption(h: _Hist) -> str:
    mean = h.sum / h.num if h.num else float("nan")
    var = h.sum_squares / h.num - mean * mean if h.num else float("nan")
    std = math.sqrt(var) if math.isfinite(var) and var > 0 else 0.0 if math.isfinite(var) else float("nan")
    return (f'step {h.step}: n = {_fmt(h.num)}, min {_fmt(h.min)}, max {_fmt(h.max)}, '
            f'mean {_fmt(mean)}, std {_fmt(std)}')


# ============================================================================ HTML sections
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1b1b;margin:0;background:#fafafa}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0}h2{font-size:19px;margin:32px 0 8px;padding-top:8px;border-top:2px solid #ddd}
h3{font-size:16px;margin:22px 0 6px}h2 code,h3 code{font-size:.95em}h4{font-size:14px;margin:14px 0 4px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef0f3;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #d8d8d8;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.findings td{max-width:460px}
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#ddd;font-size:12px;font-weight:600}
tr.kind-mismatch .badge,tr.kind-nonfinite .badge{background:#f8d0d0;color:#8a1010}
tr.kind-clipping .badge{background:#fde2c4;color:#7a3d00}
tr.kind-note .badge,tr.kind-internal .badge{background:#e3e8ef;color:#334}
.bad{color:#b00020;font-weight:600}.muted{color:#666}.small{font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0}
figure{margin:0;background:#fff;border:1px solid #e2e2e2;border-radius:4px;padding:4px}
figcaption{font-size:12px;color:#555;max-width:330px}
svg.chart{display:block;font-family:system-ui,sans-serif}
svg .plot{fill:#fff;stroke:#bbb}svg .grid{stroke:#eee}svg .axis{stroke:#999}
svg .tick{font-size:10px;fill:#555}svg .title{font-size:12px;font-weight:600;fill:#222}svg .legend{font-size:10.5px;fill:#333}
svg .bar{fill:#4c78a8}svg .bar.out{fill:#d62728}svg .clamped{fill:#d62728;fill-opacity:.09}
svg .bound{stroke:#d62728;stroke-dasharray:4 3;stroke-width:1.2}
img.preview{image-rendering:pixelated;border:1px solid #ccc;background:#fff}
.sw{display:inline-block;width:14px;height:3px;vertical-align:middle;margin:0 3px 0 8px}.sw.band{height:9px}
nav ul{margin:4px 0;padding-left:20px}details{margin:6px 0}summary{cursor:pointer;color:#234}
.tap{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:4px 14px 10px;margin:14px 0}
summary h2,summary h3{display:inline}section.run{margin:18px 0}
ul.summary>li{margin:6px 0}ul.summary ul{margin:2px 0 4px;padding-left:18px}ul.summary ul li{margin:2px 0}
ul.summary .badge{display:inline-block;padding:0 6px;border-radius:8px;background:#f8d0d0;color:#8a1010;font-size:12px}
"""


class _Writer:
    """Collects the PNG files written next to the page."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.used: set[str] = set()
        self.files: list[Path] = []

    def image(self, run: _Run, tag: str, ev: _Image) -> tuple[str, str]:
        """(data URI, file name) of one image event; the file is written."""
        mime, ext = _image_type(ev.data)
        stem = f"{_slug(run.name, limit=40)}--{_slug(tag[len(PREFIX):], limit=110)}--step{ev.step}"
        name = _slug(stem, self.used, limit=200) + f".{ext}"
        path = self.out_dir / name
        path.write_bytes(ev.data)
        self.files.append(path)
        return f"data:{mime};base64,{base64.b64encode(ev.data).decode('ascii')}", name


_MAX_SIDE = 1 << 16  # PNG allows 2**31 - 1 in its header; no preview is that large


def _real_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the image bytes themselves (PNG / GIF headers, else Pillow's header read), or
    None when they cannot be read: an event's own width and height are not trusted (a crafted event file)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:  # the header only; no pixel is decoded
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001  (Pillow missing, or not an image it reads)
        return None


def _img_html(uri: str, fname: str, ev: _Image, tag: str, kind: str) -> str:
    real = _real_size(ev.data)
    # the sizes written into the page are the image's own, read from its bytes (an event's width and height may
    # be anything in a crafted file); none when they cannot be read
    w, h = (min(max(real[0], 0), _MAX_SIDE), min(max(real[1], 0), _MAX_SIDE)) if real else (0, 0)
    scale = max(1, min(8, 400 // max(w, h, 1))) if w else 1
    size = f' width="{w * scale}" height="{h * scale}"' if w and h else ""
    return (f'<figure><img class="preview" src="{uri}"{size} alt="{_e(tag)} at step {ev.step}" '
            f'data-kind="{_e(kind)}" data-tag="{_e(tag)}" data-step="{ev.step}" data-file="{_e(fname)}">'
            f'<figcaption><code>{_e(tag)}</code> · step {ev.step} · {w}×{h} · '
            f'<a href="{_e(fname)}" title="{_e(fname)}">file</a></figcaption></figure>')


_FINDING_HEADER = ["step", "kind", "where", "seen", "expected", "evidence", "fix"]


def _parse_findings(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a logged findings text: the blocks :func:`rangewatch.sinks.loggers.findings_markdown`
    writes (read from their JSON comments), or an older markdown table."""
    from .loggers import findings_from_markdown

    found = findings_from_markdown(text)
    if found is not None:
        return _FINDING_HEADER, [["" if f.step is None else str(f.step), f.kind, f.where, f.observed, f.expected, f.evidence, f.fix]
                                 for f in found]
    return _md_table(text)


def _findings_section(run: _Run, link: Callable[[str], str | None]) -> tuple[str, list[list[str]], list[str]]:
    if not run.findings:
        return (f'<p class="muted">No findings table was logged (<code>{FINDINGS}</code>): nothing was found, or the run logged '
                'no text.</p>'), [], []
    last = _latest(run.findings)
    parsed = _parse_findings(last.text)
    note = (f'<p class="small muted">The latest findings table (step {last.step}; '
            f'{len(run.findings)} table{"s" if len(run.findings) != 1 else ""} logged in this run, each holding every finding so far).</p>')
    if parsed is None:
        return note + f'<div class="findings-text">{_markdown(last.text)}</div>', [], []
    header, rows = parsed
    return note + _table_html(header, rows, link=link), rows, header


def _overview(run: _Run, taps: list[_Tap], finding_count: dict[str, int]) -> str:
    head = ("<tr><th>tap</th><th>channels</th><th>steps</th><th>lowest min</th><th>highest max</th>"
            "<th>latest mean per channel</th><th>non-finite (total)</th><th>max out-of-range</th><th>findings</th></tr>")
    rows = []
    for t in taps:
        steps = t.steps
        mins = [v for per in t.series.get("min", {}).values() for v in per.values()]
        maxs = [v for per in t.series.get("max", {}).values() for v in per.values()]
        means = []
        for c in t.channels:
            vals = t.values("mean", c)
            if vals:
                means.append(f"{_chan(c)} {_fmt(vals[max(vals)])}")
        nonf = sum(v for per in t.series.get("nonfinite", {}).values() for v in per.values())
        oor = [v for per in t.series.get("out_of_range", {}).values() for v in per.values()]
        nf = f'<span class="bad">{_fmt(nonf)}</span>' if nonf else "0" if "nonfinite" in t.series else "–"
        oo = (f'<span class="bad">{_pct(max(oor))}</span>' if max(oor) > 0 else _pct(0.0)) if oor else "–"
        steps_txt = (f"{len(steps)} ({steps[0]}–{steps[-1]})" if len(steps) > 1 else str(steps[0]) if steps else "–")
        nfind = finding_count.get(t.name, 0)
        rows.append(
            f'<tr data-tap="{_e(t.name)}"><td><a href="#{_e(_anchor(run, t.name))}"><code>{_e(t.name)}</code></a></td>'
            f'<td class="num">{len([c for c in t.channels if c is not None]) or "–"}</td><td>{steps_txt}</td>'
            f'<td class="num">{_fmt(min(mins)) if mins else "–"}</td><td class="num">{_fmt(max(maxs)) if maxs else "–"}</td>'
            f'<td class="small">{_e(", ".join(means)) or "–"}</td><td class="num">{nf}</td><td class="num">{oo}</td>'
            f'<td class="num">{f"<span class=bad>{nfind}</span>" if nfind else 0}</td></tr>'
        )
    return f'<table class="overview">{head}{"".join(rows)}</table>'


def _health_table(run: _Run, taps: list[_Tap]) -> str:
    head = ("<tr><th>tap</th><th>channel</th><th>non-finite total</th><th>steps with non-finite</th>"
            "<th>first at step</th><th>out-of-range latest</th><th>out-of-range max (step)</th></tr>")
    rows = []
    for t in taps:
        if "nonfinite" not in t.series and "out_of_range" not in t.series:
            continue
        for c in t.channels:
            nf, oor = t.values("nonfinite", c), t.values("out_of_range", c)
            if not nf and not oor:
                continue
            bad_steps = sorted(s for s, v in nf.items() if v)
            total = sum(nf.values())
            if oor:
                last_s = max(oor)
                peak_s = max(oor, key=lambda s: (oor[s], -s))
                latest = _pct(oor[last_s])
                peak = f'<span class="bad">{_pct(oor[peak_s])}</span> (step {peak_s})' if oor[peak_s] > 0 else _pct(0.0)
            else:
                latest = peak = "–"
            rows.append(
                f'<tr data-tap="{_e(t.name)}" data-channel="{_e(_chan(c))}"><td><code>{_e(t.name)}</code></td><td>{_chan(c)}</td>'
                f'<td class="num{" bad" if total else ""}">{_fmt(total) if nf else "–"}</td><td class="num">{len(bad_steps) if nf else "–"}</td>'
                f'<td class="num">{bad_steps[0] if bad_steps else "–"}</td><td class="num">{latest}</td><td class="num">{peak}</td></tr>'
            )
    if not rows:
        return '<p class="muted">No <code>nonfinite</code> / <code>out_of_range</code> scalars were logged.</p>'
    return (f'<table class="health">{head}{"".join(rows)}</table>'
            '<p class="small muted">non-finite: NaN/Inf values counted since the previous check step; '
            "out-of-range: share of values outside the tap's expected (or inferred) convention's bounds.</p>")


def _values_table(t: _Tap) -> str:
    steps = t.steps
    stats = [s for s in STATS if s in t.series]
    if not steps or not stats:
        return ""
    if len(steps) > 2 * _TABLE_STEPS:
        shown = steps[:_TABLE_STEPS] + [None] + steps[-_TABLE_STEPS:]
    else:
        shown = list(steps)
    head = "<tr><th>step</th><th>channel</th>" + "".join(f"<th>{s}</th>" for s in stats) + "</tr>"
    rows = []
    chans = t.channels
    for s in shown:
        if s is None:
            rows.append(f'<tr><td colspan="{2 + len(stats)}" class="muted">… {len(steps) - 2 * _TABLE_STEPS} steps not shown (see the charts) …</td></tr>')
            continue
        for c in chans:
            cells = []
            for st in stats:
                vals = t.values(st, c)
                if s in vals:
                    v = vals[s]
                    cells.append(f'<td class="num" data-stat="{st}" data-value="{v!r}">{_fmt(v)}</td>')
                else:
                    cells.append(f'<td class="num muted" data-stat="{st}">–</td>')
            rows.append(f'<tr data-step="{s}" data-channel="{_e(_chan(c))}"><td class="num">{s}</td><td>{_chan(c)}</td>{"".join(cells)}</tr>')
    opened = " open" if len(steps) <= 5 else ""
    return (f"<details{opened}><summary>values per step ({len(steps)} steps × {len(chans)} channels)</summary>"
            f'<table class="values" data-tap="{_e(t.name)}">{head}{"".join(rows)}</table></details>')


def _anchor(run: _Run, name: str) -> str:
    return "tap-" + _slug(f"{run.name}-{name}")


def _tap_section(run: _Run, t: _Tap, findings: list[list[str]], header: list[str]) -> str:
    mine = []
    if header and "where" in header:
        wi = header.index("where")
        mine = [r for r in findings if wi < len(r) and (_tap_key(r[wi]) == t.name or r[wi] == t.name)]
    label = f'{len(mine)} finding{"s" if len(mine) != 1 else ""}' if mine else "no findings"
    # a tap without findings starts collapsed (its charts are one click away)
    out = [f'<section class="tap" id="{_e(_anchor(run, t.name))}" data-tap="{_e(t.name)}">'
           f'<details{" open" if mine else ""}><summary><h3><code>{_e(t.name)}</code> '
           f'<span class="small {"bad" if mine else "muted"}">{label}</span></h3></summary>']
    if mine:
        out.append("<h4>Findings about this tap</h4>" + _table_html(header, mine))
    # per channel; the tap-wide min/max (channel "all") only when no channel was logged
    chans = [c for c in t.channels if c is not None and any(t.values(s, c) for s in _RANGE_STATS)] or [None]
    charts = [_range_chart(t, c) for c in chans if any(t.values(s, c) for s in _RANGE_STATS)]
    charts = [c for c in charts if c]
    if charts:
        out.append('<h4>Range per channel over steps</h4><p class="small muted legend">'
                   '<span class="sw" style="background:#1f77b4"></span>min <span class="sw" style="background:#d62728"></span>max '
                   '<span class="sw band" style="background:#1f77b4;opacity:.2"></span>min..max '
                   '<span class="sw" style="background:#222"></span>mean <span class="sw" style="background:#888"></span>expected range (dashed) '
                   '<span class="sw band" style="background:#2ca02c;opacity:.4"></span>mean ± std · hover a point for its value</p>')
        out.append(f'<div class="charts" data-tap="{_e(t.name)}">' + "".join(f"<figure>{c}</figure>" for c in charts) + "</div>")
    health = [
        _per_channel_chart(t, "out_of_range", f"{t.name} · out-of-range share", "max", _pct, lambda v: f"{100 * v:.3g}%"),
        _per_channel_chart(t, "nonfinite", f"{t.name} · non-finite count", "max", _fmt),
    ]
    health = [h for h in health if h]
    if health:
        out.append("<h4>Out-of-range share and non-finite values</h4>")
        out.append('<div class="charts">' + "".join(f"<figure>{h}</figure>" for h in health) + "</div>")
    if t.hists:
        out.append("<h4>Histograms (latest step)</h4>")
        figs = []
        for c in sorted(t.hists, key=lambda c: (c is not None, c or 0)):
            h = t.hists[c]
            svg = _hist_chart(h, f"{t.name} · {_chan(c)} · step {h.step}", under_over=True,
                              attrs=f'data-kind="hist" data-tap="{_e(t.name)}" data-channel="{_e(_chan(c))}" data-step="{h.step}"')
            figs.append(f"<figure>{svg}<figcaption>{_e(_hist_caption(h))}; red: below / above the histogram's range</figcaption></figure>")
        out.append('<div class="charts histograms">' + "".join(figs) + "</div>")
    out.append(_values_table(t))
    out.append("</details></section>")
    return "".join(out)


_CLAMP = re.compile(r"histogram_clamp_(-?\d+(?:\.\d+)?(?:e-?\d+)?)_(-?\d+(?:\.\d+)?(?:e-?\d+)?)$")


def _previews_section(run: _Run, w: _Writer) -> str:
    if not run.previews:
        return ('<p class="muted">No previews: no visualisation call clamped a meaningful share of values during validation '
                "(or validation did not run with RangeWatch attached).</p>")
    out = []
    for slug in sorted(run.previews):
        p = run.previews[slug]
        out.append(f'<div class="preview" data-slug="{_e(slug)}"><h4><code>{_e(slug)}</code></h4>')
        if p.texts:
            t = _latest(p.texts)
            out.append(f'<div class="finding-text">{_markdown(t.text)}</div>')
        figs = []
        for tag in sorted(p.images):
            events = sorted(p.images[tag], key=lambda e: (e.step, e.wall))
            *older, last = events
            uri, fname = w.image(run, tag, last)
            fig = _img_html(uri, fname, last, tag, "preview")
            links = []
            for ev in older:
                _, f = w.image(run, tag, ev)
                links.append(f'<a href="{_e(f)}">step {ev.step}</a>')
            if links:
                fig = fig.replace("</figcaption>", f" · earlier: {', '.join(links)}</figcaption>")
            figs.append(fig)
        if figs:
            out.append('<p class="small muted">Each row: left as the call showed it, right mapped with the convention the data follows.</p>')
            out.append('<div class="charts">' + "".join(figs) + "</div>")
        if p.hists:
            hfigs = []
            for tag in sorted(p.hists, key=_channel_sort):
                h = p.hists[tag]
                m = _CLAMP.search(tag.rsplit("/", 1)[0])
                clamp = (float(m.group(1)), float(m.group(2))) if m else None
                svg = _hist_chart(h, f"{tag.split('/', 3)[-1]} · step {h.step}", under_over=True, clamp=clamp,
                                  attrs=f'data-kind="preview-hist" data-tag="{_e(tag)}"')
                cap = _hist_caption(h) + (f"; shaded: outside [{_fmt(clamp[0])}, {_fmt(clamp[1])}], clamped by the call" if clamp else "")
                hfigs.append(f"<figure>{svg}<figcaption>{_e(cap)}</figcaption></figure>")
            out.append("<p><strong>Values passed to the call</strong></p>" + '<div class="charts histograms">' + "".join(hfigs) + "</div>")
        out.append("</div>")
    return "".join(out)


def _channel_sort(tag: str) -> tuple[str, int]:
    head, _, last = tag.rpartition("/")
    m = _CHANNEL.match(last)
    return (head, int(m.group(1)) if m else -1)


def _other_section(run: _Run, w: _Writer) -> str:
    out = []
    if run.images:
        figs = []
        for tag in sorted(run.images):
            last = _latest(run.images[tag])
            uri, fname = w.image(run, tag, last)
            figs.append(_img_html(uri, fname, last, tag, "image"))
        out.append("<h3>Images</h3>" + '<div class="charts">' + "".join(figs) + "</div>")
    if run.hists:
        figs = []
        for tag in sorted(run.hists, key=_channel_sort):
            h = run.hists[tag]
            svg = _hist_chart(h, f"{tag[len(PREFIX):]} · step {h.step}", under_over=False, attrs=f'data-kind="other-hist" data-tag="{_e(tag)}"')
            figs.append(f"<figure>{svg}<figcaption>{_e(_hist_caption(h))}</figcaption></figure>")
        out.append("<h3>Histograms (latest step)</h3>" + '<div class="charts histograms">' + "".join(figs) + "</div>")
    if run.scalars:
        figs = []
        rows = []
        for tag in sorted(run.scalars):
            evs = {}
            for e in sorted(run.scalars[tag], key=lambda e: (e.step, e.wall)):
                evs[e.step] = e.value
            xs = sorted(evs)
            figs.append("<figure>" + _line_chart(tag[len(PREFIX):], [_Line("value", _PALETTE[0], xs, [evs[x] for x in xs])],
                                                 attrs=f'data-kind="other-scalar" data-tag="{_e(tag)}"', legend=False) + "</figure>")
            rows.append(f'<tr><td><code>{_e(tag)}</code></td><td class="num">{xs[-1]}</td>'
                        f'<td class="num" data-value="{evs[xs[-1]]!r}">{_fmt(evs[xs[-1]])}</td></tr>')
        out.append("<h3>Scalars</h3>" + '<div class="charts">' + "".join(figs) + "</div>"
                   + "<table><tr><th>tag</th><th>latest step</th><th>value</th></tr>" + "".join(rows) + "</table>")
    if run.texts:
        out.append("<h3>Text</h3>")
        for tag in sorted(run.texts):
            t = _latest(run.texts[tag])
            out.append(f"<h4><code>{_e(tag)}</code> · step {t.step}</h4>{_markdown(t.text)}")
    if run.unread:
        out.append("<h3>Not shown</h3><ul>" + "".join(f"<li>{_e(k)}: <code>{_e(t)}</code></li>" for k, t in run.unread) + "</ul>")
    return "".join(out)


def _known(tag: str, kind: str) -> bool:
    """Tags of the documented layout (everything else is listed as 'other')."""
    if preview_slug(tag) is not None or tag.startswith(FINDINGS + "/") or tag == FINDINGS:
        return True
    if kind == "scalars":
        return _stat_parts(tag) is not None
    if kind == "histograms":
        return _hist_parts(tag) is not None
    return False


def _tag_list(run: _Run) -> str:
    items = []
    for kind in ("scalars", "histograms", "images", "tensors", "audio"):
        tags = run.all_tags.get(kind, [])
        if not tags:
            continue
        other = [t for t in tags if not _known(t, kind)]
        lis = "".join(f"<li><code>{_e(t)}</code>{'' if _known(t, kind) else ' <span class=small>(other)</span>'}</li>" for t in tags)
        items.append(f"<details><summary>{kind}: {len(tags)} tags{f', {len(other)} outside the documented layout' if other else ''}</summary>"
                     f"<ul class=\"tags\">{lis}</ul></details>")
    return "".join(items)


def _run_section(run: _Run, w: _Writer, idx: int) -> str:
    key = lambda t: (t.name.startswith(("val/", "val.")), t.name)  # noqa: E731
    taps = sorted(run.taps.values(), key=key)
    names = {t.name for t in taps}

    def link(where: str) -> str | None:
        for key in (where, _tap_key(where)):
            if key in names:
                return _anchor(run, key)
        return None

    findings_html, rows, header = _findings_section(run, link)
    counts: dict[str, int] = {}
    if header and "where" in header:
        wi = header.index("where")
        for r in rows:
            if wi < len(r):
                for t in taps:
                    if _tap_key(r[wi]) == t.name or r[wi] == t.name:
                        counts[t.name] = counts.get(t.name, 0) + 1
    steps = sorted({s for t in taps for s in t.steps})
    rid = f"run-{idx}"
    problems = [r for r in rows if _row_kind(header, r) not in _QUIET]
    label = f'{len(problems)} finding{"s" if len(problems) != 1 else ""}' if problems else "no findings"
    # a run without findings starts collapsed
    out = [f'<section class="run" id="{rid}" data-run="{_e(run.name)}"><details{" open" if problems else ""}>'
           f'<summary><h2>Run <code>{_e(run.name)}</code> <span class="small {"bad" if problems else "muted"}">{label}</span></h2></summary>',
           f'<p class="small muted">{_e(run.path)} · {len(taps)} tap{"s" if len(taps) != 1 else ""}'
           + (f" · steps {steps[0]}–{steps[-1]}" if steps else "") + "</p>",
           f'<h3 id="{rid}-findings">Findings</h3>', findings_html]
    # the labelled preview pairs right after the findings they illustrate
    out += [f'<h3 id="{rid}-previews">Visualisation previews</h3>', _previews_section(run, w)]
    if taps:
        out += [f'<h3 id="{rid}-taps">Taps</h3>', _overview(run, taps, counts),
                f'<h3 id="{rid}-health">Non-finite values and out-of-range share</h3>', _health_table(run, taps)]
    if taps:
        out.append(f'<h3 id="{rid}-per-tap">Per tap</h3>')
        out += [_tap_section(run, t, rows, header) for t in taps]
    other = _other_section(run, w)
    if other:
        out += [f'<h3 id="{rid}-other">Other rangewatch data</h3>', '<div class="other">', other, "</div>"]
    out += [f'<h3 id="{rid}-tags">All rangewatch tags</h3>', _tag_list(run), "</details></section>"]
    return "\n".join(out)


_QUIET = ("note", "internal")


def _row_kind(header: list[str], row: list[str]) -> str:
    i = header.index("kind") if header and "kind" in header else None
    return row[i] if i is not None and i < len(row) else ""


def _run_findings(run: _Run) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the run's latest findings text; empty when none was logged."""
    if not run.findings:
        return [], []
    parsed = _parse_findings(_latest(run.findings).text)
    return parsed if parsed is not None else ([], [])


def _summary(runs: list[_Run]) -> str:
    """The first thing on the page: per run (runs with findings first) one line per finding."""
    items = []
    for i, r in enumerate(runs):
        header, rows = _run_findings(r)
        problems = [row for row in rows if _row_kind(header, row) not in _QUIET]
        col = {h: j for j, h in enumerate(header)}

        def cell(row: list[str], name: str) -> str:
            j = col.get(name)
            return row[j] if j is not None and j < len(row) else ""

        if problems:
            lines = "".join(
                f'<li data-kind="{_e(cell(row, "kind"))}"><span class="badge">{_e(cell(row, "kind"))}</span> '
                + (_inline(cell(row, "where")) if "`" in cell(row, "where") else f'<code>{_e(cell(row, "where"))}</code>')
                + (f' · step {_e(cell(row, "step"))}' if cell(row, "step") else "")
                + f': seen {_inline(cell(row, "seen"))}' + (f', expected {_inline(cell(row, "expected"))}' if cell(row, "expected") else "")
                + f' <span class="small muted">fix: {_inline(cell(row, "fix"))}</span></li>'
                for row in problems)
            items.append(f'<li class="run-summary" data-run="{_e(r.name)}" data-findings="{len(problems)}"><a href="#run-{i}"><code>{_e(r.name)}</code></a> '
                         f'<span class="bad">{len(problems)} finding{"s" if len(problems) != 1 else ""}</span><ul>{lines}</ul></li>')
        else:
            items.append(f'<li class="run-summary" data-run="{_e(r.name)}" data-findings="0"><a href="#run-{i}"><code>{_e(r.name)}</code></a> '
                         f'<span class="muted">no findings · {len(r.taps)} taps</span></li>')
    return f'<section class="summary"><h2>Summary</h2><ul class="summary">{"".join(items)}</ul></section>'


def _has_findings(run: _Run) -> bool:
    header, rows = _run_findings(run)
    return any(_row_kind(header, row) not in _QUIET for row in rows)


# ============================================================================ shared with the TensorBoard dashboard
class _InlineWriter(_Writer):
    """Images as data URIs only (the live dashboard writes no files)."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.files: list[Path] = []

    def image(self, run: _Run, tag: str, ev: _Image) -> tuple[str, str]:
        mime, _ext = _image_type(ev.data)
        return f"data:{mime};base64,{base64.b64encode(ev.data).decode('ascii')}", ""


def event_dirs(root: Path, skip: Path | None = None) -> list[Path]:
    """The folders under ``root`` that hold TensorBoard event files (each one run)."""
    return _run_dirs(root, skip)


def read_runs(dirs: list[Path], base: Path, single: bool = False) -> tuple[list[_Run], list[_Run]]:
    """The runs in ``dirs`` (named relative to ``base``) read with TensorBoard's reader: those with rangewatch
    data, runs with findings first (by path within), and those without."""
    runs = []
    for d in dirs:
        rel = os.path.relpath(d.parent if single else d, base)
        runs.append(_read_run(d, base.name if rel == "." else rel.replace(os.sep, "/")))
    with_data = [r for r in runs if not r.empty]
    with_data.sort(key=lambda r: not _has_findings(r))  # runs with findings first (stable: by path within)
    return with_data, [r for r in runs if r.empty]


def page_body(with_data: list[_Run], without: list[_Run], w: _Writer | None = None) -> str:
    """The report's content after its title: the summary (runs with findings first, one line per finding with its
    fix), then one section per run. ``w`` None: images inline only (the TensorBoard dashboard)."""
    w = w if w is not None else _InlineWriter()
    sections = [_run_section(r, w, i) for i, r in enumerate(with_data)]
    skipped = (f'<p class="small muted">Event files without rangewatch tags: {", ".join(f"<code>{_e(r.name)}</code>" for r in without)}</p>'
               if without else "")
    return f"<nav>{_summary(with_data)}</nav>{skipped}\n" + "\n".join(sections)


#: the report's style sheet (the TensorBoard dashboard uses it too)
CSS = _CSS


# ============================================================================ entry point
@rng_kept
def build_report(logdir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of the rangewatch data under ``logdir``; returns the path of ``index.html``.

    Args:
        logdir: a TensorBoard log directory (searched recursively: every folder holding event
            files is one run) or one event file.
        out_dir: where ``index.html`` and the image files go; default ``<logdir>/rangewatch_report``.

    Raises:
        FileNotFoundError: ``logdir`` does not exist or holds no event files.
        ValueError: no event file holds rangewatch tags.

    The page is self-contained (inline CSS and SVG charts, images as data URIs); the logged images
    are also written as files next to it. Nothing is printed.
    """
    root = Path(logdir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no such log directory: {root}")
    root = root.resolve()
    single = root.is_file()
    base = root.parent if single else root
    out = (Path(out_dir).expanduser() if out_dir is not None else base / REPORT_DIRNAME).resolve()
    dirs = [root] if single and "tfevents" in root.name else [] if single else _run_dirs(root, out)
    if not dirs:
        raise FileNotFoundError(f"no TensorBoard event files under {root}: {_no_data(root)}")
    with_data, without = read_runs(dirs, base, single)
    if not with_data:
        raise ValueError(_no_data(root))
    out.mkdir(parents=True, exist_ok=True)
    from .. import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>rangewatch report: {_e(root.name)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>rangewatch report</h1><p class=\"muted small\">log directory <code>{_e(root)}</code> · "
        f"{len(with_data)} run{'s' if len(with_data) != 1 else ''} with rangewatch data · generated {now} by rangewatch {__version__}</p>"
        + page_body(with_data, without, _Writer(out)) + "\n</main></body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
