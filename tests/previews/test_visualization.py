"""Clipping at visualisation: torchvision save_image / make_grid and TensorBoard add_image(s)
observed for real, previews written to and read back from real event files."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest
import torch
import torchvision.utils as tvu
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms.v2 import functional as TF

from helpers.events import decode_png, panel, read_events
from helpers.photos import as_tensor
from rangewatch.findings.finding import Finding
from rangewatch.visualization import (
    Preview,
    VisRecord,
    VisualizationWarning,
    VisualizationWatch,
    is_patched,
    log_previews,
    watch_visualization,
)

# kept in a dict: a module attribute whose value is the original function is patched too
# (that is how `from torchvision.utils import make_grid` in user code is observed)
ORIG = {"make_grid": tvu.make_grid, "save_image": tvu.save_image,
        "add_image": SummaryWriter.add_image, "add_images": SummaryWriter.add_images}


def photo_u8(name: str = "astronaut", size: int = 48) -> torch.Tensor:
    """(3, size, size) uint8 real photo."""
    return TF.center_crop(as_tensor(name, max_side=size * 3 // 2), [size, size]).contiguous()


def batch_u8(names=("astronaut", "coffee"), size: int = 48) -> torch.Tensor:
    return torch.stack([photo_u8(n, size) for n in names])


def to_sym(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255 * 2 - 1


def to_unit(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255


def assert_restored() -> None:
    assert not is_patched()
    assert tvu.make_grid is ORIG["make_grid"] and tvu.save_image is ORIG["save_image"]
    assert SummaryWriter.add_image is ORIG["add_image"] and SummaryWriter.add_images is ORIG["add_images"]
    assert sys.modules[__name__].__dict__["tvu"].make_grid is ORIG["make_grid"]


# ----------------------------------------------------------------------------- save_image
def test_save_image_of_symmetric_data_is_flagged_and_file_is_unchanged(tmp_path):
    x = to_sym(batch_u8())
    ORIG["save_image"](x, tmp_path / "plain.png")
    with watch_visualization(warn=False, context="validation preview") as w:
        tvu.save_image(x, tmp_path / "watched.png")
    assert_restored()
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "watched.png").read_bytes()

    assert len(w.findings) == 1
    f = w.findings[0]
    assert f.kind == "clipping" and "`save_image`" in f.where and "validation preview" in f.where
    assert "save_image((x + 1) / 2" in f.fix and "value_range=(-1, 1)" in f.fix
    assert "symmetric" in f.observed and f.step is None
    (rec,) = w.records
    assert rec.call == "save_image" and rec.assumed_range == (0.0, 1.0) and rec.convention == "symmetric"
    # independent count: what save_image clamps below 0 / above 1
    xn = x.numpy()
    assert rec.below_fraction == pytest.approx((xn < 0).mean(), abs=1e-9)
    assert rec.above_fraction == pytest.approx((xn > 1).mean(), abs=1e-9)
    assert rec.message.startswith("validation preview `save_image`") and "clamps" in rec.message and "to black" in rec.message


def test_save_image_with_value_range_is_fine_and_normalize_without_range_is_a_note(tmp_path):
    x = to_sym(batch_u8())
    with watch_visualization(warn=False) as w:
        tvu.save_image(x, tmp_path / "ok.png", normalize=True, value_range=(-1, 1))
        tvu.save_image((x + 1) / 2, tmp_path / "ok2.png")
    assert w.findings == [] and len(w.records) == 2 and all(not r.flagged for r in w.records)
    with watch_visualization(warn=False) as w:
        tvu.save_image(x, tmp_path / "stretch.png", normalize=True)
    (f,) = w.findings
    assert f.kind == "note" and f.severity == "info" and "hides the data's real range" in f.evidence
    assert "value_range=(-1, 1)" in f.fix


def test_imagenet_normalised_data_gets_a_denormalise_fix(tmp_path):
    from rangewatch.expect.conventions import get_convention

    x = get_convention("imagenet").from_unit(to_unit(batch_u8()))
    with watch_visualization(warn=False) as w:
        tvu.save_image(x, tmp_path / "a.png")
    (f,) = w.findings
    assert f.kind == "clipping" and "imagenet" in f.observed
    assert "x * std + mean" in f.fix and "0.485" in f.fix


# ----------------------------------------------------------------------------- make_grid
def test_make_grid_results_are_bit_identical_and_normalize_note():
    x = to_sym(batch_u8())
    calls = [dict(), dict(normalize=True), dict(normalize=True, value_range=(0, 1)), dict(normalize=True, scale_each=True)]
    expected = [ORIG["make_grid"](x.clone(), **kw) for kw in calls]
    with watch_visualization(warn=False) as w:
        got = [tvu.make_grid(x.clone(), **kw) for kw in calls]
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    kinds = sorted(f.kind for f in w.findings)
    # normalize=True (twice: two call sites) -> notes; value_range=(0, 1) on [-1,1] -> clipping
    assert kinds == ["clipping", "note", "note"]
    clip = next(f for f in w.findings if f.kind == "clipping")
    assert "make_grid(x, normalize=True, value_range=(-1, 1))" in clip.fix
    plain = w.records[0]
    assert plain.mode == "none" and plain.summary is None and not plain.flagged  # no clamp, nothing measured


def test_make_grid_note_on_symmetric_data():
    x = to_sym(batch_u8())
    with watch_visualization(warn=False) as w:
        grid = tvu.make_grid(x, normalize=True)
    assert torch.equal(grid, ORIG["make_grid"](x, normalize=True))
    (f,) = w.findings
    assert f.kind == "note" and "`make_grid`" in f.where and "symmetric" in f.evidence
    assert "min/max" in f.evidence and "value_range=(-1, 1)" in f.fix


# ----------------------------------------------------------------------------- add_image(s)
def test_add_image_of_uint8_and_unit_data_is_fine_and_unchanged(tmp_path):
    u8 = photo_u8()
    b = batch_u8()
    entries = [("u8", u8, {}), ("unit", to_unit(u8), {}), ("hwc", to_unit(u8).permute(1, 2, 0).numpy(), {"dataformats": "HWC"}),
               ("gray", to_unit(u8[0]), {"dataformats": "HW"})]
    plain = SummaryWriter(tmp_path / "plain")
    for tag, img, kw in entries:
        plain.add_image(tag, img, 0, **kw)
    plain.add_images("batch", to_unit(b), 0)
    plain.close()
    with watch_visualization() as w:  # warnings on: there must be none
        watched = SummaryWriter(tmp_path / "watched")
        for tag, img, kw in entries:
            watched.add_image(tag, img, 0, **kw)
        watched.add_images("batch", to_unit(b), 0)
        watched.close()
    assert_restored()
    assert w.findings == []
    assert [r.call for r in w.records] == ["add_image"] * 4 + ["add_images"]
    assert w.records[0].mode == "none" and w.records[0].assumption.startswith("uint8")
    assert [r.convention for r in w.records[1:]] == ["unit"] * 4
    a, b_ = read_events(tmp_path / "plain"), read_events(tmp_path / "watched")
    for tag in ["u8", "unit", "hwc", "gray", "batch"]:
        assert a.Images(tag)[0].encoded_image_string == b_.Images(tag)[0].encoded_image_string


def test_add_image_of_symmetric_data_preview_matches_numpy(tmp_path):
    """[-1,1] data through add_image: finding, and the preview read back from the event file
    equals an independent numpy computation of both panels."""
    b = batch_u8(("astronaut", "coffee", "chelsea"))
    x = to_sym(b)
    writer = SummaryWriter(tmp_path)
    with watch_visualization(warn=False, max_preview_images=2) as w:
        for step in (5, 6):  # one call site twice: one finding; the preview is full after the first
            writer.add_images("val/outputs", x, step)
    assert len(w.findings) == 1 and len(w.records) == 2 and all(r.flagged for r in w.records)
    f = w.findings[0]
    assert f.kind == "clipping" and "`add_images`" in f.where and "pass `(x + 1) / 2` to `add_images`" in f.fix
    tags = log_previews(writer, w.records[0], step=7)
    assert log_previews(writer, f, step=8) == tags  # a finding finds its record's preview too
    writer.close()
    image_tag = tags[0]
    assert image_tag == "rangewatch/preview/add_images_in_test_add_image_of_symmetric_data_preview_matches_numpy/broken_unit_0_1-vs-corrected_symmetric"

    acc = read_events(tmp_path)
    h = w_ = 48
    grid = Preview.unlabel(decode_png(acc.Images(image_tag)[0].encoded_image_string), w_)  # labelled, enlarged -> make_grid's
    assert grid.shape == (2 + 2 * (h + 2), 2 + 2 * (w_ + 2), 3)
    xn = x.numpy().transpose(0, 2, 3, 1)
    for i in range(2):  # max_preview_images=2
        broken_np = np.floor(np.clip(xn[i] * 255, 0, 255)).astype(np.uint8)  # TensorBoard's float conversion
        corrected_np = np.round(np.clip((xn[i] + 1) / 2, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(panel(grid, i, 0, h, w_), broken_np)
        assert np.abs(panel(grid, i, 1, h, w_).astype(int) - corrected_np.astype(int)).max() <= 1
        np.testing.assert_array_equal(panel(grid, i, 1, h, w_), b[i].numpy().transpose(1, 2, 0))  # back to the photo
    # the writer's own image (what the user logged) equals the broken panels
    own = decode_png(acc.Images("val/outputs")[0].encoded_image_string)
    np.testing.assert_array_equal(panel(own, 0, 0, h, w_, pad=0), panel(grid, 0, 0, h, w_))

    hist_tags = [t for t in tags if "/histogram_clamp_0_1/" in t]
    assert len(hist_tags) == 3
    hist = acc.Histograms(hist_tags[0])[0].histogram_value
    assert hist.num == 3 * h * w_  # channel 0 of the whole call whose images were kept (3 images)
    limits = np.asarray(hist.bucket_limit)
    counts = np.asarray(hist.bucket)
    np_counts, _ = np.histogram(xn[..., 0].astype(np.float64), bins=limits[: len(limits) - 1])
    assert np.abs(np_counts - counts[1:-1]).sum() <= 0.002 * hist.num
    texts = [t for t in acc.Tags()["tensors"] if t.startswith("rangewatch/preview/")]
    assert texts and "finding" in texts[0]


# ----------------------------------------------------------------------------- thresholds, NaN
def test_threshold_and_overshoot(tmp_path):
    u = to_unit(batch_u8())
    x = u.clone()
    x.view(-1)[:: 100] = -0.2  # 1% of values below 0 in otherwise [0,1] data
    with watch_visualization(warn=False, threshold=0.02) as w:
        tvu.make_grid(x, normalize=True, value_range=(0, 1))
    assert w.findings == [] and w.records[0].below_fraction == pytest.approx(0.01, rel=0.05)
    # [0,1] data that overshoots a little: clamping is what the call is for
    y = u * 1.01 - 0.005
    with watch_visualization(warn=False) as w:
        tvu.make_grid(y, normalize=True, value_range=(0, 1))
    assert w.findings == [] and w.records[0].clamped_fraction > 0.005 and w.records[0].convention == "unit"
    # float 0..255 data through add_image: clamped to white; fix divides by 255
    with watch_visualization(warn=False, threshold=0.02) as w:
        SummaryWriter(tmp_path).add_image("x", batch_u8()[0].float(), 0)
    (f,) = w.findings
    assert "to white" in f.evidence and "x / 255" in f.fix


def test_nan_makes_a_black_image_finding(tmp_path):
    x = torch.full((3, 16, 16), float("nan"))
    with watch_visualization(warn=False) as w:
        for _ in range(2):  # identical finding from one call site: reported once
            tvu.save_image(x, tmp_path / "nan.png")
    (f,) = w.findings
    assert f.kind == "nonfinite" and "this will be a black image" in f.evidence and f.severity == "error"
    assert len(w.records) == 2


def test_findings_warn_without_on_finding_and_call_on_finding(tmp_path):
    x = to_sym(photo_u8())
    with pytest.warns(VisualizationWarning, match=r"save_image\(\(x \+ 1\) / 2"):
        with watch_visualization():
            tvu.save_image(x, tmp_path / "a.png")
    seen: list[Finding] = []
    with watch_visualization(on_finding=seen.append, step=123) as w:
        tvu.save_image(x, tmp_path / "a.png")
    assert seen == w.findings and seen[0].step == 123


# ----------------------------------------------------------------------------- patch scoping
def test_patches_restored_after_exception_in_block_and_in_call(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with watch_visualization(warn=False):
            assert is_patched() and tvu.make_grid is not ORIG["make_grid"]
            assert SummaryWriter.add_image is not ORIG["add_image"]
            raise RuntimeError("boom")
    assert_restored()
    # the user's call raising passes through unchanged
    with watch_visualization(warn=False) as w:
        with pytest.raises(TypeError) as watched:
            tvu.make_grid(torch.zeros(2, 3, 8, 8), normalize=True, value_range=[0, 1])  # must be a tuple
    with pytest.raises(TypeError) as plain:
        ORIG["make_grid"](torch.zeros(2, 3, 8, 8), normalize=True, value_range=[0, 1])
    assert str(watched.value) == str(plain.value)
    assert_restored()
    assert [r.call for r in w.records] == ["make_grid"]


def test_nested_and_repeated_use():
    x = to_sym(photo_u8(size=24))
    with watch_visualization(warn=False) as outer:
        with watch_visualization(warn=False) as inner:
            tvu.make_grid(x, normalize=True)
        assert is_patched()  # the outer watch is still on
        tvu.make_grid(x, normalize=True, value_range=(0, 1))
    assert_restored()
    assert [r.call for r in inner.records] == ["make_grid"]
    assert [r.mode for r in outer.records] == ["stretch", "clamp"]  # inner and outer both saw the first call
    assert [f.kind for f in inner.findings] == ["note"] and sorted(f.kind for f in outer.findings) == ["clipping", "note"]

    w = VisualizationWatch(warn=False)
    for _ in range(3):  # repeated start/stop of one watcher, and re-entrant use
        with w:
            with w:
                tvu.make_grid(x, normalize=True)
            assert is_patched()
        assert_restored()
    assert len(w.findings) == 1 and len(w.pop_records()) == 3 and len(w.records) == 0
    w.stop()  # stopping a stopped watcher is harmless
    assert_restored()


def test_modules_importing_patched_names_are_restored_too():
    mod = types.ModuleType("rangewatch_test_late_import")
    sys.modules[mod.__name__] = mod
    try:
        with watch_visualization(warn=False) as w:
            exec("from torchvision.utils import make_grid, save_image", mod.__dict__)
            assert mod.make_grid is not ORIG["make_grid"]  # imported the patched name
            mod.make_grid(to_sym(photo_u8(size=16)), normalize=True)
        assert mod.make_grid is ORIG["make_grid"] and mod.save_image is ORIG["save_image"]
        assert len(w.records) == 1
    finally:
        del sys.modules[mod.__name__]
    assert_restored()


def test_threads_share_the_patch_safely():
    x = to_sym(photo_u8(size=16))
    barrier = threading.Barrier(4)
    results, errors = [], []

    def worker() -> None:
        try:
            for _ in range(3):
                with watch_visualization(warn=False) as w:
                    barrier.wait(timeout=10)
                    tvu.make_grid(x, normalize=True)
                    barrier.wait(timeout=10)
                results.append(len(w.records))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    # every watcher was on while all four threads called make_grid: each saw the four calls
    assert results == [4] * 12
    assert_restored()


def test_failing_on_finding_never_breaks_the_call(tmp_path):
    x = to_sym(photo_u8(size=16))

    def bad(f: Finding) -> None:
        raise KeyError("callback bug")

    with watch_visualization(on_finding=bad) as w:
        grid = tvu.make_grid(x, normalize=True, value_range=(0, 1))
    assert torch.equal(grid, ORIG["make_grid"](x, normalize=True, value_range=(0, 1)))
    assert w.findings and w.findings[0].kind == "clipping"


def test_api_errors_and_log_previews_inputs(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        VisualizationWatch(threshold=2)
    with pytest.raises(ValueError, match="unknown call"):
        VisualizationWatch(calls=["imshow"])
    with pytest.raises(TypeError, match="SummaryWriter"):
        log_previews(object(), [], step=0)
    writer = SummaryWriter(tmp_path)
    with pytest.raises(TypeError, match="VisRecord"):
        log_previews(writer, [42], step=0)
    # only the calls asked for are observed; previews popped from the watcher are logged once
    x = to_sym(batch_u8(size=16))
    with watch_visualization(warn=False, calls=["save_image"], logger=writer, step=3) as w:
        tvu.make_grid(x, normalize=True)
        tvu.save_image(x, tmp_path / "a.png")
    assert [r.call for r in w.records] == ["save_image"]
    assert isinstance(w.records[0], VisRecord) and w.records[0].preview is not None
    assert len(w.records[0].preview.images) == 2
    assert w.log_previews(writer) == []  # already logged by stop() (logger=...)
    writer.close()
    acc = read_events(tmp_path)
    (tag,) = acc.Tags()["images"]
    assert tag.endswith("broken_unit_0_1-vs-corrected_symmetric") and acc.Images(tag)[0].step == 3


def test_two_call_sites_in_one_function_get_their_own_previews(tmp_path):
    x = to_sym(photo_u8(size=16))
    writer = SummaryWriter(tmp_path)
    with watch_visualization(warn=False) as w:
        tvu.save_image(x, tmp_path / "a.png")
        tvu.save_image(x, tmp_path / "b.png")
    assert len(w.findings) == 2 and w.findings[0].where != w.findings[1].where
    images = [t for t in log_previews(writer, w, step=0) if "/broken_" in t]
    writer.close()
    assert len(images) == 2 and len(set(images)) == 2 and "_line" in images[1]


def test_preview_verdict_uses_the_value_sample_not_only_the_extremes(tmp_path):
    """Bright [-1,1] content with RandomErasing(value=0) patches: from the extremes alone (an exact 0
    minimum in every channel, maximum 1) it reads as confident [0,1]; the call's value sample rules
    that out (8-bit steps 2k/255 - 1 land on odd k/255 only), so the preview call is judged [-1,1]."""
    from torchvision.transforms import v2

    from rangewatch import infer_convention
    from rangewatch.stats.range_stats import RangeStats

    torch.manual_seed(0)
    imgs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        u8 = TF.center_crop(as_tensor(name, max_side=96), [64, 64])
        bright = torch.round((0.55 + 0.45 * u8.float() / 255) * 255) / 255  # high-key: nothing dark
        imgs.append(v2.RandomErasing(p=1.0, value=0)(bright * 2 - 1))
    x = torch.stack(imgs)
    st = RangeStats(channel_dim=1, sync_on_compute=False)
    st.update(x, detail=True)
    s = st.compute()
    extremes = infer_convention(s)
    assert (extremes.name, extremes.confident) == ("unit", True)  # the trap this test is about
    with watch_visualization(warn=False) as w:
        tvu.save_image(x, tmp_path / "ok.png", normalize=True, value_range=(-1, 1))
    (rec,) = w.records
    assert rec.inference.name == "symmetric" and w.findings == []
