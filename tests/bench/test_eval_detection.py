"""Smoke tests of the evaluation harness benchmarks/eval_detection.py (issue 11): its truth labels are
checked here independently of rangewatch (each pipeline's output lies where its last step puts it),
and one small run returns the documented structure. The targets themselves are not asserted here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.bench import eval_detection

pytest.importorskip("skimage")
pytest.importorskip("timm")
pytest.importorskip("kornia")
pytest.importorskip("albumentations")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def ev():
    with eval_detection() as mod:
        yield mod


# the published constants, typed from their sources: torchvision's ImageNet presets and OpenAI CLIP's
# (open_clip constants.py OPENAI_DATASET_MEAN/STD)
PUBLISHED = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# families whose output spills a little past the bounds by construction
RESAMPLE_AFTER_NORMALIZE = {"tv2_bicubic_after_normalize", "kornia_after_normalize"}
KEEP_TONES = {"tv1_bicubic_resize", "diffusers_train_script", "diffusers_vae_processor", "bits16", "timm_eval"}
NOISE = {"tv1_erasing_random", "tv2_erasing_random", "timm_train_re_pixel"}  # N(0,1) erasing noise


def to_unit(x: torch.Tensor, conv: str) -> torch.Tensor:
    """Map a batch back to display space [0, 1] with the published constants."""
    x = x.double()
    if conv == "unit":
        return x
    if conv in ("uint8", "float255"):
        return x / 255
    m, s = PUBLISHED[conv]
    c = x.shape[1]
    if c == 1:
        m, s = (sum(m) / 3,), (sum(s) / 3,)
    return x * torch.tensor(s, dtype=torch.float64).view(1, c, 1, 1) + torch.tensor(m, dtype=torch.float64).view(1, c, 1, 1)


def test_constants_are_the_published_ones(ev):
    for conv, (m, s) in PUBLISHED.items():
        assert ev.NORMALIZE[conv][0] == pytest.approx(m, abs=1e-8) and ev.NORMALIZE[conv][1] == pytest.approx(s, abs=1e-8)


def test_content_kinds(ev):
    rng = np.random.default_rng(0)
    for kind in ev.CONTENTS:
        a = ev.sample_content(kind, rng)
        assert a.dtype == np.uint8
        assert a.ndim == (2 if kind == "gray1" else 3)
        if a.ndim == 3:
            assert a.shape[2] == 3
    for _ in range(5):
        assert ev.sample_content("bright", rng).min() >= round(0.55 * 255)  # high-key: nothing darker than 55% grey
        lc = ev.sample_content("lowcontrast", rng)
        assert lc.min() >= 0.35 * 255 - 1 and lc.max() <= 0.65 * 255 + 1
        g3 = ev.sample_content("gray3", rng)
        assert (g3[..., 0] == g3[..., 1]).all() and (g3[..., 1] == g3[..., 2]).all()


@pytest.mark.parametrize("content", ["photo", "bright"])
def test_truth_labels_hold_for_every_family(ev, content):
    """Independent of rangewatch: each family's output, mapped back with the published constants of
    the convention it is labelled with, lies in [0, 1] (up to resampling overshoot / erasing noise)."""
    for fam in ev._families():
        for conv in fam.convs:
            rng = np.random.default_rng([1, len(conv)])
            torch.manual_seed(0)
            x = ev._batches(fam, conv, content, max(2, fam.min_bs), 32, rng, n=1)[0]
            where = f"{fam.name}/{conv}/{content}"
            assert x.shape[:2] == (max(2, fam.min_bs), 3), where
            if conv == "uint8":
                assert x.dtype == torch.uint8, where
                continue
            assert x.is_floating_point(), where
            u = to_unit(x, conv)
            if conv == "float255":
                assert x.max() > 2, where  # not [0, 1] data
            if fam.name in NOISE:
                inside = ((u >= -1e-6) & (u <= 1 + 1e-6)).double().mean()
                assert inside >= 0.6, (where, float(inside))
                assert u.quantile(0.2) >= -1e-6 and u.quantile(0.8) <= 1 + 1e-6, where
            elif fam.name in RESAMPLE_AFTER_NORMALIZE:
                assert u.min() >= -0.15 and u.max() <= 1.15, (where, float(u.min()), float(u.max()))
                assert ((u >= -1e-6) & (u <= 1 + 1e-6)).double().mean() >= 0.9, where
            else:
                assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5, (where, float(u.min()), float(u.max()))
            if fam.name == "bits12_in_uint16":
                assert u.max() <= 4095 / 65535 + 1e-6, where
            elif content == "bright" and fam.name in KEEP_TONES:
                # no colour, erasing or padding step: a high-key image stays high-key (up to resampling ringing)
                assert u.min() >= 0.45, (where, float(u.min()))


def test_gray1_keeps_one_channel(ev):
    for fam in ev._families():
        if not fam.gray1:
            continue
        for conv in ("unit", "symmetric"):
            if conv not in fam.convs:
                continue
            x = ev._batches(fam, conv, "gray1", 2, 32, np.random.default_rng(3), n=1)[0]
            assert x.shape[1] == 1, fam.name
            u = to_unit(x, conv)
            assert u.min() >= -1e-5 or fam.name in NOISE, fam.name


def test_conversion_fix_detection(ev):
    assert ev.proposes_conversion("apply x * 2 - 1 (Normalize(mean=[0.5]*3, std=[0.5]*3)) before vae")
    assert ev.proposes_conversion("replace Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD) with Normalize(mean=CLIP_MEAN, std=CLIP_STD)")
    assert ev.proposes_conversion("call `tensor2img(x, min_max=(-3.22, 3.49))`")
    assert ev.proposes_conversion("undo the normalisation first: `tensor2img(x * std + mean)` with mean = ...")
    assert ev.proposes_conversion("divide by 255 (ToDtype(torch.float32, scale=True) on the uint8 image)")
    assert not ev.proposes_conversion("check the preprocessing feeding backbone: it should produce ImageNet-normalised data")
    assert not ev.proposes_conversion("likely causes: resampling after Normalize, random-valued erasing")


@pytest.mark.slow
def test_quick_run_structure(ev):
    res = ev.run(quick=True, families=["tv1_rrc_jitter"])
    m = res["matrix"]
    assert set(m["per_family"]) == {"tv1_rrc_jitter"}
    for which in ("single", "window"):
        r = m["totals"][which]
        assert r["n"] > 0
        assert 0 <= r["top1"] <= 1 and 0 <= r["unsure"] <= 1
        assert r["confident_correct"] + r["unsure"] + r["confident_wrong"] / r["n"] == pytest.approx(1.0)
    t = res["trainer"]
    assert t["errors"] == []
    assert {r["correct"] for r in t["runs"]} == {True, False}
    for r in t["runs"]:
        assert {"name", "alarms", "harmful", "caught", "findings", "tap", "truth"} <= set(r)
    tot = res["totals"]
    assert tot["correct_runs"] + tot["seed_runs"] == len(t["runs"])
    assert 0 <= tot["recall"] <= 1
    text = ev.report(res)
    assert "Totals against the targets" in text and "tv1_rrc_jitter" in text
