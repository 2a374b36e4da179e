"""What does a model expect? Read it from the model's own metadata (:func:`derive_expectations`).

Keys
----
``derive_expectations`` returns ``{key: Expectation}`` with keys ``"<module path>:<side>"``, where the
module path is exactly as in ``root.named_modules()`` (``""`` for ``root`` itself) and side is

- ``input``: the module's image argument (``pixel_values`` for transformers models, the first tensor
  argument otherwise) should follow the convention;
- ``output``: the module's output should follow it (a VAE decoder's pixels);
- ``latent``: only for VAEs, ``"<vae path>:latent"``: the *scaled* latent the diffusion model sees,
  ``z_model = (z_vae - shift) * scale`` (or ``(z_vae - latents_mean) * scale / latents_std``). No hook of the
  VAE observes this tensor: the encoder emits the moments of the unscaled ``z_vae`` and the user's code
  applies the scaling, so this entry is for taps the user declares on latents (the denoiser's input, a
  logged latent). Its ``Expectation.target`` is ``"output"`` (what the encoding side produces).

Rules (sources: diffusers VaeImageProcessor and AutoencoderKL configs, timm data/config.py, transformers image processors, open_clip transform.py)
------------------------------
- diffusers autoencoders (``AutoencoderKL``, ``AutoencoderTiny``, the video/image VAEs, ``VQModel``, ...):
  pixels in [-1, 1] (``symmetric``) at ``"<path>.encoder:input"``: ``vae.encode(x)`` and ``vae(x)`` both
  reach the encoder through ``__call__``, so its hook sees every encoding while a hook on the VAE itself
  would only see ``forward``. The decoder's pixels are ``"<path>.decoder:output"`` (also symmetric). The
  latent convention comes from ``config.scaling_factor`` / ``shift_factor`` / ``latents_mean`` /
  ``latents_std`` / ``latent_channels``: sd15 (0.18215, 4 ch), sdxl (0.13025, 4 ch), sd3 (1.5305, shift
  0.0609, 16 ch), flux (0.3611, shift 0.1159, 16 ch), otherwise a registered ``latent_s<scale>[_sh<shift>]
  [_c<channels>][_lm<hash>]`` (digits with ``p`` for the decimal point, ``n`` for a minus sign).
  ``AutoencoderTiny`` (TAESD) has ``scaling_factor`` 1 because its encoder emits already-scaled latents of
  whichever family it was trained for, which its config does not name: it gets no latent entry.
- CompVis-family autoencoders, which carry no config saying it: ``ldm.models.autoencoder.AutoencoderKL`` /
  ``VQModel``, ``taming.models.vqgan.VQModel`` (and ``GumbelVQ``, ``EMAVQ``), Stability ``sgm.models.autoencoder``
  engines: recognised by class name *and* module of origin (anywhere in the MRO, so subclasses count);
  ``symmetric`` at ``"<path>.encoder:input"`` and ``"<path>.decoder:output"`` (their data classes give
  ``image / 127.5 - 1``; latent-diffusion ``ldm/data``, taming ``taming/data/base.py``).
- timm models: ``timm.data.resolve_model_data_config(model)`` (``pretrained_cfg`` mean/std).
- transformers vision models: an image processor given in ``image_processors`` or attached to the model
  (``.image_processor``, ``.processor``, ``.feature_extractor``, ``.preprocess``, ``.transform``), read with
  :func:`rangewatch.transform_inspection.predict_transform` (the model input is what comes *out* of the
  processor); otherwise the model type's published checkpoints (``_HF_MODEL_TYPES``). Composite models
  (``CLIPModel``, ``SiglipModel``) are keyed at their ``vision_model``.
- open_clip visual towers: ``visual.preprocess_cfg`` (or the legacy ``image_mean``/``image_std``), else
  open_clip's ``PreprocessCfg`` default (OpenAI CLIP constants).
- ``image_processors={path: processor}`` applies to any module path (a processor, a processor holding an
  ``image_processor``, or a torchvision transform) and wins over the module's metadata.

Mean/std that match no catalogue entry are registered through
:func:`rangewatch.transform_inspection.convention_for_normalize`, whose names derive from the values, so
a dataset transform and a model with the same constants share one name. A VAE's latent scaling that
matches no catalogue entry is not registered: the expectation carries its own
:class:`~rangewatch.conventions.Convention` (see :func:`latent_convention_for`).

Only the outermost recognised module counts: nothing inside a recognised module is derived again. A
library is only consulted for modules whose class comes from it, so rangewatch never imports diffusers,
timm, transformers or open_clip on its own.
"""

