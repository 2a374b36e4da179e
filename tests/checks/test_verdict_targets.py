"""Issue 11 targets on the quick subset of benchmarks/eval_detection.py (real pipelines, truth from the
pipeline applied): no warning/error finding on a correct pipeline, every seed bug caught within the
check window, confidently wrong at most 0.1% of confident verdicts, no fix that would break correct code."""

from __future__ import annotations

import math

import pytest

from helpers.bench import EVAL_DETECTION, eval_detection

PATH = EVAL_DETECTION


@pytest.fixture(scope="module")
def figures():
    assert PATH.is_file(), f"{PATH} is missing: the targets below are measured by it"
    for mod in ("skimage", "timm", "kornia", "albumentations", "diffusers", "transformers"):
        pytest.importorskip(mod)
    with eval_detection() as ev:
        yield ev.run(quick=True)


@pytest.mark.slow
def test_no_false_alarm_on_correct_pipelines(figures):
    t = figures["totals"]
    assert t["correct_runs"] > 0
    assert not figures["trainer"]["errors"], figures["trainer"]["errors"]
    bad = [(r["name"], r["findings"]) for r in figures["trainer"]["runs"] if r["correct"] and r["alarms"]]
    assert t["false_alarm_runs"] == 0, bad


@pytest.mark.slow
def test_every_seed_bug_caught(figures):
    t = figures["totals"]
    assert t["seed_runs"] > 0 and not math.isnan(t["recall"])
    missed = [r["name"] for r in figures["trainer"]["runs"] if not r["correct"] and not r["caught"]]
    assert t["recall"] >= 0.99, missed


@pytest.mark.slow
def test_confidently_wrong_at_most_a_tenth_of_a_percent(figures):
    t = figures["totals"]
    examples = figures["matrix"]["confidently_wrong_examples"][:5]
    assert t["confident_wrong_share_window"] <= 0.001, examples
    assert t["confident_wrong_share_single"] <= 0.001, examples


@pytest.mark.slow
def test_no_fix_that_would_break_correct_code(figures):
    harmful = [h for r in figures["trainer"]["runs"] for h in r["harmful_findings"]]
    assert figures["totals"]["harmful_fixes"] == 0, harmful
