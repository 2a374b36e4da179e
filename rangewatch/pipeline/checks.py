"""The findings of :class:`rangewatch.pipeline.watch.PipelineWatch`, built on the host once per pipeline call.

One function per thing watched: :func:`input_image` (``mask_image=`` / ``ip_adapter_image=`` against
the mask processor and the image encoder's processor; ``image=`` is judged by the engine against
``VaeImageProcessor``'s expectation),
:func:`user_latents` (``latents=`` as the unit-Gaussian starting noise), :func:`steps` (NaN/Inf and
outliers while denoising), :func:`decode` (the decode's input latents and the decoded image's range)
and :func:`traced` (a :class:`~rangewatch.checks.numerics.ModuleTracer`'s findings with the fix in
diffusers' terms). Each reads the call's record (:class:`~rangewatch.pipeline.call.Call`) and what it needs of the
watch (:class:`~rangewatch.pipeline.call.Setup`), never the watch's module, and the latent monitors through their
public API. Sources: diffusers ``image_processor.py`` (``VaeImageProcessor.preprocess`` expects
[0, 1] and maps it to [-1, 1], skipping that with a FutureWarning when ``image.min() < 0``;
``postprocess`` clamps ``x / 2 + 0.5`` to [0, 1]), the pipelines' ``prepare_latents`` (``latents *
scheduler.init_noise_sigma``) and decode (``vae.decode(latents / scaling_factor + shift_factor)``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import Any

import torch

from ..findings.finding import Finding, clipping_finding, mismatch_finding, nonfinite_finding, note_finding
from ..checks.inference import infer_convention
from ..checks.latents import CAST_IS_CONTENT, LatentMonitor, hue_name
from ..checks.numerics import ModuleTracer, nan_image_finding
from ..stats.range_stats import RangeStats
from .call import Call, Setup

__all__ = ["decode", "decode_fix", "input_image", "steps", "traced", "user_latents"]

_SRC = "rangewatch.pipeline.watch"
_VAE_SRC = "diffusers VaeImageProcessor.preprocess: [0, 1] tensors, mapped to [-1, 1]"


def _cfg(obj: Any, key: str, default: Any = None) -> Any:
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return getattr(obj, key, default)
    v = cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)
    return default if v is None else v


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in values) + "]"


# ---------------------------------------------------------------------------- fixes in diffusers' terms
def decode_fix(pipe: Any, module: str | None = None) -> str:
    """How to get a finite fp16 decode, in diffusers' terms, for this pipeline."""
    cls = type(pipe).__name__
    try:
        honours = "force_upcast" in inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):
        honours = False
    where = f"the first module to overflow is {module}; " if module else ""
    parts = [
        where + "load the pipeline in bfloat16 (from_pretrained(..., torch_dtype=torch.bfloat16)), which has the range of fp32",
        "or keep the VAE in fp32 for the decode: pipe.vae.to(torch.float32) (what the deprecated pipe.upcast_vae() does) "
        "and decode latents.to(torch.float32)",
    ]
    if honours:
        parts.append(f"or pipe.vae.register_to_config(force_upcast=True): {cls} then upcasts the VAE for the decode itself")
    else:
        parts.append(f"(vae.config.force_upcast is not read by {cls}; the SDXL-family pipelines honour it)")
    parts.append("or, for an SDXL VAE, the fp16-fixed one: AutoencoderKL.from_pretrained('madebyollin/sdxl-vae-fp16-fix', "
                 "torch_dtype=torch.float16) passed as vae=")
    return "; ".join(parts)


def _denoiser_fix(module: str | None) -> str:
    return (
        (f"the first module to overflow is {module}; " if module else "")
        + "load the pipeline in bfloat16 (torch_dtype=torch.bfloat16) instead of float16; or keep that module in fp32 "
        "(pipe.transformer / pipe.unet .get_submodule(name).float() with its input cast to float)"
    )


