"""The catalogue of value-range conventions.

A *pixel* convention is an affine map of display space [0, 1]:  ``x = (u - mean) / std``.
``unit`` is mean 0 / std 1, ``symmetric`` ([-1, 1]) is mean 0.5 / std 0.5, ``float255`` is
mean 0 / std 1/255 and ImageNet / CLIP use their published constants. Per-channel bounds are
what [0, 1] becomes: ``(0 - mean) / std`` and ``(1 - mean) / std``.

A *latent* convention describes a diffusion VAE's scaled latent space:
``z_model = (z_vae - shift) * scale`` with a channel count and, where known, the linear
latent-to-RGB factors used for cheap previews (``rgb = z^T F + bias``, read as [-1, 1]).

Sources of the numbers: torchvision ``transforms/_presets.py`` (ImageNet), open_clip ``constants.py``
(OpenAI CLIP), timm ``data/constants.py`` (ImageNet, Inception, DINO), ComfyUI
``comfy/latent_formats.py`` @9a9a69fd (latent scales, shifts and latent-to-RGB factors).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

__all__ = [
    "Convention",
    "UnknownConventionError",
    "get_convention",
    "list_conventions",
    "is_registered",
    "register_convention",
    "unregister_convention",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ConventionKind = Literal["pixel", "latent"]


class UnknownConventionError(KeyError, ValueError):
    """Raised for a convention name that is not in the catalogue; lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of its argument
        return str(self.args[0]) if self.args else ""


