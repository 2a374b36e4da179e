"""Issue 25 targets on the latent cases of benchmarks/eval_detection.py (truth from the construction: latents
scaled by the VAE config's own factor or normalised with its latents_mean / latents_std are correct; a missing,
doubled or foreign factor, [0, 1] video into the Wan VAE and a drifting generation are seed bugs): no
warning/error on a correct case, every seed bug caught, no internal error."""

from __future__ import annotations

import pytest

from helpers.bench import eval_detection



@pytest.fixture(scope="module")
def latent_figures():
    for mod in ("skimage", "timm", "diffusers"):
        pytest.importorskip(mod)
    with eval_detection() as ev:
        yield ev.run_latents(quick=True, seed=0, log=lambda s: None)


def test_latent_cases_cover_colourful_shifted_and_video(latent_figures):
    names = " | ".join(r["name"] for r in latent_figures["cases"])
    for what in ("orange content", "shifted channel means", "Wan VAE video", "drifting generation", "Flux latents, shift"):
        assert what in names
    assert latent_figures["errors"] == []


def test_no_false_alarm_on_correct_latents(latent_figures):
    bad = [r for r in latent_figures["cases"] if r["correct"] and r["alarms"]]
    assert latent_figures["false_alarms"] == 0, bad


def test_every_latent_seed_bug_caught(latent_figures):
    missed = [r for r in latent_figures["cases"] if not r["correct"] and not r["caught"]]
    assert latent_figures["caught"] == latent_figures["seeds"] > 0, missed
    assert latent_figures["internal_errors"] == 0