from __future__ import annotations

import hashlib
import math
import sys
from typing import Any, Callable

import torch.nn as nn

from .conventions import Convention, get_convention, list_conventions
from .expectation import Expectation
from .transform_inspection import Prediction, convention_for_normalize, predict_transform

__all__ = ["derive_expectations", "latent_convention_for", "HF_MODEL_TYPES"]

# transformers ``config.model_type`` -> (convention, why). What the published checkpoints' processors do,
# not always the processor class default: BitImageProcessor (used by DINOv2) and ConvNextImageProcessor
# default to OPENAI_CLIP / IMAGENET_STANDARD constants in transformers' source, but facebook/dinov2-* and
# facebook/convnext-* ship preprocessor configs with IMAGENET_DEFAULT mean/std.
HF_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "clip": ("clip", "CLIPImageProcessor defaults to OPENAI_CLIP_MEAN/STD"),
    "clip_vision_model": ("clip", "CLIPImageProcessor defaults to OPENAI_CLIP_MEAN/STD"),
    "siglip": ("symmetric", "SiglipImageProcessor defaults to IMAGENET_STANDARD_MEAN/STD (0.5/0.5)"),
    "siglip_vision_model": ("symmetric", "SiglipImageProcessor defaults to IMAGENET_STANDARD_MEAN/STD (0.5/0.5)"),
    "siglip2": ("symmetric", "Siglip2ImageProcessor defaults to mean/std 0.5/0.5"),
    "siglip2_vision_model": ("symmetric", "Siglip2ImageProcessor defaults to mean/std 0.5/0.5"),
    "dinov2": ("imagenet", "facebook/dinov2-* preprocessor configs use IMAGENET_DEFAULT_MEAN/STD (BitImageProcessor)"),
    "dinov2_with_registers": ("imagenet", "facebook/dinov2-with-registers-* use IMAGENET_DEFAULT_MEAN/STD"),
    "dinov3_vit": ("imagenet", "DINOv3ViTImageProcessor defaults to IMAGENET_DEFAULT_MEAN/STD"),
    "dinov3_convnext": ("imagenet", "DINOv3 checkpoints use IMAGENET_DEFAULT_MEAN/STD"),
    "vit": ("symmetric", "ViTImageProcessor defaults to IMAGENET_STANDARD_MEAN/STD (0.5/0.5); DINO-v1 ViT checkpoints use ImageNet: pass their processor"),
    "convnext": ("imagenet", "facebook/convnext-* preprocessor configs use IMAGENET_DEFAULT_MEAN/STD"),
    "convnextv2": ("imagenet", "facebook/convnextv2-* preprocessor configs use IMAGENET_DEFAULT_MEAN/STD"),
    "swin": ("imagenet", "microsoft/swin-* preprocessor configs use IMAGENET_DEFAULT_MEAN/STD"),
    "swinv2": ("imagenet", "microsoft/swinv2-* preprocessor configs use IMAGENET_DEFAULT_MEAN/STD"),
}

