"""`rangewatch report`: the HTML page built from the event files of real short Lightning runs."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from helpers import fit as quiet
from helpers.models import ConvAutoEncoder
from rangewatch import RangeWatch
from rangewatch.sinks.report import build_report

PIL = pytest.importorskip("PIL.Image", reason="Pillow decodes the embedded previews")


class Restorer(ConvAutoEncoder):
    """vae.encoder / vae.decoder convs (taps with dots and colons); validation saves a [-1,1] preview
    with torchvision's save_image, which assumes [0, 1] (RangeWatch flags the clipping)."""

    def __init__(self, preview_dir: Path | None = None):
        super().__init__()
        self.preview_dir = preview_dir

    def validation_step(self, batch, batch_idx):
        from torchvision.utils import save_image

        save_image(batch[0] * 2 - 1, self.preview_dir / f"val_{batch_idx}.png")


def images(seed: int, n: int = 12, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def fit(root: Path, watch: RangeWatch, x: torch.Tensor, val: torch.Tensor | None, steps: int = 3) -> TensorBoardLogger:
    logger = TensorBoardLogger(root, name="tb")
    model = Restorer(root)
    quiet.fit(model, DataLoader(TensorDataset(x), batch_size=4),
              DataLoader(TensorDataset(val), batch_size=4) if val is not None else None,
              callbacks=[watch], logger=logger, max_steps=steps, limit_val_batches=1 if val is not None else 0)
    return logger


def reader(log_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


class Page(HTMLParser):
    """Elements with their attributes, the page's text, and the values tables' cells."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict, str | None]] = []  # (tag, attributes, run section)
        self.chunks: list[str] = []
        self.run_chunks: dict[str | None, list[str]] = {}
        self.cells: dict[tuple[str, str, int, str, str], tuple[float, str]] = {}  # (run, tap, step, channel, stat)
        self._run = self._tap = self._row = self._cell = None
        self.feed(text)
        self.text = "".join(self.chunks)
        self.run_text = {r: "".join(c) for r, c in self.run_chunks.items()}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-run" in a:
            self._run = a["data-run"]
        self.elements.append((tag, a, self._run))
        if tag == "table" and "values" in (a.get("class") or ""):
            self._tap = a["data-tap"]
        elif tag == "tr":
            self._row = a
        elif tag == "td" and self._tap is not None and "data-value" in a:
            self._cell = (a, [])

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            a, buf = self._cell
            key = (self._run, self._tap, int(self._row["data-step"]), self._row["data-channel"], a["data-stat"])
            self.cells[key] = (float(a["data-value"]), "".join(buf))
            self._cell = None
        elif tag == "table":
            self._tap = None

    def handle_data(self, data):
        self.chunks.append(data)
        self.run_chunks.setdefault(self._run, []).append(data)
        if self._cell is not None:
            self._cell[1].append(data)

    def find(self, tag: str, run: str | None = None, **attrs) -> list[dict]:
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a, r in self.elements
                if t == tag and (run is None or r == run) and all(a.get(k) == v for k, v in want.items())]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    # run 1 (tb/version_0): [0,1] images where [-1,1] is declared, one NaN at step 1, a clipping preview
    x = images(0)
    x[5, 1, 3, 4] = float("nan")
    # the raw per-channel scalars and every histogram (the compact default: tests/sinks/test_ux_report.py)
    w1 = RangeWatch(expect={"batch[0]": "symmetric"}, modules=["vae.encoder"], policy="log", log_every_n_steps=1,
                    per_channel_scalars=True, histograms="all")
    lg1 = fit(root, w1, x, images(1, n=4))
    # run 2 (tb/version_1): values a little outside [0, 1] where [0, 1] is declared: out-of-range share > 0
    # (15% of the values outside [0, 1]: a warning that names the causes of spill, no conversion to apply)
    w2 = RangeWatch(expect={"batch[0]": "unit"}, policy="log", log_every_n_steps=1, watch_validation=False,
                    per_channel_scalars=True, histograms="all")
    lg2 = fit(root, w2, images(2) * 1.2 - 0.1, None, steps=2)
    # run 3 (other/): tags rangewatch does not write today (latents, new kinds) and a tag of someone else
    from torch.utils.tensorboard import SummaryWriter

    other = root / "other"
    with SummaryWriter(str(other)) as sw:
        img = torch.linspace(0, 1, 3 * 8 * 12).reshape(3, 8, 12)
        sw.add_image("rangewatch/latent/unet:input/latent_preview", img, 5)
        sw.add_histogram_raw("rangewatch/latent/unet:input/latent_channel_0", min=-3.0, max=3.5, num=10, sum=1.0, sum_squares=20.0,
                             bucket_limits=[-2.0, 0.0, 2.0, 3.5], bucket_counts=[1, 4, 4, 1], global_step=5)
        sw.add_scalar("rangewatch/latent/unet:input/scale_ratio", 0.18215, 5)
        sw.add_text("rangewatch/notes", "a **note** with `code`", 5)
        sw.add_scalar("loss", 1.0, 5)
    return root, (w1, lg1, x), (w2, lg2)


@pytest.fixture(scope="module")
def report(logs):
    root = logs[0]
    index = build_report(root)
    return index, Page(index.read_text(encoding="utf-8"))


def scalar_taps(acc) -> dict[str, set[int]]:
    """tap -> channels, parsed from the right (taps keep dots, brackets and colons)."""
    taps: dict[str, set[int]] = {}
    for t in acc.Tags()["scalars"]:
        m = re.fullmatch(r"rangewatch_channels/(.+)/(min|max|mean|std|nonfinite|out_of_range)/c(\d+)", t)
        if m:
            taps.setdefault(m.group(1), set()).add(int(m.group(3)))
    return taps


@pytest.mark.slow
def test_index_and_one_section_per_run(logs, report, capsys):
    root, (w1, lg1, _), (w2, lg2) = logs
    index, page = report
    assert index == root / "rangewatch_report" / "index.html" and index.is_file()
    runs = [a["data-run"] for a in page.find("section", **{"class": "run"})]
    assert runs == ["tb/version_0", "tb/version_1", "other"]  # the runs with findings first, then by path
    # an explicit out dir; nothing printed
    out = build_report(lg1.log_dir, root / "elsewhere")
    assert out == root / "elsewhere" / "index.html" and out.is_file()
    assert capsys.readouterr() == ("", "")
    assert [a["data-run"] for a in Page(out.read_text()).find("section", **{"class": "run"})] == ["version_0"]


@pytest.mark.slow
def test_every_tap_charted_per_channel(logs, report):
    root, (w1, lg1, _), (w2, lg2) = logs
    _, page = report
    for run, lg in (("tb/version_0", lg1), ("tb/version_1", lg2)):
        taps = scalar_taps(reader(lg.log_dir))
        assert taps
        for tap, chans in taps.items():
            assert tap in page.text
            charts = page.find("svg", run, data_kind="range", data_tap=tap)
            assert sorted(a["data-channel"] for a in charts) == sorted(f"c{c}" for c in chans), tap
            if any(t.startswith(f"rangewatch_channels/{tap}/out_of_range/") for t in reader(lg.log_dir).Tags()["scalars"]):
                assert page.find("svg", run, data_kind="out_of_range", data_tap=tap)
    taps1 = scalar_taps(reader(lg1.log_dir))
    assert {"batch[0]", "val.batch[0]", "vae.encoder:input"} <= set(taps1)
    assert taps1["vae.encoder:input"] == {0, 1, 2}
    assert page.find("svg", "tb/version_0", data_kind="nonfinite", data_tap="batch[0]")  # the NaN
    # run 2 saw values outside the declared [0, 1]: its out-of-range share is in the health table, marked
    oor = reader(lg2.log_dir).Scalars("rangewatch_channels/batch[0]/out_of_range/c0")
    assert oor[0].value > 0
    rows = page.find("tr", "tb/version_1", data_tap="batch[0]", data_channel="c0")
    assert rows


@pytest.mark.slow
def test_values_in_tables_equal_event_values(logs, report):
    root, (w1, lg1, x), (w2, lg2) = logs
    _, page = report
    acc = reader(lg1.log_dir)
    # the truth: channel 0's minimum over the first batch
    run = "tb/version_0"
    assert page.cells[(run, "batch[0]", 0, "c0", "min")][0] == pytest.approx(float(x[:4, 0].min()), abs=1e-7)
    checked = 0
    for tag in acc.Tags()["scalars"]:
        m = re.fullmatch(r"rangewatch_channels/(.+)/(min|max|mean|std|nonfinite|out_of_range)/c(\d+)", tag)
        if m is None:  # findings counts, expected bounds: not in the per-channel values tables
            continue
        for ev in acc.Scalars(tag):
            value, text = page.cells[(run, m.group(1), ev.step, f"c{m.group(3)}", m.group(2))]
            assert value == ev.value
            assert text == (str(int(ev.value)) if ev.value == int(ev.value) else f"{ev.value:.6g}")
            checked += 1
    assert checked >= 3 * 6 * 3  # batch[0]: 3 steps x 6 stats x 3 channels at least
    assert page.cells[(run, "batch[0]", 1, "c1", "nonfinite")] == (1.0, "1")


@pytest.mark.slow
def test_findings_table_has_where_and_fix(logs, report):
    root, (w1, lg1, _), (w2, lg2) = logs
    _, page = report
    kinds = {f.kind for f in w1.findings}
    assert {"mismatch", "clipping", "nonfinite"} <= kinds, w1.findings
    # 15% of the values beyond [0, 1]: one warning, no conversion to apply (the data fit no single convention)
    assert [(f.kind, f.where, f.severity) for f in w2.findings] == [("mismatch", "batch[0]", "warning")], w2.findings
    assert "apply" not in w2.findings[0].fix.split(".")[0] and "look for what spills the values" in w2.findings[0].fix
    assert "No findings table was logged" in page.run_text["other"]
    assert "No findings table was logged" not in page.run_text["tb/version_0"]
    rows = page.find("tr", data_kind="clipping")
    assert rows
    for f in w1.findings + w2.findings:
        for part in (f.where, f.fix, f.evidence):
            assert part.replace("`", "") in page.text, part
    # markdown code spans become <code>
    clip = next(f for f in w1.findings if f.kind == "clipping")
    assert "<code>save_image</code>" in report[0].read_text()
    assert "save_image((x + 1) / 2, ...)" in clip.fix


@pytest.mark.slow
def test_preview_embedded_pixel_equal_to_event_image(logs, report):
    root, (w1, lg1, x), _ = logs
    index, page = report
    acc = reader(lg1.log_dir)
    tags = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/")]
    assert len(tags) == 1 and "corrected_symmetric" in tags[0]
    ev = acc.Images(tags[0])[-1]
    imgs = page.find("img", data_kind="preview", data_tag=tags[0])
    assert len(imgs) == 1
    src = imgs[0]["src"]
    assert src.startswith("data:image/png;base64,")
    blob = base64.b64decode(src.split(",", 1)[1])
    embedded = np.asarray(PIL.open(io.BytesIO(blob)).convert("RGB"))
    logged = np.asarray(PIL.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(embedded, logged)
    # also written as a PNG file next to the page
    f = index.parent / imgs[0]["data-file"]
    assert f.suffix == ".png" and f.read_bytes() == ev.encoded_image_string
    # the corrected panel (right) shows the validation images as they are: x in [0, 1]
    val = images(1, n=4)
    from rangewatch.visualization import Preview

    corrected = Preview.unlabel(logged, 16)[2:18, 20:36].astype(float)  # the labelled, enlarged pair -> make_grid's
    np.testing.assert_allclose(corrected, val[0].permute(1, 2, 0).numpy() * 255, atol=1.0)
    assert "Values passed to the call" in page.text and page.find("svg", data_kind="preview-hist")


@pytest.mark.slow
def test_histograms_latest_step(logs, report):
    root, (w1, lg1, _), _ = logs
    _, page = report
    acc = reader(lg1.log_dir)
    assert "Histograms (latest step)" in page.text
    for c in range(3):
        evs = acc.Histograms(f"rangewatch/batch[0]/hist/c{c}")
        last = max(evs, key=lambda e: e.step)
        svgs = page.find("svg", "tb/version_0", data_kind="hist", data_tap="batch[0]", data_channel=f"c{c}")
        assert len(svgs) == 1 and svgs[0]["data-step"] == str(last.step)
    # the bars' tooltips add up to the histogram's count
    html = page.text
    h = max(acc.Histograms("rangewatch/batch[0]/hist/c0"), key=lambda e: e.step).histogram_value
    assert h.num == 4 * 16 * 16
    assert f"n = {int(h.num)}" in html


@pytest.mark.slow
def test_other_rangewatch_tags_shown(report):
    _, page = report
    imgs = page.find("img", data_kind="image", data_tag="rangewatch/latent/unet:input/latent_preview")
    assert len(imgs) == 1
    got = np.asarray(PIL.open(io.BytesIO(base64.b64decode(imgs[0]["src"].split(",", 1)[1]))))
    assert got.shape == (8, 12, 3)
    assert page.find("svg", data_kind="other-hist", data_tag="rangewatch/latent/unet:input/latent_channel_0")
    assert page.find("svg", data_kind="other-scalar", data_tag="rangewatch/latent/unet:input/scale_ratio")
    assert "0.18215" in page.text and "a note with code" in page.text
    assert "loss" not in [a.get("data-tag") for _, a, _ in page.elements]


def test_no_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such log directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        build_report(tmp_path)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "run")) as sw:
        sw.add_scalar("loss", 1.0, 0)
    with pytest.raises(ValueError, match="no rangewatch data under .*: run training with RangeWatch and a TensorBoardLogger"):
        build_report(tmp_path)
    assert not (tmp_path / "rangewatch_report").exists()
