"""Issue 25, items 1a and 5: ``watch_pipeline`` on a colourful generation is silent, on a drifting one it warns.

A real diffusers ``StableDiffusionPipeline`` from tiny random-init components (as tests/pipeline/test_pipeline.py builds
them). The UNet's output convolution is zero-initialised (``zero_module(conv_out)``, as the CompVis / OpenAI UNets
do) and its bias set to ``-mu``: with v-prediction the UNet then predicts ``v = -mu`` everywhere, and DDIM's
update rotates the latents' mean towards ``mu`` so that ``mean(x_t) / sqrt(abar_t)`` (the clean image's mean)
is ``mu`` from the first clear step on: the generation of an image whose mean colour is ``mu`` (an orange
sunset), settled early, as a trained model settles a picture's colour. A drifting generation adds a growing
offset to one channel in a ``callback_on_step_end``: its colour keeps moving until the decode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.latent_rgb import SD15_LATENT_RGB, hsv_hue
from helpers.pipelines import tiny_sd_pipe
from helpers.threads import one_thread

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: E402

from rangewatch import watch_pipeline  # noqa: E402
from rangewatch.checks.latents import hue_name  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1)
STEPS = 8


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def orange_means() -> np.ndarray:
    """Channel means whose push through SD 1.x's latent-to-RGB factors (ComfyUI's) is orange with chroma 0.4."""
    f = SD15_LATENT_RGB
    target = np.array([1.0, 0.0, -1.0])
    target = target / np.linalg.norm(target - target.mean()) * 0.4
    m, *_ = np.linalg.lstsq(f.T, target, rcond=None)
    return m


def sd_pipe(mu=None) -> StableDiffusionPipeline:
    pipe = tiny_sd_pipe(DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **SCHED))
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    with torch.no_grad():
        pipe.unet.conv_out.bias.copy_(torch.zeros(4) if mu is None else -torch.as_tensor(mu, dtype=torch.float32))
    return pipe


def generate(pipe, **kw):
    pe = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    args = dict(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), num_inference_steps=STEPS, height=64,
                width=64, generator=torch.Generator().manual_seed(0), output_type="pt")
    args.update(kw)
    return pipe(**args)


def problems(watch):
    return [f for f in watch.findings if f.severity in ("warning", "error")]


def test_colourful_generation_is_silent():
    mu = orange_means()
    pipe = sd_pipe(mu)
    z = generate(pipe, output_type="latent").images  # what the decode gets (model space)
    m = z.double().mean(dim=(0, 2, 3)).numpy()
    rgb = m @ SD15_LATENT_RGB
    assert m @ mu / np.linalg.norm(m) / np.linalg.norm(mu) > 0.98  # the picture's colour is along mu ...
    assert np.linalg.norm(rgb - rgb.mean()) > 0.3 and hue_name(rgb - rgb.mean()) in ("orange", "red")  # ... orange
    assert 0 < hsv_hue(rgb) < 45  # (colorsys: between red and yellow)
    with watch_pipeline(pipe) as watch:
        generate(pipe)
    assert problems(watch) == [], [str(f) for f in watch.findings]
    assert [f for f in watch.findings if f.kind == "color_cast"] == []


@pytest.mark.parametrize("colourful", [False, True])
def test_drifting_generation_is_flagged(colourful):
    pipe = sd_pipe(orange_means() if colourful else None)

    def drift(p, i, t, kw):  # a growing offset on channel 1 (a biased noise offset re-added every step)
        return {"latents": kw["latents"] + torch.tensor([0.0, 0.15 * (i + 1), 0.0, 0.0]).view(1, 4, 1, 1)}

    with watch_pipeline(pipe) as watch:
        generate(pipe, callback_on_step_end=drift)
    (f,) = [f for f in watch.findings if f.kind == "color_cast"]
    assert f.severity == "warning" and f.where == "vae.decode input"
    assert "drifted" in f.evidence and f.fix
    # the move is mostly channel 1's: SD 1.x's row for channel 1 (0.3250, 0.4974, 0.2350) leads with green
    assert "+G" in f.evidence