# diffusers autoencoders whose pixels are [-1, 1] on both sides (VaeImageProcessor / VideoProcessor do_normalize)
_DIFFUSERS_VAES = {
    "AutoencoderKL", "AsymmetricAutoencoderKL", "AutoencoderTiny", "AutoencoderKLTemporalDecoder",
    "AutoencoderKLFlux2", "AutoencoderKLQwenImage", "AutoencoderKLWan", "AutoencoderKLCogVideoX",
    "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKLMochi", "AutoencoderKLAllegro",
    "AutoencoderDC", "VQModel", "ConsistencyDecoderVAE",
}
_NO_PIXEL_DECODER = {"ConsistencyDecoderVAE"}  # its decoder is a UNet, not a pixel decoder
_NO_LATENT = {"AutoencoderTiny"}

# CompVis-family autoencoders (no config object says it): (module of origin, class) -> where the fact is
# stated. latent-diffusion `ldm/data/*.py` and taming-transformers `taming/data/base.py` build
# `example["image"] = (image / 127.5 - 1.0)`, the autoencoders train to reconstruct it
# (`rec_loss = |x - xrec|`) and their `log_images` shows both as [-1, 1]; Stability's generative-models
# (`sgm`) keeps that convention (`sgm/data/cifar10.py`, `mnist.py`: ToTensor then `x * 2.0 - 1.0`; its
# sampling scripts show decoded images with `(x + 1.0) / 2.0`).
_COMPVIS_VAES: dict[tuple[str, str], str] = {
    ("ldm.models.autoencoder", "AutoencoderKL"): "CompVis latent-diffusion",
    ("ldm.models.autoencoder", "VQModel"): "CompVis latent-diffusion",
    ("ldm.models.autoencoder", "VQModelInterface"): "CompVis latent-diffusion",
    ("taming.models.vqgan", "VQModel"): "CompVis taming-transformers",
    ("taming.models.vqgan", "GumbelVQ"): "CompVis taming-transformers",
    ("taming.models.vqgan", "EMAVQ"): "CompVis taming-transformers",
    ("sgm.models.autoencoder", "AutoencodingEngine"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencodingEngineLegacy"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencoderKL"): "Stability generative-models",
    ("sgm.models.autoencoder", "AutoencoderKLInferenceWrapper"): "Stability generative-models",
}
# subclasses of those that take no pixels (taming's VQSegmentationModel encodes one-hot segmentation maps)
_COMPVIS_NOT_PIXELS = {("taming.models.vqgan", "VQSegmentationModel")}
_COMPVIS_DATA = {
    "CompVis latent-diffusion": "its data classes give image / 127.5 - 1 (ldm/data/*.py)",
    "CompVis taming-transformers": "its data classes give image / 127.5 - 1 (taming/data/base.py)",
    "Stability generative-models": "its data modules give ToTensor() then x * 2 - 1 (sgm/data/cifar10.py)",
}

_ATTACHED = ("image_processor", "processor", "feature_extractor", "preprocess", "transform")

_SCALE_RTOL = 1e-4
_SHIFT_TOL = 1e-4


# ---------------------------------------------------------------------------- helpers
def _lib(m: nn.Module) -> str:
    return (type(m).__module__ or "").split(".", 1)[0]


def _num(v: float) -> str:
    s = f"{v:.6g}"
    return s.replace("-", "n").replace(".", "p").replace("+", "")