# ---------------------------------------------------------------------------- input images
def input_image(pipe: Any, name: str, st: RangeStats) -> list[Finding]:
    """``mask_image=`` against [0, 1] and ``ip_adapter_image=`` against the image encoder's processor,
    from the statistics of their engine taps (``image=`` the engine judges itself)."""
    s = st.compute()
    if s.empty:
        return []
    lo, hi = float(s.range_min.min()), float(s.range_max.max())
    seen = f"values {lo:.4g} .. {hi:.4g} (per-channel minima {_fmt(s.range_min)}, maxima {_fmt(s.range_max)})"
    if name == "mask_image":
        if lo >= -1e-3 and hi <= 1 + 1e-3:
            return []
        return [mismatch_finding(
            where="mask_image", observed=f"mask values outside [0, 1] ({lo:.4g} .. {hi:.4g})",
            expected="a mask in [0, 1] (1 = repaint)", evidence=f"{seen}; the pipeline's mask_processor does not "
            "normalise, it binarises at 0.5 (mask < 0.5 -> 0), so a soft mask in another range moves its edge",
            fix="pass the mask in [0, 1]: mask / 255 for 0-255 masks, (mask + 1) / 2 for [-1, 1] ones",
            severity="warning", source="diffusers VaeImageProcessor(do_normalize=False, do_binarize=True) mask_processor",
        )]
    if name == "ip_adapter_image":
        return _ip_adapter(pipe, s, seen, lo, hi)
    return []  # image= is an engine tap with the VaeImageProcessor expectation: the engine judges it


def _ip_adapter(pipe: Any, s: Any, seen: str, lo: float, hi: float) -> list[Finding]:
    fe = getattr(pipe, "feature_extractor", None)
    if fe is None:
        return []
    rescale = bool(getattr(fe, "do_rescale", False))
    factor = float(getattr(fe, "rescale_factor", 1.0) or 1.0)
    src = f"{type(fe).__name__} of {type(pipe).__name__} (do_rescale={rescale}, rescale_factor={factor:.6g})"
    if rescale and factor < 0.1:
        top = 1.0 / factor
        if lo >= -1e-3 and hi <= 1 + 1e-3 and hi > 0.05:
            return [mismatch_finding(
                where="ip_adapter_image", observed="ip_adapter_image= tensor already in [0, 1]",
                expected=f"0 .. {top:.0f} (the processor rescales by {factor:.6g})",
                evidence=f"{seen}; the image encoder's processor multiplies by {factor:.6g} again, so the encoder sees "
                f"0 .. {hi * factor:.4g}: a nearly black image (transformers warns 'It looks like you are trying to rescale "
                "already rescaled images')", fix=f"pass image * {top:.0f} (or a PIL image / uint8 tensor)", severity="error", source=src,
            )]
        if lo < -0.05:
            return [mismatch_finding(
                where="ip_adapter_image", observed="ip_adapter_image= tensor with negative values",
                expected=f"0 .. {top:.0f}", evidence=f"{seen}; the processor rescales by {factor:.6g} and normalises with its "
                "own mean/std, so an already normalised image is normalised twice",
                fix=f"pass the un-normalised image in 0 .. {top:.0f} (or a PIL image)", severity="error", source=src,
            )]
        return []
    inf = infer_convention(s)
    if inf.confident and inf.name not in ("unit", "unknown"):
        return [mismatch_finding(
            where="ip_adapter_image", observed=f"ip_adapter_image= tensor looks like {inf.name}",
            expected="[0, 1] (the processor does not rescale)", evidence=inf.evidence, fix="pass the image in [0, 1]",
            severity="error", source=src,
        )]
    return []


