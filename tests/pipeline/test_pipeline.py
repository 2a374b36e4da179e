"""rangewatch.watch_pipeline on real diffusers pipelines built offline from tiny random-init components.

The denoisers are random-init, with the output convolution zero-initialised as the CompVis / OpenAI
UNets initialise it (``zero_module(conv_out)``), and the schedulers predict ``v``. A denoiser that
predicts v = 0 is the Bayes-optimal one for latents that are unit Gaussian in the model's latent
space (E[v | x_t] = sqrt(a) sqrt(1-a) x_t - sqrt(1-a) sqrt(a) x_t = 0): the data the latent convention
describes. So a correct generation ends with latents of about unit spread, as a trained model's do,
and silence on it means something; the VAEs are random too, so their decoded range is arbitrary
(within the clipping tolerance).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers.pipelines import tiny_sd_components
from helpers.threads import one_thread

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

import rangewatch  # noqa: E402
from rangewatch import PipelineWatch, watch_pipeline  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

SD_SCALE = 0.18215
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1)


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


# ---------------------------------------------------------------------------- builders
def _zero_out(conv: torch.nn.Module) -> None:
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)


def _sd_components(scheduler: str = "ddim", seed: int = 0) -> dict:
    sched = (DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **SCHED) if scheduler == "ddim"
             else EulerDiscreteScheduler(**SCHED))
    comps = tiny_sd_components(sched, seed)
    _zero_out(comps["unet"].conv_out)
    return comps


def sd_pipe(scheduler: str = "ddim", cls=StableDiffusionPipeline):
    pipe = cls(**_sd_components(scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeds(dtype=torch.float32):
    pe = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    return dict(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe))


def generate(pipe, steps: int = 4, **kw):
    args = dict(embeds(pipe.unet.dtype), num_inference_steps=steps, height=32, width=32,
                generator=torch.Generator().manual_seed(0), output_type="pt")
    args.update(kw)
    return pipe(**args)


def noise(*shape, seed: int = 3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def kinds(watch: PipelineWatch) -> list[tuple[str, str]]:
    return [(f.kind, f.where) for f in watch.findings]


def assert_clean(pipe, cls) -> None:
    """Nothing rangewatch installed is left: class, decode wrapper, module hooks."""
    assert type(pipe) is cls
    assert "decode" not in pipe.vae.__dict__
    for model in (pipe.vae, getattr(pipe, "unet", None) or pipe.transformer):
        for name, m in model.named_modules():
            assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {name}"


# ---------------------------------------------------------------------------- SD: correct generation
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_correct_generation_is_silent_bit_identical_and_clean(scheduler, tmp_path):
    pipe = sd_pipe(scheduler)
    ref = generate(pipe).images
    watch = watch_pipeline(pipe, out_dir=tmp_path)
    with watch:
        assert isinstance(pipe, StableDiffusionPipeline) and type(pipe) is not StableDiffusionPipeline
        out = generate(pipe).images
    assert watch.findings == []
    assert torch.equal(ref, out)
    assert watch.convention == "sd15_latent"  # from vae.config.scaling_factor 0.18215, 4 channels
    assert sorted(watch.previews) == [(1, 0), (1, 1), (1, 2), (1, 3)]  # 4 steps, check_steps=5: all of them
    prev = watch.previews[(1, 3)]
    assert prev.shape == (1, 3, 16, 16) and 0 <= float(prev.min()) and float(prev.max()) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"latents_call1_step{i:03d}.png" for i in range(4)]
    assert_clean(pipe, StableDiffusionPipeline)


def test_user_latents_of_unit_noise_are_silent():
    pipe = sd_pipe()
    with watch_pipeline(pipe) as watch:
        generate(pipe, latents=noise(1, 4, 16, 16))
    assert watch.findings == []


# ---------------------------------------------------------------------------- latents= scale
@pytest.mark.parametrize("factor, what", [(1 / SD_SCALE, "not scaled"), (SD_SCALE, "scaled twice")])
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_user_latents_wrong_scale_caught(factor, what, scheduler):
    pipe = sd_pipe(scheduler)
    z = noise(1, 4, 16, 16) * factor
    with watch_pipeline(pipe) as watch:
        generate(pipe, latents=z)
    scale = [f for f in watch.findings if f.kind == "latent_scale"]
    assert [(f.where, f.severity) for f in scale] == [("latents=", "error")], watch.findings
    assert what in scale[0].observed
    # the std in the finding is the passed tensor's own (numpy reference: geometric mean of the channel stds;
    # the watch's is the robust interquartile one, the same for Gaussian noise within a few percent)
    std = float(np.exp(np.log(z.numpy().std(axis=(0, 2, 3))).mean()))
    reported = float(scale[0].evidence.split("std ", 1)[1].split(" ", 1)[0])
    assert abs(reported - std) < 0.08 * std
    # the consequences (outliers while denoising, off-scale decode input) are not reported on top
    assert not [f for f in watch.findings if f.kind in ("latent_outliers", "color_cast") or f.where == "vae.decode input"]


def test_user_latents_with_init_noise_sigma_applied_twice_caught():
    pipe = sd_pipe("euler")
    pipe.scheduler.set_timesteps(4)
    sigma = float(pipe.scheduler.init_noise_sigma)
    assert sigma > 10  # Euler's init_noise_sigma is sigma_max
    with watch_pipeline(pipe) as watch:
        generate(pipe, latents=noise(1, 4, 16, 16) * sigma)
    (f,) = [f for f in watch.findings if f.kind == "latent_scale"]
    assert "init_noise_sigma applied twice" in f.observed and "init_noise_sigma" in f.fix


# ---------------------------------------------------------------------------- the user's callback
def test_user_callback_still_runs_sees_what_it_asked_and_its_return_is_honoured():
    pipe = sd_pipe()
    calls: list[tuple[int, tuple[str, ...]]] = []

    def cb(p, i, t, kw):
        calls.append((i, tuple(sorted(kw))))
        if i == 1:
            return {"prompt_embeds": kw["prompt_embeds"] * 0.5}
        return {}

    ref = generate(pipe, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    ref_calls, calls[:] = list(calls), []
    with watch_pipeline(pipe) as watch:
        out = generate(pipe, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    assert calls == ref_calls == [(i, ("prompt_embeds",)) for i in range(4)]  # not given "latents" it did not ask for
    assert torch.equal(ref, out)
    assert len(watch.previews) == 4  # the watch still saw the latents


def test_a_pipeline_callback_object_still_works():
    from diffusers.callbacks import SDCFGCutoffCallback  # a PipelineCallback: tensor_inputs ["prompt_embeds"]

    pipe = sd_pipe()
    ref = generate(pipe, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5)).images
    assert pipe.guidance_scale == 0.0  # it ran: CFG switched off from the cutoff step
    with watch_pipeline(pipe) as watch:
        out = generate(pipe, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5)).images
    assert pipe.guidance_scale == 0.0 and torch.equal(ref, out)
    assert watch.findings == [] and len(watch.previews) == 4


def test_user_callback_changing_latents_is_honoured_and_watched():
    """The SDXL case: latents that reach far beyond +-4 before the decode (here a callback puts them there)."""
    pipe = sd_pipe()

    def blow_up(p, i, t, kw):
        z = kw["latents"]
        if i == 3:
            z = z.clone()
            z[:, 0, :4, :] = 30.0
        return {"latents": z}

    ref = generate(pipe, callback_on_step_end=blow_up).images
    with watch_pipeline(pipe) as watch:
        out = generate(pipe, callback_on_step_end=blow_up).images
    assert torch.equal(ref, out) and not torch.equal(ref, generate(pipe).images)  # the returned latents took effect
    out_f = [f for f in watch.findings if f.kind == "latent_outliers"]
    assert [f.where for f in out_f] == ["vae.decode input"]
    assert "values reach 30.0" in out_f[0].evidence and "soft_clamp" in out_f[0].fix


def test_colour_cast_of_the_final_latents():
    pipe = sd_pipe()

    def offset(p, i, t, kw):  # channel 1's mean pushed to +1 before the decode
        return {"latents": kw["latents"] + torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)} if i == 3 else {}

    with watch_pipeline(pipe) as watch:
        generate(pipe, callback_on_step_end=offset)
    (f,) = [f for f in watch.findings if f.kind == "color_cast"]
    assert f.where == "vae.decode input" and "channel 1 mean +1" in f.evidence
    # the push through SD 1.x's latent-to-RGB row of channel 1 (0.3250, 0.4974, 0.2350): green leads
    assert "towards" in f.observed and "+G" in f.evidence


def test_positional_arguments_are_bound_like_the_pipeline_binds_them():
    pipe = sd_pipe()
    e = embeds()
    ref = pipe(None, 32, 32, 4, generator=torch.Generator().manual_seed(0), output_type="pt", **e).images
    with watch_pipeline(pipe) as watch:
        out = pipe(None, 32, 32, 4, generator=torch.Generator().manual_seed(0), output_type="pt", **e).images
    assert torch.equal(ref, out) and sorted(watch.previews) == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_outliers_while_denoising_are_reported_at_a_checked_step():
    pipe = sd_pipe()

    def inject(p, i, t, kw):  # runs after the watch looked at step 0: steps 1 and 2 carry the outliers
        if i == 0:
            z = kw["latents"].clone()
            z[:, 0, :3, :] = 25.0
            return {"latents": z}
        return {}

    with watch_pipeline(pipe) as watch:
        generate(pipe, callback_on_step_end=inject)
    steps = [f for f in watch.findings if f.kind == "latent_outliers" and f.where == "denoising latents"]
    assert len(steps) == 1 and steps[0].step == 1 and "step 1" in steps[0].evidence


# ---------------------------------------------------------------------------- decode
def test_manual_decode_without_dividing_by_scaling_factor_caught():
    pipe = sd_pipe()
    with watch_pipeline(pipe) as watch:
        lat = generate(pipe, output_type="latent").images
        assert watch.findings == []
        pipe.vae.decode(lat)  # forgot / vae.config.scaling_factor
    (f,) = [f for f in watch.findings if f.kind == "latent_scale"]
    assert f.where == "vae.decode input" and "not divided by scaling_factor" in f.observed
    assert f"latents / {SD_SCALE:g}" in f.fix
    with watch_pipeline(pipe) as ok:
        pipe.vae.decode(lat / pipe.vae.config.scaling_factor)
    assert ok.findings == []


def test_decoded_range_beyond_minus_one_one_reported_with_the_share_postprocess_clamps():
    pipe = sd_pipe()
    with torch.no_grad():  # a decoder whose pixels overshoot [-1, 1] (conv_out is linear: scale weight and bias)
        pipe.vae.decoder.conv_out.weight.mul_(4)
        pipe.vae.decoder.conv_out.bias.mul_(4)
    raw = {}
    h = pipe.vae.decoder.register_forward_hook(lambda m, a, out: raw.__setitem__("x", out.detach().clone()))
    with watch_pipeline(pipe) as watch:
        img = generate(pipe).images
    h.remove()
    x = raw["x"].numpy()
    share = float(((x < -1) | (x > 1)).mean())  # numpy reference
    assert share > 0.05 and float(img.min()) == 0.0 and float(img.max()) == 1.0  # postprocess clamped them
    (f,) = [f for f in watch.findings if f.kind == "clipping"]
    assert f.where == "vae.decode output" and f.observed.startswith(f"{share:.1%} of decoded values")
    assert f"{x.min():.3g} .. {x.max():.3g}" in f.evidence


def test_fp16_decoder_overflow_names_the_module():
    pipe = sd_pipe()
    pipe.to(torch.float16)  # CPU half precision
    conv = pipe.vae.decoder.up_blocks[0].resnets[0].conv1
    with torch.no_grad():
        conv.weight.mul_(1e5)  # its outputs pass 65504
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with watch_pipeline(pipe) as watch:
            img = generate(pipe, steps=2, output_type="np").images
    assert np.isnan(img).all()  # the black image the watch explains
    origin = [f for f in watch.findings if f.kind == "nonfinite" and f.where.startswith("vae.decoder")]
    assert [f.where for f in origin] == ["vae.decoder.up_blocks.0.resnets.0.conv1"]
    assert "float16" in origin[0].evidence and "torch_dtype=torch.bfloat16" in origin[0].fix
    assert "pipe.vae.to(torch.float32)" in origin[0].fix and "madebyollin/sdxl-vae-fp16-fix" in origin[0].fix
    assert "vae.decode output" in [f.where for f in watch.findings if f.kind == "nonfinite"]
    assert_clean(pipe, StableDiffusionPipeline)


def test_fp16_denoiser_overflow_traced_with_trace_all():
    """The FluxFill case: the denoiser overflows in fp16, the latents turn NaN, the image is black."""
    pipe = sd_pipe()
    pipe.to(torch.float16)
    with torch.no_grad():
        pipe.unet.down_blocks[0].resnets[0].conv1.weight.mul_(1e5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with watch_pipeline(pipe) as plain:
            generate(pipe, steps=2)
        with watch_pipeline(pipe, trace="all") as traced:
            generate(pipe, steps=2)
    (lat,) = [f for f in plain.findings if f.where == "denoising latents"]
    assert lat.kind == "nonfinite" and lat.step == 0 and "trace='all'" in lat.fix
    origin = [f for f in traced.findings if f.kind == "nonfinite" and f.where.startswith("unet.")]
    assert [f.where for f in origin] == ["unet.down_blocks.0.resnets.0.conv1"]
    assert "torch_dtype=torch.bfloat16" in origin[0].fix
    # one cause, reported where it happened: not again at the VAE, whose input simply carried the NaN
    assert sorted(f.where for f in traced.findings) == ["denoising latents", "unet.down_blocks.0.resnets.0.conv1"]
    assert_clean(pipe, StableDiffusionPipeline)


# ---------------------------------------------------------------------------- img2img input
def _astronaut() -> torch.Tensor:
    from helpers.photos import photo

    a = photo("astronaut")[::16, ::16][:32, :32]  # subsampled: exact pixel values, 0 and 255 included
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255


def test_img2img_image_in_minus_one_one_caught():
    pipe = sd_pipe(cls=StableDiffusionImg2ImgPipeline)
    x = _astronaut()
    kw = dict(embeds(), num_inference_steps=4, strength=0.75, generator=torch.Generator().manual_seed(0), output_type="pt")
    with watch_pipeline(pipe) as ok:
        pipe(image=x, **kw)
    assert ok.findings == []
    with watch_pipeline(pipe) as watch:
        pipe(image=x * 2 - 1, **kw)
    # image= is an engine tap (image:input) carrying VaeImageProcessor's expectation: the engine's verdict
    (f,) = [f for f in watch.findings if f.where == "image:input"]
    assert f.kind == "mismatch" and f.observed == "symmetric" and f.expected == "unit"
    assert "(x + 1) / 2" in f.fix and "VaeImageProcessor" in f.source and "[0, 1]" in f.source
    with watch_pipeline(pipe) as w255:
        pipe(image=x * 255, **kw)
    assert [(f.where, f.observed, f.severity) for f in w255.findings if f.kind == "mismatch"] == [("image:input", "float255", "error")]
    assert_clean(pipe, StableDiffusionImg2ImgPipeline)


def test_inpaint_mask_in_0_255_caught():
    from diffusers import StableDiffusionInpaintPipeline

    comps = _sd_components()
    unet = comps["unet"]
    comps["unet"] = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})  # latents + mask + masked image
    _zero_out(comps["unet"].conv_out)
    pipe = StableDiffusionInpaintPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    x = _astronaut()
    soft = torch.zeros(1, 1, 32, 32)
    soft[..., 8:24, 8:24] = 1.0
    soft[..., 7, 8:24] = 0.3  # an anti-aliased edge
    kw = dict(embeds(), image=x, num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0),
              output_type="pt")
    with watch_pipeline(pipe) as ok:
        pipe(mask_image=soft, **kw)
    assert not [f for f in ok.findings if f.where == "mask_image"]
    with watch_pipeline(pipe) as watch:
        pipe(mask_image=soft * 255, **kw)
    (f,) = [f for f in watch.findings if f.where == "mask_image"]
    assert f.kind == "mismatch" and "0 .. 255" in f.observed and "binarises at 0.5" in f.evidence


def test_ip_adapter_image_already_in_0_1_caught_even_when_the_pipeline_then_fails():
    """The image encoder's processor (CLIPImageProcessor: do_rescale, 1/255) gets a [0, 1] tensor: the encoder
    would see 0 .. 1/255. No IP-Adapter is loaded in the tiny pipeline, so the call itself then fails; the
    inputs were judged before it did."""
    from transformers import CLIPImageProcessor

    comps = _sd_components()
    comps["feature_extractor"] = CLIPImageProcessor()
    pipe = StableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    with watch_pipeline(pipe) as watch:
        with pytest.raises(Exception):
            generate(pipe, ip_adapter_image=_astronaut())
    (f,) = [f for f in watch.findings if f.where == "ip_adapter_image"]
    assert f.severity == "error" and "already in [0, 1]" in f.observed and "0 .. 0.00392" in f.evidence
    assert "image * 255" in f.fix
    assert_clean(pipe, StableDiffusionPipeline)


def test_fp16_headroom_before_it_breaks():
    pipe = sd_pipe()
    conv = pipe.vae.decoder.conv_in
    peak = {}
    h = conv.register_forward_hook(lambda m, a, out: peak.__setitem__("max", float(out.abs().max())))
    generate(pipe, steps=2)  # fp32 dry run: the conv's output peak
    h.remove()
    with torch.no_grad():  # a conv is linear in (weight, bias): scale both so the peak lands at 70% of 65504
        k = 0.7 * 65504 / peak["max"]
        conv.weight.mul_(k)
        conv.bias.mul_(k)
    pipe.to(torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with watch_pipeline(pipe) as watch:
            generate(pipe, steps=2)
    head = [f for f in watch.findings if f.kind == "fp16_headroom"]
    assert [f.where for f in head][:1] == ["vae.decoder.conv_in"], watch.findings
    assert "70%" in head[0].evidence or "69%" in head[0].evidence or "71%" in head[0].evidence
    assert "torch_dtype=torch.bfloat16" in head[0].fix


def test_a_failing_piece_is_reported_once_and_the_generation_is_unaffected(monkeypatch):
    pipe = sd_pipe()
    ref = generate(pipe).images

    def broken(self, z):
        raise RuntimeError("odd tensor")

    from rangewatch.checks.latents import LatentMonitor

    monkeypatch.setattr(LatentMonitor, "update", broken)
    with pytest.warns(UserWarning, match="rangewatch: internal error") as said:
        with watch_pipeline(pipe) as watch:
            out = generate(pipe).images
            out2 = generate(pipe).images
    assert torch.equal(ref, out) and torch.equal(ref, out2)
    # said once per piece, not again at the second generation
    ours = sorted(str(w.message).split(" while ")[0] for w in said if "rangewatch: internal error" in str(w.message))
    assert ours == ["rangewatch: internal error at rangewatch.pipeline.watch:decode",
                    "rangewatch: internal error at rangewatch.pipeline.watch:steps"]
    internal = [f for f in watch.findings if f.kind == "internal"]
    assert sorted(f.where for f in internal) == ["rangewatch.pipeline.watch:decode", "rangewatch.pipeline.watch:steps"]
    assert all("odd tensor" in f.observed for f in internal)
    assert_clean(pipe, StableDiffusionPipeline)


# ---------------------------------------------------------------------------- cleanup after an exception
def test_everything_removed_after_an_exception():
    pipe = sd_pipe()

    def fail(p, i, t, kw):
        if i == 1:
            raise RuntimeError("user callback failed")
        return {}

    watch = watch_pipeline(pipe, trace="all")
    with pytest.raises(RuntimeError, match="user callback failed"):
        with watch:
            generate(pipe, callback_on_step_end=fail)
    assert_clean(pipe, StableDiffusionPipeline)
    assert not watch.attached
    ref = generate(pipe).images  # the pipeline works as before
    with watch_pipeline(pipe):
        assert torch.equal(ref, generate(pipe).images)


# ---------------------------------------------------------------------------- no host sync per step
def test_per_step_path_does_not_sync(monkeypatch):
    pipe = sd_pipe("euler")
    orig = PipelineWatch._step

    def boom(*a, **k):
        raise AssertionError("host sync on the per-step path")

    def guarded(self, *a, **k):
        with monkeypatch.context() as m:
            for attr in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
                m.setattr(torch.Tensor, attr, boom)
            return orig(self, *a, **k)

    monkeypatch.setattr(PipelineWatch, "_step", guarded)
    with watch_pipeline(pipe) as watch:
        generate(pipe)
    assert not [f for f in watch.findings if f.kind == "internal"], watch.findings
    assert len(watch.previews) == 4


# ---------------------------------------------------------------------------- writer
def test_logger_gets_previews_histograms_and_findings(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    pipe = sd_pipe()
    writer = SummaryWriter(str(tmp_path))
    with watch_pipeline(pipe, logger=writer, check_steps=2) as watch:
        generate(pipe, latents=noise(1, 4, 16, 16) / SD_SCALE)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    images = acc.Tags()["images"]
    assert sorted(images) == ["rangewatch/pipeline/step_latents/call1/latent_preview"]
    assert [e.step for e in acc.Images(images[0])] == [0, 3]  # first and last step
    assert len(acc.Tags()["histograms"]) == 4  # one per latent channel
    text = [t for t in acc.Tags()["tensors"] if "findings" in t]
    assert text and "latent_scale" in acc.Tensors(text[0])[0].tensor_proto.string_val[0].decode()
    assert watch.findings[0].kind == "latent_scale"


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="with a vae"):
        watch_pipeline(object())
    pipe = sd_pipe()
    with pytest.raises(ValueError, match="trace"):
        watch_pipeline(pipe, trace="everything")
    with pytest.raises(ValueError, match="check_steps"):
        watch_pipeline(pipe, check_steps=0)
    with pytest.raises(rangewatch.ConfigError, match="'policy'.*'stop'.*'warn', 'raise', 'log'"):  # the engine's check
        watch_pipeline(pipe, policy="stop")
    assert rangewatch.watch_pipeline is watch_pipeline


# ---------------------------------------------------------------------------- SDXL-style
def sdxl_pipe():
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 16, cross_attention_dim=16,
        norm_num_groups=4,
    )
    _zero_out(unet.conv_out)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        scaling_factor=0.13025, force_upcast=True,  # the SDXL VAE's config
    )
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=EulerDiscreteScheduler(**SCHED))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_generate(pipe, **kw):
    g = torch.Generator().manual_seed(1)
    dt = pipe.unet.dtype
    args = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g).to(dt), pooled_prompt_embeds=torch.randn(1, 16, generator=g).to(dt),
                num_inference_steps=3, height=32, width=32, generator=torch.Generator().manual_seed(0), output_type="pt")
    args.update(kw)
    return pipe(**args).images  # add_time_ids come from height/width; negative embeds are zeros (force_zeros_for_empty_prompt)


def test_sdxl_correct_generation_silent_and_doubled_scale_caught():
    pipe = sdxl_pipe()
    cls = type(pipe)
    ref = sdxl_generate(pipe)
    with watch_pipeline(pipe) as watch:
        out = sdxl_generate(pipe)
        assert watch.convention == "sdxl_latent"
        sdxl_generate(pipe, latents=noise(1, 4, 16, 16) * 0.13025)
    assert torch.equal(ref, out)
    assert [(f.kind, f.where) for f in watch.findings] == [("latent_scale", "latents=")]
    assert "scaled twice" in watch.findings[0].observed and "std 0.13" in watch.findings[0].evidence
    assert_clean(pipe, cls)


@pytest.mark.slow
def test_sdxl_fp16_decode_force_upcast_is_the_fix():
    pipe = sdxl_pipe()
    pipe.to(torch.float16)
    with torch.no_grad():
        pipe.vae.decoder.up_blocks[0].resnets[0].conv1.weight.mul_(1e5)
    pipe.vae.register_to_config(force_upcast=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with watch_pipeline(pipe) as broken:
            sdxl_generate(pipe)
    origin = [f for f in broken.findings if f.kind == "nonfinite" and f.where.startswith("vae.")]
    assert origin and origin[0].where == "vae.decoder.up_blocks.0.resnets.0.conv1"
    assert "register_to_config(force_upcast=True)" in origin[0].fix  # StableDiffusionXLPipeline honours it
    pipe.vae.register_to_config(force_upcast=True)  # the fix it names: the pipeline decodes in fp32
    with watch_pipeline(pipe) as fixed:
        sdxl_generate(pipe)
    assert not [f for f in fixed.findings if f.kind == "nonfinite"], fixed.findings


# ---------------------------------------------------------------------------- Flux-style (packed token latents)
def flux_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    _zero_out(transformer.proj_out)  # velocity 0: the latents stay the unit starting noise
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=16, norm_num_groups=4, layers_per_block=1,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,  # Flux.1's VAE config
    )
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_generate(pipe, **kw):
    g = torch.Generator().manual_seed(1)
    args = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                num_inference_steps=3, height=32, width=32, generator=torch.Generator().manual_seed(0), output_type="pt")
    args.update(kw)
    return pipe(**args).images


def test_flux_packed_latents_unpacked_silent_and_unscaled_caught():
    pipe = flux_pipe()
    cls = type(pipe)
    ref = flux_generate(pipe)
    with watch_pipeline(pipe) as watch:
        out = flux_generate(pipe)
    assert torch.equal(ref, out) and watch.findings == []
    assert watch.convention == "flux_latent"
    assert watch.previews[(1, 2)].shape == (1, 3, 16, 16)  # (1, 64 tokens, 64) unpacked to (1, 16, 16, 16)
    packed = cls._pack_latents(noise(1, 16, 16, 16) / 0.3611, 1, 16, 16, 16)  # VAE-space spread: not scaled
    with watch_pipeline(pipe) as bad:
        flux_generate(pipe, latents=packed)
    assert [(f.kind, f.where) for f in bad.findings][:1] == [("latent_scale", "latents=")]
    assert "not scaled" in bad.findings[0].observed and "shift_factor" in bad.findings[0].fix
    assert_clean(pipe, cls)


# ---------------------------------------------------------------------------- on the engine: sinks, policy, de-duplication
def _events(logdir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(logdir, size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}).Reload()


@pytest.mark.parametrize("kind", ["SummaryWriter", "TensorBoardLogger"])
def test_findings_scalars_and_latent_previews_read_back_from_the_event_file(kind, tmp_path):
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    from rangewatch.checks.latents import preview_scale
    from rangewatch.sinks.loggers import findings_from_markdown

    if kind == "SummaryWriter":
        from torch.utils.tensorboard import SummaryWriter

        logger, logdir = SummaryWriter(str(tmp_path)), str(tmp_path)
    else:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(tmp_path), name="gen")
        logdir = logger.log_dir
    pipe = sd_pipe(cls=StableDiffusionImg2ImgPipeline)
    image = _astronaut() * 2 - 1  # [-1, 1] where VaeImageProcessor expects [0, 1]
    seen: list[torch.Tensor] = []  # the user's own view of the latents after each step: the reference

    def record(p, i, t, kw):
        seen.append(kw["latents"].detach().clone())
        return {}

    with watch_pipeline(pipe, logger=logger, check_steps=2, policy="log") as watch:
        pipe(image=image, **embeds(), num_inference_steps=4, strength=0.75, generator=torch.Generator().manual_seed(0),
             output_type="pt", callback_on_step_end=record)
    if kind == "SummaryWriter":
        logger.close()
    else:
        logger.experiment.flush()
    acc = _events(logdir)

    # the findings, as the engine's sink writes them (markdown with each finding's JSON), read back
    (text_tag,) = [t for t in acc.Tags()["tensors"] if t.startswith("rangewatch/findings")]
    md = acc.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
    back = findings_from_markdown(md)
    assert back and [f.key for f in back] == [f.key for f in watch.findings]
    assert ("mismatch", "image:input") in [(f.kind, f.where) for f in back]

    # the input image's engine tap: per-channel min / max / mean against numpy
    ref = image[0].numpy()
    for c in range(3):
        for stat, want in (("min", ref[c].min()), ("max", ref[c].max()), ("mean", ref[c].mean())):
            (ev,) = acc.Scalars(f"rangewatch_channels/image:input/{stat}/c{c}")
            assert ev.step == 1 and ev.value == pytest.approx(float(want), abs=1e-5)

    # the latents' per-step scalars against the latents the user's callback saw
    assert len(seen) == 3  # strength 0.75 of 4 steps
    for c in range(4):
        events = acc.Scalars(f"rangewatch/pipeline.call1.latents/max_abs/c{c}")
        assert [e.step for e in events] == [0, 1, 2]
        for e, z in zip(events, seen):
            assert e.value == pytest.approx(float(z[:, c].abs().max()), rel=1e-5)

    # the latent preview of each checked step (first, last): the PNG in the event file is watch.previews' grid
    tag_ = "rangewatch/pipeline/step_latents/call1/latent_preview"
    assert tag_ in acc.Tags()["images"]
    imgs = acc.Images(tag_)
    assert [e.step for e in imgs] == [i for (_, i) in sorted(watch.previews)] == [0, 2]
    for e, key in zip(imgs, sorted(watch.previews)):
        png = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")).astype(int)
        prev = watch.previews[key]
        k = preview_scale(int(prev.shape[-1]))
        grid = make_grid(prev.repeat_interleave(k, -1).repeat_interleave(k, -2), nrow=1, padding=2, pad_value=1.0)
        want = (grid.permute(1, 2, 0).numpy() * 255).astype(int)
        assert png.shape == want.shape and np.abs(png - want).max() <= 1
        assert png.std() > 0  # not a blank image


def test_policy_raise_on_doubled_scale_latents_stops_with_the_hooks_removed():
    pipe = sd_pipe()
    watch = watch_pipeline(pipe, policy="raise")
    with watch:
        with pytest.raises(rangewatch.RangeMismatchError) as err:
            generate(pipe, latents=noise(1, 4, 16, 16) * SD_SCALE)
        assert_clean(pipe, StableDiffusionPipeline)  # taken off before the error left the pipeline call
        assert not watch.attached
    (f,) = err.value.findings
    assert (f.kind, f.where) == ("latent_scale", "latents=") and "scaled twice" in f.observed
    assert "unit Gaussian noise" in f.expected and "scaling_factor (0.18215)" in f.fix
    assert "scaled twice" in str(err.value) and "Fix:" in str(err.value)  # seen, expected and the fix in the message
    assert watch.findings == [f]
    ref = generate(pipe).images  # the pipeline works as before
    with watch_pipeline(pipe, policy="raise"):  # and a correct generation does not raise
        assert torch.equal(ref, generate(pipe).images)


def test_policy_raise_on_a_bad_input_image_stops_before_denoising():
    pipe = sd_pipe(cls=StableDiffusionImg2ImgPipeline)
    steps: list[int] = []

    def count(p, i, t, kw):
        steps.append(i)
        return {}

    with watch_pipeline(pipe, policy="raise"):
        with pytest.raises(rangewatch.RangeMismatchError, match="image:input"):
            pipe(image=_astronaut() * 255, **embeds(), num_inference_steps=4, strength=0.75, output_type="pt",
                 callback_on_step_end=count)
        assert_clean(pipe, StableDiffusionImg2ImgPipeline)
    assert steps == []  # not one denoising step was spent


def test_a_finding_seen_in_two_calls_is_reported_once(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    pipe = sd_pipe()
    writer = SummaryWriter(str(tmp_path))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with watch_pipeline(pipe, logger=writer) as watch:
            generate(pipe, latents=noise(1, 4, 16, 16) * SD_SCALE)
            generate(pipe, latents=noise(1, 4, 16, 16, seed=4) * SD_SCALE)
    writer.close()
    assert [(f.kind, f.where) for f in watch.findings] == [("latent_scale", "latents=")]  # once, from the first call
    (warned,) = [w for w in said if "[latent_scale]" in str(w.message)]  # one warning (policy="warn")
    assert warned.filename == __file__  # pointing at the line that called the pipeline
    acc = _events(str(tmp_path))
    assert [e.step for e in acc.Tensors("rangewatch/findings/text_summary")] == [1]  # written when fresh, not again at call 2
    assert len(acc.Images("rangewatch/pipeline/step_latents/call2/latent_preview")) == 4  # call 2 is still watched


def test_readme_pipeline_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Diffusers pipelines at inference", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.startswith("[latent_scale] latents=: saw latents= not scaled")
    assert "vae.config.scaling_factor (0.18215)" in out
    assert (tmp_path / "rangewatch_out" / "findings.txt").exists()
