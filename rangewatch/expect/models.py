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

Rules (one reader per library in ``rangewatch/integrations/``: ``diffusers.py``, ``compvis.py``, ``flux.py``,
``kohya.py``, ``comfy.py``, ``video_vaes.py``, ``timm.py``, ``transformers.py``, ``open_clip.py``, tried in the
order of :data:`READERS`; sources in each file)
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
  :func:`rangewatch.expect.transforms.predict_transform` (the model input is what comes *out* of the
  processor); otherwise the model type's published checkpoints (``_HF_MODEL_TYPES``). Composite models
  (``CLIPModel``, ``SiglipModel``) are keyed at their ``vision_model``.
- open_clip visual towers: ``visual.preprocess_cfg`` (or the legacy ``image_mean``/``image_std``), else
  open_clip's ``PreprocessCfg`` default (OpenAI CLIP constants).
- ``image_processors={path: processor}`` applies to any module path (a processor, a processor holding an
  ``image_processor``, or a torchvision transform) and wins over the module's metadata.

Mean/std that match no catalogue entry become a custom convention through
:func:`rangewatch.expect.transforms.normalize_convention`, carried by the expectation and never registered,
whose name derives from the values, so a dataset transform and a model with the same constants share one name. A VAE's latent scaling that
matches no catalogue entry is not registered: the expectation carries its own
:class:`~rangewatch.expect.conventions.Convention` (see :func:`latent_convention_for`).

Only the outermost recognised module counts: nothing inside a recognised module is derived again. A
library is only consulted for modules whose class comes from it, so rangewatch never imports diffusers,
timm, transformers or open_clip on its own.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Callable

import torch.nn as nn

from .conventions import Convention, get_convention, list_conventions
from .expectation import Expectation
from ..taps.sharding import user_named_modules
from ..integrations import comfy as _comfy
from ..integrations import compvis as _compvis
from ..integrations import diffusers as _diffusers
from ..integrations import flux as _flux
from ..integrations import kohya as _kohya
from ..integrations import open_clip as _open_clip
from ..integrations import timm as _timm
from ..integrations import transformers as _transformers
from ..integrations import video_vaes as _video_vaes
from ..integrations.metadata import Deriving
from ..integrations.transformers import HF_MODEL_TYPES
from .transforms import Prediction, normalize_convention, predict_transform

__all__ = ["derive_expectations", "latent_convention_for", "HF_MODEL_TYPES", "READERS"]

# The model-metadata readers, one file per library in ``rangewatch/integrations/``, tried in this order on
# every module not inside an already-claimed one: (name, reader(d, path, module) -> claimed?). Adding a
# library is adding its file and one line here.
READERS: tuple[tuple[str, Callable[[Deriving, str, nn.Module], bool]], ...] = (
    ("diffusers", _diffusers.read_expectations),
    ("compvis", _compvis.read_expectations),
    ("flux", _flux.read_expectations),  # BFL Flux AutoEncoder and its copies (sd-scripts, musubi-tuner)
    ("kohya", _kohya.read_expectations),  # sd-scripts' SD3 SDVAE
    ("comfy", _comfy.read_expectations),  # ComfyUI AutoencodingEngine / AutoencoderKL / WanVAE
    ("video_vaes", _video_vaes.read_expectations),  # Wan / HunyuanVideo VAEs of the video trainers' code
    ("timm", _timm.read_expectations),
    ("transformers", _transformers.read_expectations),
    ("open_clip", _open_clip.read_expectations),
)

_KNOWN_LIBRARIES = {"diffusers", "transformers", "timm", "open_clip", "ldm", "sgm", "taming", "comfy", "flux", "library",
                     "musubi_tuner", "wan", "hyvideo"}


def _unknown_autoencoder(d: Deriving, path: str, m: nn.Module) -> bool:
    """Last: a module that looks like an autoencoder (its class named ...VAE / ...Autoencoder, with an encoder
    child) that no reader knows is said once, with how to declare it; nothing inside it is read."""
    name = type(m).__name__
    if not re.search(r"vae|auto_?encod", name, re.IGNORECASE) or not any("encoder" in c for c, _ in m.named_children()):
        return False
    for i, sub in enumerate(m.modules()):  # a wrapper around a VAE a reader knows: let the walk go inside
        if i > 2000:
            break
        if sub is not m and (type(sub).__module__ or "").split(".", 1)[0] in _KNOWN_LIBRARIES:
            return False
    where = path or "the root module"
    enc = d.child(path, "encoder") if "encoder" in dict(m.named_children()) else path
    d.note(f"{type(m).__module__}.{name} at {where}: rangewatch does not know what this autoencoder expects; declare it, "
           f"e.g. expect={{{(enc or '<encoder path>')!r}: 'symmetric'}} and, for its scaled latents, expect={{'latents': '<latent convention>'}}")
    return True


READERS = READERS + (("unknown autoencoder", _unknown_autoencoder),)

_ATTACHED = ("image_processor", "processor", "feature_extractor", "preprocess", "transform")

_SCALE_RTOL = 1e-4
_SHIFT_TOL = 1e-4


# ---------------------------------------------------------------------------- helpers
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
    if lm is not None or ls is not None:  # a catalogue entry with the same per-channel numbers (Wan, Mochi)
        for name in list_conventions("latent"):
            c = get_convention(name)
            if c.latents_mean is None or c.latents_std is None or lm is None or ls is None:
                continue
            if len(c.latents_mean) != len(lm) or len(c.latents_std) != len(ls):
                continue
            if abs((c.scale or 1.0) - scale) > _SCALE_RTOL * max(scale, 1e-12) or abs((c.shift or 0.0) - sh) > _SHIFT_TOL:
                continue
            if all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(c.latents_mean + c.latents_std, lm + ls)):
                return c
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
        self.modules = dict(user_named_modules(root))  # through sharding wrappers (taps/sharding.py)

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
        """An input expectation from a model's own mean/std (a catalogue convention, or a custom one it carries)."""
        conv, note = normalize_convention(tuple(mean), tuple(std), source=src)
        if conv is None:
            self.note(f"{src}: {note}")
            return True
        if note:
            src += f"; {note}"
        self.put(path, "input", conv, src)
        return True

    def from_processor(self, path: str, tap: str, processor: Any, how: str) -> bool:
        pred = _predict(processor, where=how)
        if not pred.known:
            self.note(f"{how}: cannot tell the convention ({'; '.join(pred.notes[1:]) or pred.source})")
            return False
        self.put(tap, "input", pred.conv or pred.convention, f"{pred.source}, for {path or 'the root module'}")
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

        for path, m in self.modules.items():
            if inside(path):
                continue
            for name, read in READERS:
                try:
                    hit = read(self, path, m)
                except Exception as e:  # noqa: BLE001 - never let metadata reading break training
                    self.note(f"{name} rule failed on {path or 'root'} ({type(e).__name__}: {e})")
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