# ---------------------------------------------------------------------------- latents= (starting noise)
def user_latents(w: Setup, mon: LatentMonitor) -> list[Finding]:
    """``latents=`` (``mon``: their monitor) judged as the unit Gaussian starting noise."""
    nf = mon.check(where="latents=")
    if nf and nf[0].kind == "nonfinite":
        return nf
    a = mon.analyse()
    if a is None:
        return []
    s = float(w.scale or 1.0)
    c = a.channels
    if w.latents_std is not None:
        raw = torch.tensor(list(w.latents_std), dtype=torch.float64)[:c] / s
    else:
        raw = torch.full((c,), 1.0 / s, dtype=torch.float64)
    sigma = float(getattr(getattr(w.pipe, "scheduler", None), "init_noise_sigma", 1.0))  # after the call: host
    hyps = {"right": torch.ones(c, dtype=torch.float64), "not scaled": raw, "scaled twice": 1.0 / raw}
    if sigma > 1.5:
        hyps["init_noise_sigma applied twice"] = torch.full((c,), sigma, dtype=torch.float64)
    std = a.scale_std
    ok = torch.isfinite(std) & (std > 0)
    if not bool(ok.any()):
        return []
    ls = std[ok].log()
    d = {k: float((ls - v[ok].log()).abs().mean()) for k, v in hyps.items()}
    best = min(d, key=d.get)
    if best == "right" or not (d[best] < 0.5 * d["right"] and d["right"] > math.log(1.5)):
        return []
    g = float(ls.mean().exp())
    fixes = {
        "not scaled": f"latents= are the starting noise in the model's latent space: pass unit Gaussian noise "
        f"(randn_tensor / torch.randn with a generator); VAE latents must be multiplied by vae.config.scaling_factor ({s:g})"
        + (f" after subtracting shift_factor ({w.shift:g})" if w.shift else ""),
        "scaled twice": f"do not multiply the noise (or already scaled latents) by scaling_factor ({s:g}) again: "
        "pass unit Gaussian noise / latents scaled once",
        "init_noise_sigma applied twice": f"pass unit Gaussian noise: the pipeline multiplies latents= by "
        f"scheduler.init_noise_sigma ({sigma:.4g}) itself",
    }
    return [Finding(
        # the figures go to the evidence: the finding's key (what de-duplicates it across calls) stays the
        # same for every call that passes latents= with the same mistake, whatever noise it drew
        kind="latent_scale", where="latents=", observed=f"latents= {best}",
        expected="unit Gaussian noise (std about 1) in the model's latent space",
        evidence=f"std {g:.3g} (geometric mean of the per-channel std {_fmt(std)}); log-distance to "
        + ", ".join(f"'{k}' {v:.2f}" for k, v in d.items())
        + f"; the pipeline multiplies latents= by scheduler.init_noise_sigma ({sigma:.4g}) before denoising",
        fix=fixes[best], severity="error", source=f"{type(w.pipe).__name__}.prepare_latents; {w.convention}",
    )]


# ---------------------------------------------------------------------------- denoising steps
def steps(w: Setup, call: Call, *, skip: bool = False) -> list[Finding]:
    """``skip``: the latents= finding already explains the latents' range (outliers are not judged)."""
    if not call.steps:
        return []
    rows = torch.stack(call.steps).double().cpu()  # (S, C, 4): the one transfer of the per-step record
    out: list[Finding] = []
    bad = (rows[:, :, 3].sum(dim=1) > 0).nonzero().flatten().tolist()
    if bad:
        first = int(bad[0])
        n = float(rows[first, :, 3].sum())
        traced = w.trace == "all"
        out.append(nonfinite_finding(
            "denoising latents", observed=f"NaN/Inf in the latents from step {first}",
            expected="finite latents", evidence=f"{n:.0f} non-finite values after step {first} of {rows.shape[0]} "
            f"(steps with NaN/Inf: {bad[:8]}{' ...' if len(bad) > 8 else ''}); the decode of them is a black image",
            fix=("see the denoiser's nonfinite finding for the module; " if traced else
                 "watch_pipeline(pipe, trace='all') names the first module that produced them; ") + _denoiser_fix(None),
            step=first, source=_SRC,
        ))
    last = rows.shape[0] - 1
    traj = ", ".join(f"{i}: {float(rows[i, :, 2].max()):.3g}" for i in sorted(call.monitors) if i <= last)
    judged = [] if skip else [i for i in sorted(call.monitors) if not (call.decodes and i == last)]
    for i in judged:
        mon = call.monitors[i]
        a = mon.analyse()
        if a is None or bool(a.summary.nonfinite_seen.any()):
            continue
        if not mon.outlying(a):
            continue
        b, t = mon.conv.boundary, mon.soft_threshold
        out.append(Finding(
            kind="latent_outliers", where="denoising latents", observed=f"latent values beyond ±{b:g} while denoising",
            expected=f"noise-normalised latents within about ±{b:g}",
            evidence=f"at step {i} (divided by the noise level sqrt(sigma^2 + 1) where the scheduler is sigma-parameterised) "
            f"{a.over_share:.2%} of values have |x| > {t:g} and they reach {a.max_abs:.3g}; max |x| (model space) per "
            f"checked step: {traj}", fix=f"soft-clamp in a callback_on_step_end: return {{'latents': "
            f"rangewatch.soft_clamp(latents, threshold={t:g}, boundary={b:g})}} (and centre the channel means), "
            "as in Vass's SDXL latent-space article; or lower guidance_scale", severity="warning", step=i,
            source=mon.conv.source,
        ))
        break
    if call.monitors and not call.decodes and last in call.monitors and not skip:  # output_type="latent": judge the last step
        out += _judge_cast(w, call, call.monitors[last], _final_latents(w, call.monitors[last], "final latents", manual=False, step=last))
    return out