def _as_floats(v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return tuple(float(x) for x in v.flatten().tolist())
    except Exception:  # pragma: no cover
        pass
    if isinstance(v, (int, float)):
        return (float(v),)
    return tuple(float(x) for x in v)


def latent_convention_for(
    scale: float | None,
    shift: float | None = None,
    channels: int | None = None,
    latents_mean: Any = None,
    latents_std: Any = None,
    *,
    source: str = "",
) -> Convention | None:
    """The latent convention of a VAE's scaling numbers: the catalogue's when one matches, else a custom
    one with a value-derived name (``latent_s0p5_c4``), which is returned, not registered.

    ``None`` when there is nothing to go on (no scale and no latents mean/std).
    """
    lm, ls = _as_floats(latents_mean), _as_floats(latents_std)
    if scale is None:
        if lm is None and ls is None:
            return None
        scale = 1.0
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        return None
    sh = float(shift) if shift is not None else 0.0
    if lm is None and ls is None:
        for name in list_conventions("latent"):
            c = get_convention(name)
            if c.scale is None or c.latents_mean is not None or c.latents_std is not None:
                continue
            if abs(c.scale - scale) > _SCALE_RTOL * c.scale or abs((c.shift or 0.0) - sh) > _SHIFT_TOL:
                continue
            if channels is not None and c.channels is not None and c.channels != channels:
                continue
            return c
    name = f"latent_s{_num(scale)}"
    if sh:
        name += f"_sh{_num(sh)}"
    if channels is not None:
        name += f"_c{int(channels)}"
    if lm is not None or ls is not None:
        digest = hashlib.sha1(repr((tuple(round(v, 6) for v in lm or ()), tuple(round(v, 6) for v in ls or ()))).encode()).hexdigest()[:8]
        name += f"_lm{digest}"
    label = f"latent scale {scale}" + (f" shift {sh}" if sh else "") + (f", {channels} ch" if channels else "")
    if lm is not None:
        label += ", per-channel latents_mean/std"
    return Convention(
        name, "latent", label, source or "derived from a VAE config", scale=float(scale), shift=sh if sh else None,
        channels=channels, latents_mean=lm, latents_std=ls,
    )


def _predict(processor: Any, where: str) -> Prediction:
    return predict_transform(processor, where=where)


class _Deriver:
    def __init__(self, root: nn.Module, image_processors: dict[str, Any] | None, notes: list[str] | None) -> None:
        self.root = root
        self.procs = dict(image_processors or {})
        self.notes = notes if notes is not None else []
        self.out: dict[str, Expectation] = {}
        self.modules = dict(root.named_modules())

    def note(self, text: str) -> None:
        self.notes.append(text)

    @staticmethod
    def key(path: str, side: str) -> str:
        return f"{path}:{side}"

    @staticmethod
    def child(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def put(self, path: str, side: str, convention: str | Convention, source: str, target: str | None = None) -> None:
        self.out[self.key(path, side)] = Expectation(
            convention, source=source, origin="model", target=(target or side)  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------ processors
    def put_normalize(self, path: str, mean: Any, std: Any, src: str) -> bool:
        """An input expectation from a model's own mean/std (a catalogue name, or a registered one)."""
        name, note = convention_for_normalize(tuple(mean), tuple(std), source=src)
        if name == "unknown":
            self.note(f"{src}: {note}")
            return True
        if note:
            src += f"; {note}"
        self.put(path, "input", name, src)
        return True

    def from_processor(self, path: str, tap: str, processor: Any, how: str) -> bool:
        pred = _predict(processor, where=how)
        if not pred.known:
            self.note(f"{how}: cannot tell the convention ({'; '.join(pred.notes[1:]) or pred.source})")
            return False
        self.put(tap, "input", pred.convention, f"{pred.source}, for {path or 'the root module'}")
        return True

    def attached_processor(self, m: nn.Module) -> tuple[str, Any] | None:
        """A processor kept on the module as a plain attribute (or a torchvision v2 pipeline submodule)."""
        d = getattr(m, "__dict__", {})
        subs = d.get("_modules", {}) or {}
        for attr in _ATTACHED:
            value = d.get(attr)
            if value is None:
                value = subs.get(attr)
                if value is not None and not (type(value).__module__ or "").startswith("torchvision.transforms"):
                    value = None
            if value is not None:
                return attr, value
        return None

    # ------------------------------------------------------------ rules; each returns True when it claims m
    def diffusers(self, path: str, m: nn.Module) -> bool:
        cls = type(m).__name__
        if _lib(m) != "diffusers" or cls not in _DIFFUSERS_VAES:
            return False
        children = dict(m.named_children())
        enc = self.child(path, "encoder") if "encoder" in children else path
        dec = self.child(path, "decoder") if "decoder" in children and cls not in _NO_PIXEL_DECODER else None
        where = path or "the root module"
        self.put(enc, "input", "symmetric", f"diffusers {cls} at {where}: pixel input in [-1, 1] (VaeImageProcessor maps [0, 1] to [-1, 1])")
        if dec is not None:
            self.put(dec, "output", "symmetric", f"diffusers {cls} at {where}: the decoder's pixels are in [-1, 1]")
        if cls in _NO_LATENT:
            self.note(f"{cls} at {where}: its encoder emits already-scaled latents of a family its config does not name; no latent expectation")
            return True
        cfg = getattr(m, "config", None)
        get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
        scale, shift = get("scaling_factor"), get("shift_factor")
        channels = get("latent_channels") or get("z_dim")
        lm, ls = get("latents_mean"), get("latents_std")
        parts = [f"scaling_factor={scale}"] + ([f"shift_factor={shift}"] if shift else []) + [f"latent_channels={channels}"]
        if lm is not None:
            parts.append("latents_mean/std set")
        src = f"diffusers {cls}.config of {where}: " + ", ".join(parts)
        conv = latent_convention_for(scale, shift, channels, lm, ls, source=src)
        if conv is None:
            self.note(f"{cls} at {where}: no scaling_factor or latents_mean/std in its config; no latent expectation")
        else:
            self.put(path, "latent", conv, src + " (the scaled latent the diffusion model sees)", target="output")
        return True

    def compvis(self, path: str, m: nn.Module) -> bool:
        """CompVis-family autoencoders, recognised by the class and the module it comes from (also
        through subclasses): [-1, 1] at the encoder's input and the decoder's output."""
        origin = None
        for cls in type(m).__mro__:
            if (cls.__module__ or "", cls.__name__) in _COMPVIS_NOT_PIXELS:
                return False
            repo = _COMPVIS_VAES.get((cls.__module__ or "", cls.__name__))
            if repo is not None:
                origin = (repo, f"{cls.__module__}.{cls.__name__}")
                break
        if origin is None:
            return False
        repo, qual = origin
        children = dict(m.named_children())
        enc = self.child(path, "encoder") if "encoder" in children else path
        where = path or "the root module"
        why = _COMPVIS_DATA[repo]
        self.put(enc, "input", "symmetric", f"{repo} {qual} at {where}: pixel input in [-1, 1]; {why}")
        if "decoder" in children:
            self.put(self.child(path, "decoder"), "output", "symmetric",
                     f"{repo} {qual} at {where}: the decoder reconstructs that input, in [-1, 1]")
        return True

    def timm(self, path: str, m: nn.Module) -> bool:
        if _lib(m) != "timm" or not hasattr(m, "pretrained_cfg") or "timm" not in sys.modules:
            return False
        try:
            from timm.data import resolve_model_data_config

            cfg = resolve_model_data_config(m)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the raw pretrained_cfg
            cfg = dict(getattr(m, "pretrained_cfg", None) or {})
            self.note(f"timm resolve_model_data_config failed for {path or 'root'} ({e}); read pretrained_cfg directly")
        mean, std = cfg.get("mean"), cfg.get("std")
        if mean is None or std is None:
            self.note(f"timm model at {path or 'root'} has no mean/std in its pretrained_cfg")
            return True
        pc = getattr(m, "pretrained_cfg", {}) or {}
        arch = pc.get("architecture") or type(m).__name__
        tag = pc.get("tag")
        ident = f"{arch}.{tag}" if tag else arch
        src = f"timm pretrained_cfg of {path or 'the root module'} ({ident})"
        return self.put_normalize(path, mean, std, src)

    def transformers(self, path: str, m: nn.Module) -> bool:
        if _lib(m) != "transformers" or "transformers" not in sys.modules:
            return False
        try:
            from transformers import PreTrainedModel
        except Exception:  # pragma: no cover
            return False
        if not isinstance(m, PreTrainedModel):
            return False
        cfg = getattr(m, "config", None)
        mt = getattr(cfg, "model_type", None)
        children = dict(m.named_children())
        tap = path
        if getattr(cfg, "vision_config", None) is not None and "vision_model" in children:
            tap = self.child(path, "vision_model")
        attached = self.attached_processor(m)
        if attached is not None:
            attr, proc = attached
            if self.from_processor(path, tap, proc, f"{path or 'root'}.{attr}"):
                return True
        if mt in HF_MODEL_TYPES:
            conv, why = HF_MODEL_TYPES[mt]
            self.put(tap, "input", conv, f"transformers {type(m).__name__} (model_type {mt!r}) at {path or 'the root module'}: {why}")
            return True
        return False  # not a vision model we know: let rules look inside (e.g. a vision tower in a VLM)

    def open_clip(self, path: str, m: nn.Module) -> bool:
        if _lib(m) != "open_clip":
            return False
        d = getattr(m, "__dict__", {})
        pp = d.get("preprocess_cfg") or {}
        mean = pp.get("mean") if isinstance(pp, dict) else None
        std = pp.get("std") if isinstance(pp, dict) else None
        how = "preprocess_cfg"
        if mean is None or std is None:
            mean, std, how = d.get("image_mean"), d.get("image_std"), "image_mean/image_std"
        cls = type(m).__name__
        if mean is None or std is None:
            # a visual tower built without create_model: open_clip's own default preprocessing
            if cls not in ("VisionTransformer", "ModifiedResNet", "TimmModel") or not path.split(".")[-1] == "visual":
                return False
            try:
                from open_clip.transform import PreprocessCfg

                default = PreprocessCfg()
                mean, std, how = default.mean, default.std, "PreprocessCfg default (no preprocess_cfg set)"
            except Exception:  # pragma: no cover
                return False
        src = f"open_clip {how} of {path or 'the root module'} ({cls})"
        return self.put_normalize(path, mean, std, src)

    # ------------------------------------------------------------ walk
    def run(self) -> dict[str, Expectation]:
        claimed: list[str] = []

        def inside(path: str) -> bool:
            return any(path == c or path.startswith(c + ".") or c == "" for c in claimed)

        # explicit processors first: they win, and claim their module
        for path, proc in self.procs.items():
            m = self.modules.get(path)
            if m is None:
                self.note(f"image_processors[{path!r}]: no such module in {type(self.root).__name__}")
                continue
            tap = path
            cfg = getattr(m, "config", None)
            if getattr(cfg, "vision_config", None) is not None and "vision_model" in dict(m.named_children()):
                tap = self.child(path, "vision_model")
            self.from_processor(path, tap, proc, f"image_processors[{path!r}]")
            claimed.append(path)

        rules: list[Callable[[str, nn.Module], bool]] = [self.diffusers, self.compvis, self.timm, self.transformers, self.open_clip]
        for path, m in self.modules.items():
            if inside(path):
                continue
            for rule in rules:
                try:
                    hit = rule(path, m)
                except Exception as e:  # noqa: BLE001 - never let metadata reading break training
                    self.note(f"{rule.__name__} rule failed on {path or 'root'} ({type(e).__name__}: {e})")
                    hit = False
                if hit:
                    claimed.append(path)
                    break
        return self.out


def derive_expectations(
    root: nn.Module, image_processors: dict[str, Any] | None = None, *, notes: list[str] | None = None
) -> dict[str, Expectation]:
    """Expectations read from the model's own metadata, keyed ``"<module path>:input|output|latent"``.

    ``image_processors`` maps module paths to the processor (or torchvision transform) that prepares that
    module's images; it wins over the module's metadata. Pass a list as ``notes`` to receive what was
    skipped and why. Every returned :class:`Expectation` has ``origin="model"``.
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"derive_expectations takes an nn.Module, got {type(root).__name__}")
    return _Deriver(root, image_processors, notes).run()
