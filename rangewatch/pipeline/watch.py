"""Diffusers pipelines at inference: watch the denoising latents, the VAE decode and the input images.

:func:`watch_pipeline` returns a :class:`PipelineWatch`, a context manager for any diffusers
``DiffusionPipeline`` with a ``vae`` (and a ``unet`` or ``transformer``)::

    watch = rangewatch.watch_pipeline(pipe)
    with watch:
        image = pipe(prompt_embeds=embeds, num_inference_steps=30).images[0]
    print(watch.findings)

While the block runs:

* every call of the pipeline goes through a wrapper (the pipeline's class is swapped for a subclass
  whose ``__call__`` wraps the original, restored on exit) that chains a ``callback_on_step_end`` in
  front of the user's own (which still runs, sees the tensors it asked for, and whose return value
  the pipeline honours). Per denoising step it queues per-channel mean / std / max |x| / non-finite
  counts of the latents on their device; at a few steps (first, a few in between, last) it also
  feeds the engine's :class:`~rangewatch.checks.latents.LatentMonitor` of that step and keeps an RGB preview. Flux-style packed
  token latents are unpacked with the pipeline's own ``_unpack_latents``. Nothing is read to the
  host until the call returns;
* the latents are in the *model* space ``(z_vae - shift) * scale``. They start as unit Gaussian noise
  times ``scheduler.init_noise_sigma``, so a user's ``latents=`` is judged as unit noise (not
  scaled, scaled twice, or already multiplied by ``init_noise_sigma``), intermediate steps are
  divided by their noise level ``sqrt(sigma**2 + 1)`` (sigma-parameterised schedulers, as Euler) and
  checked for NaN/Inf and outliers, and the final latents (the decode's input mapped back to model
  space) get the full latent checks: scale, shift, colour cast, outliers with the soft-clamp advice;
* ``vae.decode`` is wrapped (an instance attribute, removed on exit): its input (the unscaled
  latents), a :class:`~rangewatch.checks.numerics.ModuleTracer` over the VAE's modules (the first module
  producing NaN/Inf, fp16 headroom) and the decoded image's range before the pipeline's
  ``postprocess`` clamps it to [0, 1]; fixes are given in diffusers' terms;
* ``image=`` / ``mask_image=`` / ``ip_adapter_image=`` tensors are compared with what
  ``VaeImageProcessor`` ([0, 1], mapped to [-1, 1]) and the image encoder's processor expect.

Results are bit-identical with and without watching: nothing is written into the pipeline's
tensors, and no host sync happens per step. Every hook, wrapper and callback is removed on exit,
also after an exception. A failure inside rangewatch is reported once as an ``internal`` finding and
switches that piece off; it never breaks the generation.

This is a front end of the engine (:class:`rangewatch.Watch`, held as :attr:`PipelineWatch.engine`), driven
through its public API only; everything it measures runs in the engine:

* the input images are engine taps (``image:input``, ``mask_image:input``, ``ip_adapter_image:input``),
  fed through :meth:`~rangewatch.Watch.tensor` and checked at the start of each call (one read of
  their statistics); ``image:input`` carries the expectation of ``VaeImageProcessor`` ([0, 1], the
  convention object), so the engine's own verdict judges it;
* ``latents=``, the checked denoising steps (divided by their noise level), the decode's input (model space)
  and the decoded image are the engine's *judged taps* (:meth:`~rangewatch.Watch.judged.tap`,
  :mod:`rangewatch.engine.judged_taps`): the engine holds their statistics (a
  :class:`~rangewatch.checks.latents.LatentMonitor` or :class:`~rangewatch.stats.range_stats.RangeStats` with
  this front end's settings, keyed by call, step or decode, fed on the device), and judges them at the end
  of each call with this front end's judges, the rules of :mod:`rangewatch.pipeline.checks` (the engine's own
  tap checks would judge and name them differently: an info ``color_cast`` on a correct, colourful image, a
  second ``nonfinite`` for a decode of NaN latents; nor does the engine write per-tap scalars for them);
* the VAE's and (``trace="all"``) the denoiser's :class:`~rangewatch.checks.numerics.ModuleTracer` are the
  engine's front-end tracers (:meth:`~rangewatch.Watch.judged.trace`): placed, owned and taken off by the engine,
  stepped by this front end per decode (:meth:`~rangewatch.Watch.trace_step`) or by each denoiser forward, and
  judged with the judged taps;
* every finding goes through the engine's findings log in one report per call
  (:meth:`~rangewatch.Watch.judged.check`; a decode outside a call at once): each reported once across calls, in
  the order latents=, steps, traced modules (the module that overflowed first, before what it caused), decodes;
  the policy applied (``policy="raise"`` raises :class:`~rangewatch.RangeMismatchError` after every hook and
  wrapper is taken off), written to the engine's sinks (``logger=``: a ``SummaryWriter`` or a Lightning logger);
* a failing tap goes through the engine's internal-error path (reported once, only that tap switched off, and
  the piece of this watch that feeds it), a failing piece of the watch through :meth:`~rangewatch.Watch.internal`;
* the latent previews and per-step latent scalars are written through :attr:`~rangewatch.Watch.sink`.

What a call records is a :class:`rangewatch.pipeline.call.Call` (the per-step rows on the device, the checked
steps' window, the keys of the call's decodes); the judges read it as their check's context.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from typing import Any, Callable, Mapping

import torch

from . import checks as pc
from .call import Call as _Call  # the per-call record (pipeline/call.py: the checks read it without importing this module)
from ..rng import kept_rng, rng_kept
from ..expect.conventions import get_convention
from ..engine.judged_taps import Judging
from ..engine.watch import Watch
from ..expect.expectation import Expectation
from ..findings.finding import Finding, RangeMismatchError
from ..checks.latents import LatentMonitor, latent_preview
from ..expect.vae_latents import latent_convention_of, latents_to_model
from ..taps.layout import convention_channel_dim
from ..stats.range_stats import RangeStats
from ..sinks.files import append_findings

__all__ = ["PipelineWatch", "watch_pipeline"]

_SRC = "rangewatch.pipeline.watch"
_MISSING = object()
_IMAGE_SRC = ("diffusers VaeImageProcessor.preprocess: [0, 1] tensors, mapped to [-1, 1] by 2x - 1; a tensor with "
              "image.min() < 0 skips that mapping (FutureWarning: [-1, 1] tensors are deprecated)")
_INPUTS = ("image", "mask_image", "ip_adapter_image")
#: what each guarded piece of the watch does (said when it fails and is switched off)
_PIECES = {
    "inputs": "reading the input images and latents= of a pipeline call",
    "steps": "watching the denoising latents through callback_on_step_end",
    "decode": "watching vae.decode (its input latents, the decoded range, the VAE tracer)",
    "judge": "judging what a pipeline call recorded",
    "write": "writing the latent previews and scalars",
}
_log = logging.getLogger("rangewatch.pipeline.watch")
#: the engine's judged taps and tracers of this front end, in the order a call's findings are judged and reported:
#: latents= (keyed by call), the checked denoising steps (keyed by step), the VAE and denoiser tracers, the decodes'
#: input latents (keyed by decode; their judge reads the decoded images' tap of the same key)
_USER, _STEPS, _VAE, _DENOISER, _DECODE_IN, _DECODE_OUT = (
    "latents=", "denoising latents", "vae", "denoiser", "vae.decode:input", "vae.decode:output")
_JUDGED = (_USER, _STEPS, _VAE, _DENOISER, _DECODE_IN, _DECODE_OUT)
_CONSEQUENCE = "that part of the pipeline watch is switched off; the generation is unaffected"


def _say(level: str, text: str) -> None:
    """The pipeline front end's voice: findings as warnings (pointing at the user's line that called the
    pipeline, not at rangewatch's, diffusers' or torch's), the rest to the ``rangewatch.pipeline.watch`` logger."""
    if level != "warn":
        _log.info(text)
        return
    import sys

    inside = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (sys.modules[__package__.partition(".")[0]], sys.modules.get("diffusers"), torch) if m is not None and getattr(m, "__file__", None))
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(text, UserWarning, stacklevel=level)