# ---------------------------------------------------------------------------- decode
def decode(w: Setup, call: Call, mon: LatentMonitor, img: RangeStats | None, *, skip_scale: bool,
           steps_nonfinite: bool = False) -> list[Finding]:
    """The decode's input latents and output image (``img``: None when the decode returned no float image). NaN
    in the input is reported once (by the denoising steps when they saw it first), and the decoded image is not
    judged then: its NaN is the input's."""
    bad_input = bool(mon.summary().nonfinite_seen.any())
    if bad_input:
        return [] if steps_nonfinite else [f for f in _final_latents(w, mon, "vae.decode input", manual=call.index == 0)
                                           if f.kind == "nonfinite"]
    out = [] if skip_scale else _final_latents(w, mon, "vae.decode input", manual=call.index == 0)
    return _judge_cast(w, call, mon, out) + ([] if img is None else _decoded(w, img))


def _judge_cast(w: Setup, call: Call, mon: LatentMonitor, found: list[Finding]) -> list[Finding]:
    """The final latents' mean colour is content unless the denoising steps show it drifting there: then the
    ``color_cast`` finding is a warning with the drift as evidence; otherwise it is dropped (a colourful image
    is silent)."""
    out = []
    for f in found:
        if f.kind != "color_cast":
            out.append(f)
            continue
        ev = drift(w, call, mon) if call.decodes or call.steps else None
        if ev is None:
            continue
        content = f.evidence.removesuffix(CAST_IS_CONTENT)
        out.append(replace(
            f, severity="warning", evidence=ev + "; " + content,
            fix="find what pushes the means during sampling (a noise offset or latents_mean added in a callback, a shift "
            "applied twice, a guidance or scheduler setting); centring the final latents per sample and channel "
            "(z - z.mean(dim=(-2, -1), keepdim=True)) removes the drift and the image's own mean colour with it",
        ))
    return out


def _final_latents(w: Setup, mon: LatentMonitor, where: str, *, manual: bool, step: int | None = None) -> list[Finding]:
    """The full latent checks on the final (model-space) latents, with fixes for a pipeline."""
    out: list[Finding] = []
    s, sh = float(w.scale or 1.0), float(w.shift or 0.0)
    undo = f"latents / {s:g}" + (f" + {sh:g}" if sh else "")
    decoding = where.startswith("vae.decode")
    raw = ""
    if decoding:
        summ = mon.summary()
        lo, hi = float(summ.finite_min.min()), float(summ.finite_max.max())
        if math.isfinite(lo) and math.isfinite(hi):
            raw = f"; the decoder's input (unscaled, z / {s:g}" + (f" + {sh:g}" if sh else "") + f") spans {lo / s + sh:.3g} .. {hi / s + sh:.3g}"
    for f in _latent_checks(mon, step, where):
        if raw and f.kind in ("latent_scale", "latent_outliers"):
            f = replace(f, evidence=f.evidence + raw)
        if f.kind == "latent_scale":
            if "twice" in f.observed and decoding:  # model space std ~ scale: the decoder got model-space latents
                f = replace(f, observed="vae.decode got latents not divided by scaling_factor",
                            fix=f"decode vae.decode({undo}): latents from the denoiser are in the model's space "
                            "(z_vae - shift_factor) * scaling_factor")
            elif "not scaled" in f.observed and decoding:
                f = replace(f, observed="vae.decode got latents divided by scaling_factor twice",
                            fix=f"divide by vae.config.scaling_factor ({s:g}) once: vae.decode({undo})")
            if decoding and not manual:
                f = replace(f, evidence=f.evidence + f"; {type(w.pipe).__name__} divides by scaling_factor itself, so the "
                            "denoised latents are off scale: a denoiser trained for another VAE or scaling factor?")
        elif f.kind == "latent_outliers":
            f = replace(f, fix=f.fix.split("; if this is")[0] + ": in a pipeline, a callback_on_step_end over the last steps "
                        "returning {'latents': rangewatch.soft_clamp(latents)}, or decode it yourself from output_type='latent'")
        elif f.kind == "nonfinite":
            f = replace(f, fix="watch_pipeline(pipe, trace='all') names the denoiser module that produced them; " + _denoiser_fix(None))
        out.append(f)
    return out