def _expand(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel parameters for ``channels`` channels.

    One value applies to every channel. Three (RGB) values applied to one channel use their
    average (a grayscale image normalised "like RGB"); applied to four channels (RGBA) the
    alpha channel gets the average. Any other mismatch is an error.
    """
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    avg = sum(values) / len(values)
    if channels == 1:
        return (avg,)
    if channels == len(values) + 1:
        return values + (avg,)
    raise ValueError(f"convention has {len(values)} per-channel values; cannot apply them to {channels} channels")


@dataclass(frozen=True)
class Convention:
    """One value-range convention.

    Pixel conventions carry ``mean``/``std`` (the affine map from [0, 1]); latent conventions
    carry ``scale``, ``shift``, ``channels`` and optional latent-to-RGB factors.
    """

    name: str
    kind: ConventionKind
    label: str
    source: str
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    integer: bool = False
    # latent conventions
    scale: float | None = None
    shift: float | None = None
    channels: int | None = None
    boundary: float = 4.0
    latent_rgb: tuple[tuple[float, ...], ...] | None = None
    latent_rgb_bias: tuple[float, ...] | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    aliases: tuple[str, ...] = field(default=())
    # latent conventions read from a VAE (rangewatch.expect.vae_latents.latent_convention_of): how many
    # frames / pixels one latent step covers, the layout its pipelines keep the latents in ("NCHW",
    # "NCTHW", "NTCHW"), and the spatial patch folded into channels before the normalisation (Flux.2: 2)
    temporal_compression: int | None = None
    spatial_compression: int | None = None
    layout: str | None = None
    patch_size: int | None = None

    # ---------------------------------------------------------------- pixel helpers
    def mean_for(self, channels: int) -> tuple[float, ...]:
        return _expand(self.mean, channels)

    def std_for(self, channels: int) -> tuple[float, ...]:
        return _expand(self.std, channels)

    def bounds(self, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (low, high): what [0, 1] maps to; latents use ±boundary."""
        if self.kind == "latent":
            return (-self.boundary,) * channels, (self.boundary,) * channels
        m, s = self.mean_for(channels), self.std_for(channels)
        return tuple((0.0 - mi) / si for mi, si in zip(m, s)), tuple((1 - mi) / si for mi, si in zip(m, s))

    def _affine(self, x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[channel_dim] if x.dim() > 0 else 1
        shape = [1] * x.dim()
        if x.dim() > 0:
            shape[channel_dim] = c
        dtype = x.dtype if x.is_floating_point() else torch.float32
        m = torch.tensor(self.mean_for(c), dtype=dtype, device=x.device).reshape(shape)
        s = torch.tensor(self.std_for(c), dtype=dtype, device=x.device).reshape(shape)
        return m, s

    def to_unit(self, x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Map a tensor in this convention to [0, 1] display space (not clamped)."""
        if self.kind == "latent":
            return self.latent_to_rgb(x, channel_dim) * 0.5 + 0.5
        x = x.float() if not x.is_floating_point() else x
        m, s = self._affine(x, channel_dim)
        return x * s + m

    def to_display(self, x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Map to [0, 1] display space and clamp; NaN becomes 0."""
        return torch.nan_to_num(self.to_unit(x, channel_dim), nan=0.0).clamp(0.0, 1.0)

    def from_unit(self, u: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Map a [0, 1] tensor into this convention (uint8 rounds and casts)."""
        if self.kind == "latent":
            raise ValueError(f"{self.name} is a latent convention: images are mapped into it by a VAE encoder")
        u = u.float() if not u.is_floating_point() else u
        m, s = self._affine(u, channel_dim)
        x = (u - m) / s
        if self.integer:
            return x.round().clamp(0, 255).to(torch.uint8)
        return x

    # ---------------------------------------------------------------- latent helpers
    def latent_to_rgb(self, z: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Linear latent-to-RGB approximation; the result reads as [-1, 1] (no VAE decode)."""
        if self.latent_rgb is None:
            raise ValueError(f"convention {self.name!r} has no latent-to-RGB factors")
        f = torch.tensor(self.latent_rgb, dtype=torch.float32, device=z.device)  # (C, 3)
        if z.shape[channel_dim] != f.shape[0]:
            raise ValueError(f"{self.name} expects {f.shape[0]} latent channels, got {z.shape[channel_dim]}")
        zc = torch.movedim(z.float(), channel_dim, -1)
        rgb = zc @ f
        if self.latent_rgb_bias is not None:
            rgb = rgb + torch.tensor(self.latent_rgb_bias, dtype=torch.float32, device=z.device)
        return torch.movedim(rgb, -1, channel_dim)


_LOCK = threading.Lock()
_CATALOGUE: dict[str, Convention] = {}
_ALIASES: dict[str, str] = {}


def _add(conv: Convention, *, overwrite: bool = False) -> Convention:
    with _LOCK:
        if not overwrite and conv.name in _CATALOGUE:
            raise ValueError(f"convention {conv.name!r} is already registered (pass overwrite=True to replace it)")
        _CATALOGUE[conv.name] = conv
        for alias in conv.aliases:
            _ALIASES[alias] = conv.name
    return conv


def list_conventions(kind: ConventionKind | None = None) -> list[str]:
    """Names of the registered conventions, optionally only ``"pixel"`` or ``"latent"`` ones."""
    return [n for n, c in _CATALOGUE.items() if kind is None or c.kind == kind]


def is_registered(conv: Convention) -> bool:
    """Whether the catalogue holds ``conv`` under its name (a convention read from data or a config is carried,
    not registered)."""
    return _CATALOGUE.get(conv.name) == conv


def get_convention(name: str | Convention) -> Convention:
    """Look a convention up by name (or alias); an unknown name lists the known ones."""
    if isinstance(name, Convention):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a convention is named by a string, got {type(name).__name__} {name!r}")
    key = _ALIASES.get(name, name)
    try:
        return _CATALOGUE[key]
    except KeyError:
        raise UnknownConventionError(
            f"unknown convention {name!r}; known conventions: {', '.join(list_conventions())}"
        ) from None


def unregister_convention(name: str) -> None:
    """Remove a convention registered with :func:`register_convention` (built-ins stay)."""
    with _LOCK:
        if name in _BUILTIN:
            raise ValueError(f"{name!r} is a built-in convention and cannot be removed")
        conv = _CATALOGUE.pop(name, None)
        if conv is None:
            raise UnknownConventionError(f"unknown convention {name!r}; known conventions: {', '.join(_CATALOGUE)}")
        for alias in conv.aliases:
            _ALIASES.pop(alias, None)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"convention name must be a non-empty identifier-like string, got {name!r}")


def _floats(values: float | Sequence[float], what: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    out = tuple(float(v) for v in values)
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be finite numbers, got {values!r}")
    return out


def register_convention(
    name: str,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    bounds: tuple[float | Sequence[float], float | Sequence[float]] | None = None,
    scale: float | None = None,
    shift: float | None = None,
    channels: int | None = None,
    latent_rgb: Sequence[Sequence[float]] | None = None,
    latent_rgb_bias: Sequence[float] | None = None,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
    boundary: float = 4.0,
    label: str | None = None,
    source: str = "registered by the user",
    overwrite: bool = False,
) -> Convention:
    """Register a convention and return it.

    Exactly one of three forms:
    - ``mean=..., std=...``: a pixel convention ``x = (u - mean) / std`` (as ``Normalize``);
    - ``bounds=(low, high)``: a pixel convention where [0, 1] maps linearly onto [low, high];
    - ``scale=...`` (optional ``shift``, ``channels``, ``latent_rgb``): a scaled latent convention.
    """
    _check_name(name)
    forms = [mean is not None or std is not None, bounds is not None, scale is not None]
    if sum(forms) != 1:
        raise ValueError("register_convention takes exactly one of: mean= and std=, bounds=(low, high), or scale=")
    if forms[0]:
        if mean is None or std is None:
            raise ValueError("a mean/std convention needs both mean= and std=")
        m, s = _floats(mean, "mean"), _floats(std, "std")
        if len(m) != len(s):
            raise ValueError(f"mean has {len(m)} values and std {len(s)}; they must match")
        if any(v <= 0 for v in s):
            raise ValueError(f"std must be positive, got {s}")
        conv = Convention(name, "pixel", label or f"Normalize(mean={list(m)}, std={list(s)})", source, mean=m, std=s)
    elif forms[1]:
        lo, hi = _floats(bounds[0], "bounds low"), _floats(bounds[1], "bounds high")  # type: ignore[index]
        if len(lo) != len(hi):
            lo, hi = (lo * len(hi), hi) if len(lo) == 1 else (lo, hi * len(lo))
        if any(h <= l for l, h in zip(lo, hi)):
            raise ValueError(f"bounds must have low < high, got {bounds}")
        s = tuple(1.0 / (h - l) for l, h in zip(lo, hi))
        m = tuple(-l * si for l, si in zip(lo, s))
        conv = Convention(name, "pixel", label or f"[{lo}, {hi}]", source, mean=m, std=s)
    else:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        rgb = tuple(tuple(float(v) for v in row) for row in latent_rgb) if latent_rgb is not None else None
        if rgb is not None and (any(len(r) != 3 for r in rgb) or (channels is not None and len(rgb) != channels)):
            raise ValueError("latent_rgb must have one row of 3 (R, G, B) factors per latent channel")
        conv = Convention(
            name,
            "latent",
            label or f"latent scale {scale}" + (f" shift {shift}" if shift else ""),
            source,
            scale=float(scale),
            shift=None if shift is None else float(shift),
            channels=channels if channels is not None else (len(rgb) if rgb else None),
            boundary=float(boundary),
            latent_rgb=rgb,
            latent_rgb_bias=tuple(latent_rgb_bias) if latent_rgb_bias is not None else None,
            latents_mean=tuple(latents_mean) if latents_mean is not None else None,
            latents_std=tuple(latents_std) if latents_std is not None else None,
        )
    return _add(conv, overwrite=overwrite)


# ---------------------------------------------------------------------------- built-ins
_TV = "torchvision transforms/_presets.py; timm data/constants.py"
_add(Convention("uint8", "pixel", "uint8 0..255", "decoded images, torchvision ToImage()", std=(1 / 255,), integer=True))
_add(Convention("float255", "pixel", "float 0..255", "ToDtype(float32, scale=False)", std=(1 / 255,)))
_add(Convention("unit", "pixel", "[0,1]", "ToTensor(), ToDtype(scale=True), diffusers VaeImageProcessor input", aliases=("zero_one", "[0,1]")))
_add(
    Convention(
        "symmetric",
        "pixel",
        "[-1,1]",
        "Normalize(0.5, 0.5): SD/SDXL/Flux VAEs, CodeFormer, GANs, SigLIP, timm inception",
        mean=(0.5,),
        std=(0.5,),
        aliases=("minus_one_one", "[-1,1]"),
    )
)
_add(Convention("imagenet", "pixel", "ImageNet mean/std", _TV, mean=IMAGENET_MEAN, std=IMAGENET_STD))
_add(
    Convention(
        "clip",
        "pixel",
        "CLIP mean/std",
        "open_clip constants.py OPENAI_DATASET_MEAN/STD; transformers CLIPImageProcessor",
        mean=CLIP_MEAN,
        std=CLIP_STD,
    )
)

_COMFY = "ComfyUI comfy/latent_formats.py @9a9a69fd"
_SD15_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
_SDXL_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
_SD3_RGB = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
)
_FLUX_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
_add(Convention("sd15_latent", "latent", "SD 1.x/2.x latent (x0.18215)", _COMFY, scale=0.18215, channels=4, latent_rgb=_SD15_RGB))
_add(
    Convention(
        "sdxl_latent", "latent", "SDXL latent (x0.13025)", _COMFY, scale=0.13025, channels=4,
        latent_rgb=_SDXL_RGB, latent_rgb_bias=(0.1084, -0.0175, -0.0011),
    )
)
_add(
    Convention(
        "sd3_latent", "latent", "SD3 latent ((z-0.0609)x1.5305)", _COMFY, scale=1.5305, shift=0.0609, channels=16,
        latent_rgb=_SD3_RGB, latent_rgb_bias=(0.2394, 0.2135, 0.1925),
    )
)
_add(
    Convention(
        "flux_latent", "latent", "Flux.1 latent ((z-0.1159)x0.3611)", _COMFY, scale=0.3611, shift=0.1159, channels=16,
        latent_rgb=_FLUX_RGB, latent_rgb_bias=(-0.0329, -0.0718, -0.0851),
    )
)

# Video latents (ComfyUI comfy/latent_formats.py @040a3243: Wan21, Mochi, HunyuanVideo). Their scaling numbers
# are those of the diffusers VAE configs: AutoencoderKLWan / AutoencoderKLQwenImage latents_mean / latents_std
# (diffusers src/diffusers/models/autoencoders/autoencoder_kl_wan.py; the Wan pipelines normalise
# (z - latents_mean) / latents_std, pipelines/wan/pipeline_wan.py), AutoencoderKLMochi latents_mean /
# latents_std with scaling_factor 1.0 (autoencoder_kl_mochi.py; pipelines/mochi/pipeline_mochi.py), and
# AutoencoderKLHunyuanVideo scaling_factor 0.476986 (autoencoder_kl_hunyuan_video.py).
_COMFY_VIDEO = "ComfyUI comfy/latent_formats.py @040a3243"
_WAN_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
             0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_WAN_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
_WAN_RGB = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
_MOCHI_MEAN = (-0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
               0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
               -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285)
_MOCHI_STD = (0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592, 0.8244560132752793,
              0.917259975397747, 0.9294154431013696, 1.3720942357788521, 0.881393668867029, 0.9168315692124348,
              0.9185249279345552, 0.9274757570805041)
_MOCHI_RGB = (
    (-0.0069, -0.0045, 0.0018), (0.0154, -0.0692, -0.0274), (0.0333, 0.0019, 0.0206), (-0.1390, 0.0628, 0.1678),
    (-0.0725, 0.0134, -0.1898), (0.0074, -0.0270, -0.0209), (-0.0176, -0.0277, -0.0221), (0.5294, 0.5204, 0.3852),
    (-0.0326, -0.0446, -0.0143), (-0.0659, 0.0153, -0.0153), (0.0185, -0.0217, 0.0014), (-0.0396, -0.0495, -0.0281),
)
_HUNYUAN_RGB = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)
_add(
    Convention(
        "wan21_latent", "latent", "Wan 2.1 latent ((z - latents_mean) / latents_std)", _COMFY_VIDEO, scale=1.0, channels=16,
        latents_mean=_WAN_MEAN, latents_std=_WAN_STD, latent_rgb=_WAN_RGB, latent_rgb_bias=(-0.1835, -0.0868, -0.3360),
        temporal_compression=4, spatial_compression=8, layout="NCTHW",
    )
)
_add(
    Convention(
        "mochi_latent", "latent", "Mochi latent ((z - latents_mean) / latents_std)", _COMFY_VIDEO, scale=1.0, channels=12,
        latents_mean=_MOCHI_MEAN, latents_std=_MOCHI_STD, latent_rgb=_MOCHI_RGB, latent_rgb_bias=(-0.0940, -0.1418, -0.1453),
        temporal_compression=6, spatial_compression=8, layout="NCTHW",
    )
)
_add(
    Convention(
        "hunyuanvideo_latent", "latent", "HunyuanVideo latent (x0.476986)", _COMFY_VIDEO, scale=0.476986, channels=16,
        latent_rgb=_HUNYUAN_RGB, latent_rgb_bias=(0.0259, -0.0192, -0.0761), temporal_compression=4, spatial_compression=8,
        layout="NCTHW",
    )
)

_BUILTIN = frozenset(_CATALOGUE)