def watch_pipeline(pipe: Any, **kwargs: Any) -> "PipelineWatch":
    """A :class:`PipelineWatch` for ``pipe``; use it as a context manager around the pipeline calls."""
    return PipelineWatch(pipe, **kwargs)


def _config_get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def _levels(scheduler: Any, init_sigma: Any, device: torch.device) -> torch.Tensor | float:
    """``sqrt(sigma**2 + 1)`` per entry of ``scheduler.sigmas`` where ``init_noise_sigma > 1`` (decided on
    the device when it is a tensor), else 1.0. No read-back of tensor values."""
    sigmas = getattr(scheduler, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        return 1.0
    if not isinstance(init_sigma, torch.Tensor) and not init_sigma > 1.0 + 1e-3:
        return 1.0  # a Python number: variance preserving or flow matching
    sg = sigmas.detach().float()
    lv = torch.sqrt(sg * sg + 1.0)
    if isinstance(init_sigma, torch.Tensor):
        ins = init_sigma.detach().float().to(sg.device)
        lv = torch.where(ins > 1.0 + 1e-3, lv, torch.ones_like(lv))
    if lv.device != device:
        lv = (lv.pin_memory() if device.type == "cuda" and lv.device.type == "cpu" else lv).to(device, non_blocking=True)
    return lv


class PipelineWatch:
    """Watch a diffusers pipeline's latents, VAE decode and input images while it generates.

    Args:
        pipe: a diffusers ``DiffusionPipeline`` with a ``vae``.
        check_steps: how many denoising steps are read in full (first, evenly spaced, last).
        logger: a TensorBoard ``SummaryWriter`` or a Lightning logger (TensorBoard, W&B, MLflow, CSV):
            the engine's sinks write the findings, the input taps' statistics, and per checked step the
            latent previews (histograms too on TensorBoard) and per step the latents' per-channel scalars.
        policy: what a fresh finding does, as in the engine: ``"warn"`` (a warning each), ``"log"``
            (kept and written only), ``"raise"`` (:class:`~rangewatch.RangeMismatchError` once the call's
            findings are judged: at the start of a call for bad input images, after it for the rest;
            every hook is taken off before it is raised).
        out_dir: a folder to save the latent previews (PNG) and ``findings.txt`` in.
        trace: ``"vae"`` (default) traces the VAE's modules during the decode; ``"all"`` also traces the
            denoiser at every step (names the module behind NaN latents; costs a few kernels per module);
            ``"none"`` traces nothing.
        headroom_share: ``fp16_headroom`` fires when an fp16 module's output reaches this share of 65504.
        clip_share: ``clipping`` fires when more than this share of decoded values lies outside [-1, 1]
            (5%, the overshoot share the preview checks also tolerate).

    After the block (or after each pipeline call) ``findings`` holds the de-duplicated findings and
    ``previews`` maps ``(call, step)`` to the ``(N, 3, H, W)`` latent previews in [0, 1] (CPU).

    Example (``pipe`` built offline from tiny components, as in ``tests/pipeline/test_pipeline.py``)::

        watch = watch_pipeline(pipe, out_dir="rangewatch_out")
        with watch:
            pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, num_inference_steps=4, output_type="pt")
        for f in watch.findings:
            print(f)
    """

    @rng_kept
    def __init__(
        self,
        pipe: Any,
        *,
        check_steps: int = 5,
        logger: Any = None,
        out_dir: str | os.PathLike | None = None,
        trace: str = "vae",
        headroom_share: float = 0.5,
        clip_share: float = 0.05,
        policy: str = "warn",
    ) -> None:
        vae = getattr(pipe, "vae", None)
        if vae is None or not isinstance(vae, torch.nn.Module):
            raise TypeError(f"watch_pipeline needs a diffusers pipeline with a vae, got {type(pipe).__name__}")
        if not isinstance(check_steps, int) or check_steps < 1:
            raise ValueError(f"check_steps must be a positive int, got {check_steps!r}")
        if trace not in ("vae", "all", "none"):
            raise ValueError(f"trace must be 'vae', 'all' or 'none', got {trace!r}")
        if not 0 <= clip_share < 1:
            raise ValueError(f"clip_share must be in [0, 1), got {clip_share!r}")
        self.pipe = pipe
        self.vae = vae
        self.denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        self.check_steps = check_steps
        self.logger = logger
        self.out_dir = os.fspath(out_dir) if out_dir is not None else None
        self.trace = trace
        self.headroom_share = float(headroom_share)
        self.clip_share = float(clip_share)
        cfg = getattr(vae, "config", None)
        self.scale = _config_get(cfg, "scaling_factor")
        self.shift = _config_get(cfg, "shift_factor") or 0.0
        self.latents_mean = _config_get(cfg, "latents_mean")
        self.latents_std = _config_get(cfg, "latents_std")
        # the VAE's own latent convention, every family (rangewatch.expect.vae_latents): config, LTX buffers
        self.latent_convention = latent_convention_of(vae)
        if self.latent_convention is not None and self.latents_mean is None:
            self.latents_mean = self.latent_convention.latents_mean
            self.latents_std = self.latent_convention.latents_std
        #: the engine this front end drives: findings log, policy, sinks, input taps
        self.engine = Watch(
            policy=policy, watch_visualization=False, derive_expectations=False, check_first_n=1, log_every_n_steps=1,
            messages=_say, loggers=[logger] if logger is not None else None,
        )
        proc = getattr(pipe, "image_processor", None)
        if proc is None or pc._cfg(proc, "do_normalize", True):  # the processor maps [0, 1] to [-1, 1]
            self.engine.expectations["image:input"] = Expectation(get_convention("unit"), source=_IMAGE_SRC, origin="model")
        if self.latent_convention is not None:  # the latents' and the decode's statistics: judged taps of the engine
            conv = self.latent_convention
            for name, piece, make, judge in (
                (_USER, "inputs", lambda: LatentMonitor(conv, preview_samples=0, sync_on_compute=False), self._judge_user),
                (_STEPS, "steps", lambda: LatentMonitor(conv, preview_samples=1, sync_on_compute=False), self._judge_steps),
                (_DECODE_IN, "decode", lambda: LatentMonitor(conv, preview_samples=1, sync_on_compute=False), self._judge_decodes),
                (_DECODE_OUT, "decode", lambda: RangeStats(channel_dim=1, bounds="symmetric", sync_on_compute=False), None),
            ):
                self.engine.judged.tap(name, make, judge, where=f"{_SRC}:{piece}", what=_PIECES[piece], consequence=_CONSEQUENCE)
        self.previews: dict[tuple[int, int], torch.Tensor] = {}
        self._off: set[str] = set()
        self._orig_class: type | None = None
        self._sub: type | None = None
        self._decode_patched = False
        self._prev_decode: Any = _MISSING
        self._call: _Call | None = None
        self._calls = 0
        self._decode_count = 0
        self._active = False

    # ------------------------------------------------------------------ attach / detach
    def __enter__(self) -> "PipelineWatch":
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @rng_kept
    def attach(self) -> "PipelineWatch":
        """Install the call wrapper, the decode wrapper and the tracers (idempotent)."""
        if self._active:
            return self
        try:
            self._attach()
        except BaseException:
            self.detach()
            raise
        self._active = True
        return self

    def _attach(self) -> None:
        pipe, watch = self.pipe, self
        self._orig_class = cls = type(pipe)
        orig_call = cls.__call__

        @functools.wraps(orig_call)
        def __call__(self_: Any, *args: Any, **kwargs: Any) -> Any:
            return watch._run(orig_call, self_, args, kwargs)

        self._sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        pipe.__class__ = self._sub
        orig_decode = self.vae.decode  # bound method

        @functools.wraps(orig_decode)
        def decode(z: Any, *args: Any, **kwargs: Any) -> Any:
            return watch._decode(orig_decode, z, args, kwargs)

        self._prev_decode = self.vae.__dict__.get("decode", _MISSING)  # another watch's wrapper, if any
        self.vae.decode = decode  # instance attribute shadows the class method
        self._decode_patched = True
        # the tracers are the engine's, judged here: the VAE's stepped per decode, the denoiser's per forward
        judge = {"where": f"{_SRC}:judge", "consequence": _CONSEQUENCE}
        if self.trace != "none":
            self.engine.judged.trace(_VAE, self.vae, self._judge_tracer, enabled=False, headroom_share=self.headroom_share, **judge)
        if self.trace == "all" and isinstance(self.denoiser, torch.nn.Module):
            self.engine.judged.trace(_DENOISER, self.denoiser, self._judge_tracer, auto_step=True,
                                     headroom_share=self.headroom_share, **judge)

    @rng_kept
    def detach(self) -> None:
        """Remove everything :meth:`attach` installed; recorded findings stay."""
        if self._orig_class is not None and type(self.pipe) is self._sub:
            self.pipe.__class__ = self._orig_class
        self._orig_class = self._sub = None
        if self._decode_patched:
            if self._prev_decode is _MISSING:
                self.vae.__dict__.pop("decode", None)
            else:
                self.vae.__dict__["decode"] = self._prev_decode
            self._decode_patched = False
        self.engine.judged.untrace()
        self._active = False

    @property
    def convention(self) -> str | None:
        """Name of the VAE's latent convention (:attr:`latent_convention`, read from its config; a custom
        one is not registered in the catalogue), or ``None`` when the config has no scaling."""
        return None if self.latent_convention is None else self.latent_convention.name

    @property
    def attached(self) -> bool:
        return self._active

    @property
    def findings(self) -> list[Finding]:
        """Every finding so far (the engine's findings log: each once, across calls; notes and internal errors included)."""
        return self.engine.findings

    @property
    def policy(self) -> str:
        return self.engine.policy

    # ------------------------------------------------------------------ guarded pieces
    def _internal(self, piece: str, e: BaseException) -> None:
        if piece in self._off:
            return
        self._off.add(piece)
        self.engine.internal(f"rangewatch.pipeline.watch:{piece}", e, what=_PIECES[piece],
                             consequence="that part of the pipeline watch is switched off; the generation is unaffected")

    def _stop(self) -> None:
        """``policy="raise"`` is about to stop the generation: take every hook and wrapper off first."""
        self._call = None
        self.detach()

    # ------------------------------------------------------------------ the call
    def _run(self, orig_call: Callable, pipe: Any, args: tuple, kwargs: dict) -> Any:
        if self._call is not None:  # a nested call (a pipeline calling itself): not watched again
            return orig_call(pipe, *args, **kwargs)
        self._calls += 1
        call = self._call = _Call(self._calls)
        if self.latent_convention is not None:  # the checked steps' monitors: the engine's window (read by the previews)
            call.monitors = self.engine.judged.window(_STEPS)
        try:
            try:
                bound = inspect.signature(orig_call).bind(pipe, *args, **kwargs)
            except TypeError:
                bound = None  # let the pipeline raise its own error
            if bound is not None and "inputs" not in self._off:
                try:
                    self._inputs(call, bound.arguments)
                except RangeMismatchError:  # policy="raise" on a bad input image: before any denoising
                    self._stop()
                    raise
                except Exception as e:  # noqa: BLE001 - never break the generation
                    self._internal("inputs", e)
            if bound is not None and "steps" not in self._off:
                try:
                    self._chain_callback(bound)
                except Exception as e:  # noqa: BLE001
                    self._internal("steps", e)
            if bound is not None:
                return orig_call(*bound.args, **bound.kwargs)
            return orig_call(pipe, *args, **kwargs)
        finally:
            if self._call is call:
                self._call = None
                self._judge_or_stop(call)

    @rng_kept
    def _judge_or_stop(self, call: _Call) -> None:
        try:
            self._judge(call)
        except RangeMismatchError:
            self._stop()
            raise
        except Exception as e:  # noqa: BLE001
            self._internal("judge", e)

    def _chain_callback(self, bound: inspect.BoundArguments) -> None:
        """Put the watch's callback_on_step_end in front of the user's (when the pipeline takes one)."""
        params = bound.signature.parameters
        if "callback_on_step_end" not in params or "callback_on_step_end_tensor_inputs" not in params:
            return
        if "latents" not in getattr(self.pipe, "_callback_tensor_inputs", ["latents"]):
            return  # the pipeline would refuse a callback asking for latents
        a = bound.arguments
        user = a.get("callback_on_step_end")
        asked = a.get("callback_on_step_end_tensor_inputs")
        if asked is None:
            asked = params["callback_on_step_end_tensor_inputs"].default
            asked = None if asked is inspect.Parameter.empty else asked
        if user is not None and hasattr(user, "tensor_inputs"):  # PipelineCallback / MultiPipelineCallbacks
            asked = user.tensor_inputs
        asked = list(asked or [])
        watch = self

        def callback_on_step_end(p: Any, i: int, t: Any, kw: dict) -> dict:
            if "steps" not in watch._off and watch._call is not None:
                try:
                    watch._step(p, i, kw.get("latents"))
                except Exception as e:  # noqa: BLE001
                    watch._internal("steps", e)
            if user is None:
                return {}
            return user(p, i, t, {k: v for k, v in kw.items() if k in asked})

        a["callback_on_step_end"] = callback_on_step_end
        a["callback_on_step_end_tensor_inputs"] = asked + ([] if "latents" in asked else ["latents"])

    # ------------------------------------------------------------------ inputs
    @rng_kept
    def _inputs(self, call: _Call, a: dict) -> None:
        pipe = self.pipe
        vsf = getattr(pipe, "vae_scale_factor", 8)
        size = getattr(pipe, "default_sample_size", None) or _config_get(getattr(self.denoiser, "config", None), "sample_size")
        call.height = a.get("height") or (size * vsf if isinstance(size, int) else None)
        call.width = a.get("width") or (size * vsf if isinstance(size, int) else None)
        z = a.get("latents")
        if isinstance(z, torch.Tensor) and z.is_floating_point() and self.latent_convention is not None:
            if not self.engine.judged.feed(_USER, self._unpack(z, call), key=call.index):
                self._off.add("inputs")  # the engine said it once and switched the tap off
                return
        engine, found = self.engine, []
        for name in _INPUTS:
            x = a.get(name)
            if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
                x = torch.cat([v if v.dim() == 4 else v.unsqueeze(0) for v in x]) if all(v.dim() in (3, 4) for v in x) else None
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in (3, 4):
                continue
            cd = 1 if x.dim() == 4 else 0
            if name == "image" and x.shape[cd] == _config_get(self.vae.config, "latent_channels"):
                continue  # the image processors pass latents through untouched
            if not call.inputs:
                engine.begin_step(call.index, detail=True)  # full statistics of the inputs
            engine.tensor(f"{name}:input", x.detach(), channel_dim=cd)
            call.inputs.append(name)
        if not call.inputs:
            return
        try:
            taps = engine.taps
            for name in call.inputs:  # the diffusers-specific checks, on the engine taps' windows
                tap = taps.get(f"{name}:input")
                if name != "image" and tap is not None and not tap.disabled:
                    found += pc.input_image(self.pipe, name, tap.stats)
        finally:
            engine.end_step()  # the engine checks its taps (image:input against its expectation): one read
        engine.report(found, step=call.index)

    def _unpack(self, z: torch.Tensor, call: _Call) -> torch.Tensor:
        """Packed Flux-style token latents (N, L, C*4) as (N, C, H, W), via the pipeline's own unpacker; video
        latents a pipeline keeps as (N, T, C, H, W) (CogVideoX: the convention's layout) as (N, C, T, H, W)."""
        if z.dim() == 5:
            conv = self.latent_convention
            if conv is not None and conv.layout == "NTCHW" and convention_channel_dim(z, conv) == 2:
                return z.transpose(1, 2)  # a view: nothing copied
            return z
        if z.dim() != 3:
            return z
        unpack = getattr(type(self.pipe), "_unpack_latents", None)
        if unpack is not None and call.height and call.width:
            try:
                return unpack(z, call.height, call.width, getattr(self.pipe, "vae_scale_factor", 8))
            except Exception:  # noqa: BLE001 - fall back to a token view
                pass
        n, l, d = z.shape
        return z.reshape(n, l, d // 4, 4).permute(0, 2, 1, 3)  # (N, C, L, 4): per-channel statistics still hold

    # ------------------------------------------------------------------ per step (device only)
    def _step(self, pipe: Any, i: int, z: Any) -> None:
        call = self._call
        if call is None or not isinstance(z, torch.Tensor) or self.latent_convention is None:
            return
        if call.checked is None:
            n = getattr(pipe, "num_timesteps", None) or getattr(pipe, "_num_timesteps", None)
            call.num_steps = n if isinstance(n, int) and n > 0 else None
            call.init_sigma = getattr(pipe.scheduler, "init_noise_sigma", 1.0)  # read on the host at the end
            if call.num_steps:
                k = min(self.check_steps, call.num_steps)
                call.checked = sorted({round(j * (call.num_steps - 1) / max(k - 1, 1)) for j in range(k)})
            else:
                call.checked = [0]
        z = self._unpack(z.detach(), call)
        zf = z.float()
        dims = [d for d in range(zf.dim()) if d != 1]
        finite = torch.isfinite(zf)
        clean = torch.where(finite, zf, torch.zeros((), device=zf.device))
        row = torch.stack([
            clean.mean(dim=dims), clean.std(dim=dims), clean.abs().amax(dim=dims), (~finite).sum(dim=dims).float(),
        ], dim=1)
        call.steps.append(row)
        if i in call.checked:  # tensor operations only above; the engine's monitor keeps the user's random state
            if not self.engine.judged.feed(_STEPS, zf / self._noise_level(pipe.scheduler, zf), key=i):
                self._off.add("steps")  # the engine said it once and switched the tap off

    def _noise_level(self, scheduler: Any, z: torch.Tensor) -> torch.Tensor | float:
        """Std of x_t for unit-std data after the current step: sqrt(sigma**2 + 1) for sigma-parameterised
        schedulers (init_noise_sigma > 1, as Euler), 1 for variance-preserving and flow-matching ones.

        The levels of all steps are computed once per call (on the sigmas' own device, then one copy to
        the latents' device, pinned); a step only indexes them with the scheduler's host-side step_index."""
        call = self._call
        if call is None:
            return 1.0
        if call.levels is None:
            call.levels = _levels(scheduler, call.init_sigma, z.device)
        idx = getattr(scheduler, "step_index", None)
        if not isinstance(call.levels, torch.Tensor) or not isinstance(idx, int) or not 0 <= idx < call.levels.numel():
            return 1.0
        return call.levels[idx]

    # ------------------------------------------------------------------ decode
    def _to_model(self, z: torch.Tensor) -> torch.Tensor:
        return latents_to_model(z.detach().float(), self.scale, self.shift, self.latents_mean, self.latents_std)

    def _decode(self, orig: Callable, z: Any, args: tuple, kwargs: dict) -> Any:
        rec = None
        if "decode" not in self._off and isinstance(z, torch.Tensor) and self.latent_convention is not None:
            with kept_rng():
                rec = self._decode_record(z)
        self._decode_count += 1
        try:
            out = orig(z, *args, **kwargs)
        finally:
            self.engine.judged.trace_pause(_VAE)
        if rec is not None:
            with kept_rng():
                self._decode_result(rec, out)
        return out

    def _decode_record(self, z: torch.Tensor) -> int | None:
        """rangewatch's part before a decode: its input latents to the engine's judged tap, the VAE tracer
        stepped and on; returns the decode's key (None when it failed)."""
        key = self._decode_count
        try:
            if not self.engine.judged.feed(_DECODE_IN, self._to_model(z), key=key):
                self._off.add("decode")  # the engine said it once and switched the tap off
                return None
            self.engine.judged.trace_step(_VAE, key)
        except Exception as e:  # noqa: BLE001
            self._internal("decode", e)
            return None
        return key

    def _decode_result(self, key: int, out: Any) -> None:
        """rangewatch's part after a decode: the decoded image's statistics; judged at once outside a call."""
        try:
            img = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", None)
            if isinstance(img, torch.Tensor) and img.is_floating_point():
                if not self.engine.judged.feed(_DECODE_OUT, img.detach(), key=key, detail=True):
                    self._off.add("decode")  # the engine said it once and switched the tap off
                    return
            if self._call is not None:
                self._call.decodes.append(key)
            else:  # a decode outside a pipeline call (e.g. pipe.vae.decode(latents) by hand)
                c = _Call(0)
                c.decodes.append(key)
                self._judge(c)
        except RangeMismatchError:
            self._stop()
            raise
        except Exception as e:  # noqa: BLE001
            self._internal("decode", e)

    # ------------------------------------------------------------------ judging (host, once per call)
    def _judge(self, call: _Call) -> None:
        """Write the call's previews and scalars, then the engine's check of this front end's judged taps: each judge
        below on its window, in the order of ``_JUDGED`` (latents=, the steps, the module that overflowed first,
        before what it caused, the decodes), all findings in one report (each once, the policy applied, the sinks
        written), the next windows started."""
        if "write" not in self._off:
            try:
                self._previews(call)
                self._scalars(call)
            except Exception as e:  # noqa: BLE001
                self._internal("write", e)
        before = len(self.engine.findings)
        try:
            self.engine.judged.check(list(_JUDGED), step=call.index, context=call)
        finally:
            fresh = self.engine.findings[before:]
            if self.out_dir and fresh:
                append_findings(self.out_dir, [f"call {call.index}: {f}" for f in fresh])

    # the judges (the engine runs them at judged.check; pipeline/checks.py holds the rules)
    def _judge_user(self, window: Mapping[Any, Any], judging: Judging) -> list[Finding]:
        mon = window.get(judging.context.index)
        return [] if mon is None else pc.user_latents(self, mon)

    def _judge_steps(self, window: Mapping[Any, Any], judging: Judging) -> list[Finding]:
        # call.monitors is this window (judged.window at the call's start): the latents= finding explains the range
        return pc.steps(self, judging.context, skip=bool(judging.found.get(_USER)))

    def _judge_tracer(self, window: Mapping[Any, Any], judging: Judging) -> list[Finding]:
        return pc.traced(self, window[None])

    def _judge_decodes(self, window: Mapping[Any, Any], judging: Judging) -> list[Finding]:
        call, found = judging.context, []
        user = bool(judging.found.get(_USER))
        steps_nonfinite = any(f.kind == "nonfinite" for f in judging.found.get(_STEPS, ()))
        images = judging.windows.get(_DECODE_OUT, {})
        for key in call.decodes:
            mon = window.get(key)
            if mon is not None:
                found += pc.decode(self, call, mon, images.get(key), skip_scale=user, steps_nonfinite=steps_nonfinite)
        return found

    def _scalars(self, call: _Call) -> None:
        """Per denoising step, the latents' per-channel mean, std and max |x| (model space) to the
        engine's sinks, at the step within the call (``rangewatch/pipeline.call<k>.latents/<stat>/c<ch>``)."""
        sink = self.engine.sink
        if sink is None or not sink.active or not call.steps:
            return
        from ..sinks.tags import pipeline_latents_tap, tag

        rows = torch.stack(call.steps).double().cpu()  # (S, C, 4), after the call: one transfer
        name = pipeline_latents_tap(call.index)
        for i in range(rows.shape[0]):
            m = {}
            for c in range(rows.shape[1]):
                for k, stat in enumerate(("mean", "std", "max_abs")):
                    m[tag(name, stat, c)] = float(rows[i, c, k])
            m[tag(name, "nonfinite")] = float(rows[i, :, 3].sum())
            sink.scalars(m, i)

    def _previews(self, call: _Call) -> None:
        """Per denoising step, the latent RGB preview: kept in :attr:`previews`, saved as a PNG in ``out_dir`` and
        written (with the latents' histograms) to the engine's sinks at ``rangewatch/pipeline/step_latents/call<k>``."""
        conv = self.latent_convention
        if conv is None or conv.latent_rgb is None:
            return
        from ..sinks.files import save_png
        from ..sinks.tags import latents_png, pipeline_latents_where

        for i, mon in sorted(call.monitors.items()):
            if mon.last is None or mon.last.dim() != 4:
                continue
            prev = latent_preview(mon.last, conv).cpu()
            self.previews[(call.index, i)] = prev
            if self.out_dir:
                save_png(self.out_dir, latents_png(call.index, i), prev)
            sink = self.engine.sink
            if sink is not None:
                sink.latents(pipeline_latents_where(call.index), mon, i)