def _signal(scheduler: Any, i: int, steps: int) -> tuple[float, float] | None:
    """``(signal coefficient, noise in data units)`` of the latents after denoising step ``i`` (host numbers,
    read after the call): ``x_t = c * x0 + noise``. Sigma-parameterised schedulers (``init_noise_sigma > 1``,
    Euler / DPM++ Karras: ``x = x0 + sigma * eps``): ``c = 1``, noise ``sigma``; flow matching (``sigmas`` in
    [0, 1], SD3 / Flux: ``x = (1 - s) x0 + s eps``): ``c = 1 - s``, noise ``s / (1 - s)``; variance preserving
    (``alphas_cumprod``, DDIM / DDPM / PNDM): ``c = sqrt(abar)``, noise ``sqrt((1 - abar) / abar)``.
    (diffusers schedulers: scheduling_euler_discrete.py, scheduling_flow_match_euler_discrete.py,
    scheduling_ddim.py.) None when the scheduler says neither."""
    if i + 1 >= steps:
        return 1.0, 0.0  # after the last step: the denoised latents
    sigmas = getattr(scheduler, "sigmas", None)
    init = getattr(scheduler, "init_noise_sigma", 1.0)
    init = float(init) if not isinstance(init, torch.Tensor) else float(init.max())
    if isinstance(sigmas, torch.Tensor) and sigmas.dim() == 1 and sigmas.numel() > i + 1:
        sg = float(sigmas[i + 1])
        if init > 1.0 + 1e-3:
            return 1.0, sg
        if 0.0 <= sg < 1.0:
            return 1.0 - sg, sg / max(1.0 - sg, 1e-6)
        return None
    ac = getattr(scheduler, "alphas_cumprod", None)
    ts = getattr(scheduler, "timesteps", None)
    if isinstance(ac, torch.Tensor) and isinstance(ts, torch.Tensor) and ts.numel() > i + 1:
        a = float(ac[int(ts[i + 1])])
        return math.sqrt(a), math.sqrt(max(1.0 - a, 0.0) / max(a, 1e-12))
    return None


def drift(w: Setup, call: Call, mon: LatentMonitor) -> str | None:
    """Evidence of a colour cast the generation *drifted* into: the channel means, read as estimates of the
    clean image's (latents / signal coefficient), moving through the last denoising steps up to the decode in
    a direction the latent-to-RGB factors turn into a hue. A correct generation of a colourful image settles
    its mean colour early (content: a sunset is orange from its first clear steps); a biased offset, a noise
    offset or a latents_mean slip keeps pushing. None when there is no drift, or too few clear steps to tell."""
    if not call.steps:
        return None
    rows = torch.stack(call.steps).double().cpu()
    summ = mon.summary()
    final = summ.mean.double()
    c = final.numel()
    if rows.shape[1] != c:
        return None
    n = float(summ.count.double().mean())
    sched = getattr(w.pipe, "scheduler", None)
    steps = rows.shape[0]
    points: list[tuple[int, torch.Tensor, float]] = []
    for i in range(steps):
        sig = _signal(sched, i, call.num_steps or steps)
        if sig is None:
            return None
        coef, noise = sig
        if noise <= 1.0 and coef > 0.3:  # the clean image dominates these latents' means
            points.append((i, rows[i, :, 0] / coef, noise))
    if not points:
        return None
    i0, first, noise0 = points[0]
    delta = final - first
    floor = 4.0 * noise0 / math.sqrt(max(n, 1.0))  # what the remaining noise can move a channel mean by
    if float(delta.abs().max()) <= floor:
        return None
    conv = mon.conv
    if conv.latent_rgb is not None and len(conv.latent_rgb) == c:
        f = torch.tensor(conv.latent_rgb, dtype=torch.float64)
        push = delta @ f
        chroma = push - push.mean()
        fin = final @ f
        fin_chroma = fin - fin.mean()
        size, fsize = float(chroma.norm()), float(fin_chroma.norm())
        if size <= mon.cast_threshold or fsize <= mon.cast_threshold or size < 0.5 * fsize:
            return None
        what = f"through the latent-to-RGB factors a push of chroma {size:.3f} towards {hue_name(chroma.tolist())}"
    else:
        rms = float(delta.pow(2).mean().sqrt())
        if rms <= 0.25:
            return None
        what = f"an RMS move of {rms:.3g} (latent std units)"
    traj = "; ".join(f"step {i}: {_fmt(m)}" for i, m, _ in points[-4:])
    return (f"the channel means drifted after the image had formed: as estimates of the clean latents (latents / the "
            f"scheduler's signal coefficient) they were {_fmt(first)} at step {i0} and are {_fmt(final)} at the decode, a move "
            f"of {_fmt(delta)} ({what}; the remaining noise explains at most {floor:.3g} per channel); trajectory {traj}")


