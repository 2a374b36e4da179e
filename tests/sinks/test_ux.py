"""What users see in TensorBoard and on the console (issue 15): real Lightning runs, event files read
back with TensorBoard's own reader, the custom-scalars layout parsed from its proto, the findings
text rendered with TensorBoard's own markdown sanitiser."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from helpers import fit as quiet
from helpers.ux import EXPECT, Net, Pairs, fit
from helpers.photos import photo_batch
from rangewatch import Finding, RangeWatch
from rangewatch.sinks.loggers import (FINDINGS_CATEGORY, FLAGGED_CATEGORY, OTHER_CATEGORY, detail_tag, findings_from_markdown,
                                      findings_markdown, tag)


def accumulator(logdir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def layout_of(acc):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from tensorboard.util import tensor_util

    events = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    last = max(events, key=lambda e: e.step)
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(last.tensor_proto).item())
    return layout


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ux")
    w = RangeWatch(expect=EXPECT, policy="log")
    lg = fit(tmp, w)
    return w, lg, accumulator(lg.log_dir)


@pytest.mark.slow
def test_default_scalars_are_compact(default_run):
    w, lg, acc = default_run
    scalars = set(acc.Tags()["scalars"])
    for tap in ("batch.lq", "batch.gt"):
        # the default group: three cards per tap
        mine = {t for t in scalars if t.startswith(f"rangewatch/{tap}/")}
        assert mine == {tag(tap, "min"), tag(tap, "max"), tag(tap, "out_of_range")}, mine
        # the per-channel detail in its own group
        detail = {t for t in scalars if t.startswith(f"rangewatch_channels/{tap}/")}
        want = {detail_tag(tap, s, c) for s in ("min", "max", "mean") for c in range(3)}
        want |= {detail_tag(tap, "nonfinite"), detail_tag(tap, "expected_min"), detail_tag(tap, "expected_max")}
        assert detail == want, (tap, detail ^ want)
    # values against numpy: the first batch (step 0) of lq
    x = Pairs().lq[:4].double().numpy()
    assert acc.Scalars(detail_tag("batch.lq", "min", 1))[0].value == pytest.approx(x[:, 1].min(), abs=1e-6)
    assert acc.Scalars(detail_tag("batch.lq", "mean", 2))[0].value == pytest.approx(x[:, 2].mean(), abs=1e-5)
    assert acc.Scalars(tag("batch.lq", "min"))[0].value == pytest.approx(x.min(), abs=1e-6)  # over the channels
    assert acc.Scalars(tag("batch.lq", "max"))[0].value == pytest.approx(x.max(), abs=1e-6)
    assert acc.Scalars(detail_tag("batch.lq", "expected_min"))[0].value == -1.0
    assert acc.Scalars(detail_tag("batch.lq", "expected_max"))[0].value == 1.0
    # unit data against [-1, 1] bounds: nothing is outside; the [-1, 1] gt neither
    assert acc.Scalars(tag("batch.lq", "out_of_range"))[0].value == 0.0
    assert acc.Scalars(detail_tag("batch.gt", "nonfinite"))[0].value == 0.0


@pytest.mark.slow
def test_findings_count_per_kind(default_run):
    w, lg, acc = default_run
    kinds = sorted({f.kind for f in w.findings if f.kind not in ("note", "internal")})
    assert kinds == ["mismatch"]
    total = acc.Scalars("rangewatch/findings/total")
    assert [e.value for e in total][-1] == 1.0 == acc.Scalars("rangewatch/findings/mismatch")[-1].value
    assert total[0].step == 0 and total[0].value == 1.0  # shows from the first check step


@pytest.mark.slow
def test_histograms_only_for_flagged_taps(default_run):
    w, lg, acc = default_run
    assert [f.where for f in w.findings if f.kind == "mismatch"] == ["batch.lq"]
    assert sorted(acc.Tags()["histograms"]) == [tag("batch.lq", "hist", c) for c in range(3)]


@pytest.mark.slow
def test_layout_flagged_taps_first(default_run):
    w, lg, acc = default_run
    layout = layout_of(acc)
    titles = [c.title for c in layout.category]
    assert titles == [FINDINGS_CATEGORY, FLAGGED_CATEGORY, OTHER_CATEGORY]
    assert [c.closed for c in layout.category] == [False, False, True]  # healthy taps start closed
    assert [c.title.split(":")[0] for c in layout.category[1].chart] == ["batch.lq"] * 2
    assert [c.title.split(":")[0] for c in layout.category[2].chart] == ["batch.gt"] * 2
    scalars = set(acc.Tags()["scalars"])
    for cat in layout.category[1:]:
        for margin_chart, rates in zip(cat.chart[::2], cat.chart[1::2]):  # a tap is two cards
            margin = margin_chart.margin
            assert len(margin.series) == 3 + 1  # per channel mean with min..max, plus the expected band
            for s in margin.series:
                assert {s.value, s.lower, s.upper} <= scalars  # every tag the layout names exists
            pattern = re.compile(rates.multiline.tag[0])
            tap = margin_chart.title.split(":")[0]
            assert {t for t in scalars if pattern.search(t)} == {detail_tag(tap, "nonfinite"), tag(tap, "out_of_range")}
    total_chart, findings_chart = layout.category[0].chart
    assert [(s.value, s.lower, s.upper) for s in total_chart.margin.series] == [("rangewatch/findings/total",) * 3]  # unsmoothed
    assert {t for t in scalars if re.search(findings_chart.multiline.tag[0], t)} == {"rangewatch/findings/total", "rangewatch/findings/mismatch"}


@pytest.mark.slow
def test_findings_text_is_blocks_not_a_table(default_run):
    from tensorboard import plugin_util
    from tensorboard.util import tensor_util

    w, lg, acc = default_run
    ev = max(acc.Tensors("rangewatch/findings/text_summary"), key=lambda e: e.step)
    text = tensor_util.make_ndarray(ev.tensor_proto).item().decode()
    html = plugin_util.markdown_to_safe_html(text)  # what TensorBoard's text tab shows
    assert "<table" not in html and "rangewatch-finding" not in html  # no table; the JSON comment is hidden
    (f,) = [f for f in w.findings if f.kind == "mismatch"]
    assert f"<h4>mismatch: <code>{f.where}</code>, step {f.step}</h4>" in html
    fix_html = f.fix.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert f"<pre><code>{fix_html}" in html  # the fix as code
    assert findings_from_markdown(text) == [g for g in w.findings if g.kind not in ("note", "internal")] + [
        g for g in w.findings if g.kind in ("note", "internal")]


def test_findings_markdown_round_trip_with_awkward_text():
    f = Finding("clipping", "validation preview `tensor2img` (a | b)", "sym--metric", "unit -->", "ev with `ticks` and -- dashes",
                "x = (x + 1) / 2  # then tensor2img(x)\nsecond line", step=3, source="declared")
    text = findings_markdown([f, Finding("note", "batch.mask", "bool", "", "not image-like", "")])
    assert findings_from_markdown(text) == [f, Finding("note", "batch.mask", "bool", "", "not image-like", "")]
    assert text.splitlines()[0] == "**1 finding** (1 clipping, 1 note)" or text.startswith("**2 findings**")
    assert findings_from_markdown("| step | kind |\n|---|---|\n| 0 | mismatch |") is None  # an old table
    assert findings_from_markdown(findings_markdown([])) == []


@pytest.mark.slow
def test_raw_per_channel_scalars_and_all_histograms_behind_options(tmp_path):
    w = RangeWatch(expect=EXPECT, policy="log", per_channel_scalars=True, histograms="all")
    acc = accumulator(fit(tmp_path, w, steps=2).log_dir)
    scalars = set(acc.Tags()["scalars"])
    for tap in ("batch.lq", "batch.gt"):
        assert {detail_tag(tap, s, c) for s in ("min", "max", "mean", "std", "nonfinite", "out_of_range") for c in range(3)} <= scalars
    assert sorted(acc.Tags()["histograms"]) == sorted(tag(t, "hist", c) for t in ("batch.lq", "batch.gt") for c in range(3))
    x = Pairs().gt[:4].double().numpy()
    assert acc.Scalars(detail_tag("batch.gt", "std", 0))[0].value == pytest.approx(x[:, 0].std(), abs=1e-5)


@pytest.mark.slow
def test_histograms_off(tmp_path):
    w = RangeWatch(expect=EXPECT, policy="log", histograms=False)
    assert accumulator(fit(tmp_path, w, steps=2).log_dir).Tags()["histograms"] == []


def test_option_errors_name_the_option():
    from rangewatch import ConfigError

    with pytest.raises(ConfigError, match="histograms"):
        RangeWatch(histograms="some")
    with pytest.raises(ConfigError, match="per_channel_scalars"):
        RangeWatch(per_channel_scalars="yes")


@pytest.mark.slow
def test_console_says_once_what_is_watched_and_ends_with_a_summary(tmp_path, caplog):
    w = RangeWatch(expect=EXPECT, policy="log", check_first_n=2)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, w, steps=6, val=True)  # several validations
    text = caplog.text
    assert text.count("rangewatch: watching") == 1
    block = text[text.index("rangewatch: watching"):]
    assert "watching 2 taps (checked at the first 2 batches, then every 2 steps)" in block
    assert re.search(r"batch\.lq +3 ch  expects symmetric\n", block)
    # where each expectation comes from: said once, at fit start
    assert text.count("rangewatch expectations") == 1
    assert "batch.lq: symmetric (declared in RangeWatch(expect={'batch.lq': 'symmetric'}))" in text
    summary = [ln for ln in text.splitlines() if "checked over" in ln]
    assert len(summary) == 1
    taps = sum(1 for t in w.taps.values() if t.steps_checked)  # train and validation taps
    mismatches = [f.where for f in w.findings if f.kind == "mismatch"]
    assert sorted(mismatches) == ["batch.lq", "val/batch.lq"]
    assert summary[0].endswith(f"rangewatch: {taps} taps checked over 6 training batches: 2 findings (2 mismatch)")


@pytest.mark.slow
def test_summary_line_without_findings(tmp_path, caplog):
    w = RangeWatch(expect={"batch.gt": "symmetric"}, policy="log", batch_keys=["batch.gt"])
    with caplog.at_level(logging.INFO):
        fit(tmp_path, w, steps=2)
    assert "rangewatch: 1 tap checked over 2 training batches: no findings" in caplog.text


@pytest.mark.slow
def test_watching_lists_what_is_not_watched(tmp_path, caplog):
    class WithMask(Net):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 3)

        def training_step(self, batch, batch_idx):
            self.embed(torch.zeros(2, dtype=torch.long))
            return super().training_step(batch, batch_idx)

    w = RangeWatch(expect=EXPECT, modules=["embed"], policy="log")
    logger = TensorBoardLogger(tmp_path, name="tb")
    with caplog.at_level(logging.INFO):
        quiet.fit(WithMask(), DataLoader(Pairs(), batch_size=4), callbacks=[w], logger=logger, max_steps=1)
    assert "not watched: embed:input (not an image-like tensor)" in caplog.text


# ------------------------------------------------------------------------------ images
def test_preview_pair_labelled_inside_the_image():
    from rangewatch import watch_visualization
    from rangewatch.visualization import Preview

    import io

    import torchvision.utils as tvu  # module attributes are observed (a name imported earlier would not be)

    x = photo_batch(2, 40).float() / 127.5 - 1
    with watch_visualization(warn=False, max_preview_images=2) as w:
        tvu.save_image(x, io.BytesIO(), format="png")
    (p,) = w.pop_previews()
    left, right = p.labels()
    assert left == "as logged: save_image x * 255 clamped to 0..255" and right == "corrected: read as symmetric ([-1,1])"
    img = p.build_labelled().numpy()
    k = Preview.label_scale(40)
    assert k == 7 and 40 * k >= Preview.LABEL_MIN_WIDTH
    raw = p.build().numpy()
    # below the strip: the plain grid, enlarged k times by pixel repetition (numpy)
    np.testing.assert_array_equal(img[:, Preview.label_height(40):], np.repeat(np.repeat(raw, k, 1), k, 2))
    strip = img[:, : Preview.label_height(40)]
    half = strip.shape[2] // 2
    inked = (strip < 200).any(0)
    assert inked[:, :half].sum() > 100 and inked[:, half:].sum() > 100  # text over both columns
    assert strip[0][:, :half][inked[:, :half]].mean() > strip[1][:, :half][inked[:, :half]].mean()  # left in red
    assert strip[1][:, half:][inked[:, half:]].mean() > strip[0][:, half:][inked[:, half:]].mean()  # right in green


def test_tensor2img_labels():
    from rangewatch.cli.demo import has_package

    if not has_package("basicsr"):
        pytest.skip("basicsr is not installed")
    from rangewatch import watch_visualization
    from rangewatch.compat.basicsr import import_basicsr

    import_basicsr()
    import basicsr.utils as bu

    x = photo_batch(1, 32).float()[0] / 127.5 - 1
    with watch_visualization(warn=False) as w:
        bu.tensor2img(x)
    (p,) = w.pop_previews()
    assert p.labels() == ("as logged: tensor2img the default min_max=(0, 1)", "corrected: min_max=(-1, 1)")


def test_latent_preview_enlarged(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from rangewatch import LatentMonitor, latent_preview, log_latents

    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    mon = LatentMonitor("sdxl_latent", preview_samples=2)
    mon.update(z)
    with SummaryWriter(str(tmp_path)) as sw:
        log_latents(sw, "unet", mon, step=0)
    (ev,) = accumulator(str(tmp_path)).Images("rangewatch/unet/latent_preview")
    k = 6  # 32 px -> 192 px per image
    assert (ev.height, ev.width) == (32 * k + 4, 2 * 32 * k + 6)  # make_grid, padding 2
    from io import BytesIO

    from PIL import Image

    pix = np.asarray(Image.open(BytesIO(ev.encoded_image_string)).convert("RGB")).astype(np.float64) / 255
    expected = latent_preview(z, "sdxl_latent").numpy()[0].transpose(1, 2, 0)
    np.testing.assert_allclose(pix[2:2 + 32 * k, 2:2 + 32 * k], np.repeat(np.repeat(expected, k, 0), k, 1), atol=1 / 255 + 1e-6)


def test_demo_latents_preview_is_the_photo():
    """The demo's latents are made so that their linear RGB preview is the photo (least squares)."""
    from rangewatch.expect.conventions import get_convention
    from rangewatch.cli.demo import PhotoLatents
    from rangewatch.cli.photos import load_photos

    conv = get_convention("sdxl_latent")
    ds = PhotoLatents(32)
    z = ds.z_vae * conv.scale  # what the pipeline should have fed
    z[:, 0] -= 0.4  # without the demo's yellow lean
    f, bias = np.array(conv.latent_rgb), np.array(conv.latent_rgb_bias)
    rgb = np.einsum("nchw,ck->nkhw", z.double().numpy(), f) + bias[None, :, None, None]
    photo = load_photos(32).double().numpy() / 127.5 - 1
    np.testing.assert_allclose(rgb, photo, atol=1e-4)
    assert 0.5 < float(z.std()) < 2  # latent-like scale once scaled
