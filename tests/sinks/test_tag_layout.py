"""The one tag layout (rangewatch/sinks/tags.py) round-trips: what the engine and the pipeline front end write
through their sinks into a real ``SummaryWriter`` is read back from the event files (TensorBoard's own
``EventAccumulator``) under the tags the layout builds, and the report's reader files every one of them where the
report shows it (the taps' charts, the previews, the findings, the latent previews).

The engine run is a plain loop over a frozen random-init diffusers ``AutoencoderKL`` fed [0, 1] photos (its
metadata says [-1, 1]: a mismatch), the latents handed over as ``watch.tensor("latents", ...)``, and a
validation-style ``torchvision.utils.save_image`` of [-1, 1] images (a clipping preview); the pipeline run is a
random-init Stable Diffusion pipeline fed latents not multiplied by ``init_noise_sigma``'s scale.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from helpers.latent_rgb import SD15_LATENT_RGB
from helpers.events import decode_png, read_events
from helpers.photos import photo_batch
from helpers.pipelines import tiny_sd_pipe
from rangewatch.sinks import tags
from rangewatch.sinks.loggers import findings_from_markdown
from rangewatch.sinks.report import _read_run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
diffusers = pytest.importorskip("diffusers")


def _vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16,
    ).requires_grad_(False)


def test_the_engine_writes_the_layout_and_the_report_reads_it_back(tmp_path):
    import torchvision.utils as tvu
    from torch.utils.tensorboard import SummaryWriter

    import rangewatch

    x = photo_batch(4, 16).float() / 255  # [0, 1]: the VAE expects [-1, 1]
    writer = SummaryWriter(str(tmp_path))
    vae = _vae()
    with rangewatch.watch(vae, logger=writer, expect={"latents": "sd15_latent"}, policy="log", check_first_n=1,
                          log_every_n_steps=100) as watch:
        watch.batch({"pixel_values": x})
        z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        watch.tensor("latents", z)
        tvu.save_image(x * 2 - 1, io.BytesIO(), format="png")  # [-1, 1] saved as if [0, 1]: half clipped away
        watch.step()
    writer.close()
    assert sorted(f.kind for f in watch.findings) == ["clipping", "latent_scale", "mismatch"]
    acc = read_events(tmp_path)
    scalars, images, hists = acc.Tags()["scalars"], acc.Tags()["images"], acc.Tags()["histograms"]

    # the taps' scalars and the flagged tap's histograms, under the layout's tags, against numpy
    ref = x.double().numpy()
    for c in range(3):
        (ev,) = acc.Scalars(tags.detail_tag("encoder:input", "min", c))
        assert ev.step == 0 and ev.value == pytest.approx(ref[:, c].min(), abs=1e-6)
        assert tags.hist_tag("encoder:input", c) in hists
    assert acc.Scalars(tags.tag("encoder:input", "max"))[0].value == pytest.approx(ref.max(), abs=1e-6)
    assert acc.Scalars(tags.detail_tag("encoder:input", "expected_min"))[0].value == -1
    # the counts are written at the check: the preview's clipping is reported when the watch closes
    counted = {k: acc.Scalars(tags.findings_count(k))[-1].value for k in ("mismatch", "latent_scale")}
    assert counted == {"mismatch": 1, "latent_scale": 1} and tags.findings_count("clipping") not in scalars
    assert acc.Scalars(tags.FINDINGS_TOTAL)[-1].value == 2
    # the latent tap's preview and channel histograms, the corrected preview with its histogram and text
    assert tags.latent_preview_tag("latents:input") in images
    assert {tags.latent_channel_tag("latents:input", c) for c in range(4)} <= set(hists)
    ((slug, rest),) = {tags.preview_slug(t) for t in images if tags.preview_slug(t) is not None}
    assert rest.startswith("broken_") and tags.preview_text_tag(slug) + "/text_summary" in acc.Tags()["tensors"]
    assert any(t.startswith(tags.PREVIEW_PREFIX + slug + "/histogram_") for t in hists)
    assert all(tags.is_rangewatch_tag(t) for t in [*scalars, *images, *hists])

    # the report's reader: each tag where the report shows it
    run = _read_run(tmp_path, "engine")
    tap = run.taps["encoder:input"]
    assert [tap.series["min"][c][0] for c in range(3)] == pytest.approx([ref[:, c].min() for c in range(3)], abs=1e-6)
    assert set(tap.hists) == {0, 1, 2} and tap.series["expected_min"][None] == {0: -1.0}
    back = findings_from_markdown(run.findings[-1].text)
    assert back and [f.key for f in back] == [f.key for f in watch.findings]
    assert set(run.previews) == {slug} and run.previews[slug].images and run.previews[slug].hists and run.previews[slug].texts
    (img,) = run.images[tags.latent_preview_tag("latents:input")]
    (tb,) = acc.Images(tags.latent_preview_tag("latents:input"))
    np.testing.assert_array_equal(decode_png(img.data), decode_png(tb.encoded_image_string))


def test_the_pipeline_writes_the_layout_and_the_report_reads_it_back(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from rangewatch import watch_pipeline

    pipe = tiny_sd_pipe(diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, beta_start=0.00085,
                                                beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1))
    pe = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)) / 0.18215  # divided: too wide
    seen: list[torch.Tensor] = []

    def record(p, i, t, kw):
        seen.append(kw["latents"].detach().clone())
        return {}

    writer = SummaryWriter(str(tmp_path / "tb"))
    with watch_pipeline(pipe, logger=writer, check_steps=2, policy="log", out_dir=tmp_path / "out") as watch:
        pipe(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), num_inference_steps=3, height=32, width=32,
             generator=torch.Generator().manual_seed(0), output_type="pt", latents=latents, callback_on_step_end=record)
    writer.close()
    assert "latent_scale" in {f.kind for f in watch.findings}
    acc = read_events(tmp_path / "tb")

    where, name = tags.pipeline_latents_where(1), tags.pipeline_latents_tap(1)
    preview = tags.latent_preview_tag(where)
    assert acc.Tags()["images"] == [preview]
    steps = [i for (_, i) in sorted(watch.previews)]
    assert [e.step for e in acc.Images(preview)] == steps == [0, 2]  # the first and last step
    assert {tags.latent_channel_tag(where, c) for c in range(4)} == set(acc.Tags()["histograms"])
    for c in range(4):
        events = acc.Scalars(tags.tag(name, "max_abs", c))
        assert [e.value for e in events] == pytest.approx([float(z[:, c].abs().max()) for z in seen], rel=1e-5)
    # the PNG files in out_dir: watch.previews, as torchvision's save_image writes them
    for (k, i), prev in sorted(watch.previews.items()):
        want = (prev[0].clamp(0, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(decode_png((tmp_path / "out" / tags.latents_png(k, i)).read_bytes()), want)

    run = _read_run(tmp_path / "tb", "pipeline")
    assert [e.step for e in run.images[preview]] == steps
    assert set(run.hists) == {tags.latent_channel_tag(where, c) for c in range(4)}
    # the latents' mean per step is a tap's series; max |x| is no tap statistic of the report's: one more chart
    assert [run.taps[name].series["mean"][0][i] for i in range(len(seen))] == pytest.approx(
        [float(z[:, 0].double().mean()) for z in seen], rel=1e-4, abs=1e-6)
    assert [e.value for e in run.scalars[tags.tag(name, "max_abs", 0)]] == pytest.approx(
        [float(z[:, 0].abs().max()) for z in seen], rel=1e-5)
    back = findings_from_markdown(run.findings[-1].text)
    assert back and [f.key for f in back] == [f.key for f in watch.findings]
    # the event file's preview is the enlarged latent preview of the step's latents, computed here in numpy from
    # ComfyUI's SD 1.x latent-to-RGB factors, read as [-1, 1] and shown as (rgb + 1) / 2; a 16-pixel-wide latent
    # is enlarged by 8 (the largest enlargement; 192 / 16 = 12 would be more)
    rgb = np.einsum("chw,cr->hwr", seen[-1][0].double().numpy(), SD15_LATENT_RGB)
    last = np.clip(rgb * 0.5 + 0.5, 0, 1).repeat(8, axis=0).repeat(8, axis=1)
    want = np.round(last * 255).astype(np.uint8)
    got = decode_png(acc.Images(preview)[-1].encoded_image_string)
    assert got.shape == want.shape  # one image: make_grid returns it without padding
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