def _certain_scale(f: Finding) -> bool:
    """Generated latents vary in spread (a flat image, few steps): only a missing or doubled factor, an
    order of magnitude, is certain; "another VAE's factor" (0.13025 vs 0.18215) and "matching neither" are not."""
    return f.kind == "latent_scale" and ("twice" in f.observed or "not scaled" in f.observed)


def _latent_checks(mon: LatentMonitor, step: int | None, where: str) -> list[Finding]:
    """``LatentMonitor.check``, except that an uncertain scale finding is dropped and the shift / colour /
    outlier checks it would have suppressed run instead."""
    found = mon.check(step=step, where=where)
    if not (len(found) == 1 and found[0].kind == "latent_scale" and not _certain_scale(found[0])):
        return found
    a = mon.analyse()
    return [] if a is None else mon.check_beyond_scale(a, step, where)


def _decoded(w: Setup, img: RangeStats) -> list[Finding]:
    """NaN/Inf in the decoded image and the share its postprocess clamps."""
    out: list[Finding] = []
    summ = img.compute()
    if summ.empty:
        return out
    nan = nan_image_finding("vae.decode output", summ)
    if nan is not None:
        out.append(replace(nan, fix=decode_fix(w.pipe), source=_SRC))
        return out
    n = float(summ.detail_count.sum())
    clamped = float((summ.below + summ.above).sum())
    if n and clamped / n > w.clip_share:
        lo, hi = float(summ.finite_min.min()), float(summ.finite_max.max())
        out.append(clipping_finding(
            where="vae.decode output", observed=f"{clamped / n:.1%} of decoded values outside [-1, 1]",
            expected="decoded pixels within [-1, 1]", evidence=f"decoded range {lo:.3g} .. {hi:.3g} (per-channel "
            f"minima {_fmt(summ.finite_min)}, maxima {_fmt(summ.finite_max)}); the pipeline's postprocess clamps "
            "(x / 2 + 0.5) to [0, 1] and they are lost without a warning",
            fix="bring the latents into the decoder's range first (see latent_outliers / colour cast: soft clamp and centre "
            "the latents before the decode); if the latents look fine, this is the decoder's own overshoot",
            severity="warning", step=None, source="diffusers VaeImageProcessor.postprocess",
        ))
    return out


def traced(w: Setup, tracer: ModuleTracer) -> list[Finding]:
    is_vae = tracer.model is w.vae
    prefix = "vae." if is_vae else ("unet." if tracer.model is getattr(w.pipe, "unet", None) else "transformer.")
    out = []
    for f in tracer.check():
        if is_vae and f.observed.startswith("NaN/Inf already in the input"):
            continue  # NaN that came with the latents: the latent findings say where from
        if f.kind not in ("nonfinite", "fp16_headroom"):
            out.append(f)
            continue
        name = prefix + f.where
        fix = decode_fix(w.pipe, name) if is_vae else _denoiser_fix(name)
        what = "steps are vae.decode calls" if is_vae else "steps are denoiser calls"
        out.append(replace(f, where=name, fix=fix, evidence=f"{f.evidence} ({what})"))
    for note in getattr(tracer, "notes", []):  # what the tracer skipped or switched off (reported once: findings de-duplicate)
        out.append(note_finding(prefix.rstrip("."), note, evidence="ModuleTracer note", source="rangewatch.checks.numerics.ModuleTracer"))
    return out
