"""transformers: what its vision models expect, read from the model (``read_expectations``).

An image processor attached to the model (``.image_processor``, ``.processor``, ``.feature_extractor``,
``.preprocess``, ``.transform``), read with :func:`rangewatch.expect.transforms.predict_transform`;
otherwise the model type's published checkpoints (:data:`HF_MODEL_TYPES`; the processors'
defaults in https://github.com/huggingface/transformers/tree/main/src/transformers/models and the
checkpoints' ``preprocessor_config.json``). Composite models (``CLIPModel``, ``SiglipModel``) are keyed
at their ``vision_model``.
"""

from __future__ import annotations

import sys

from torch import nn

from .metadata import Deriving, library_of
from ..taps.sharding import user_class

__all__ = ["read_expectations", "HF_MODEL_TYPES"]

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


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """A transformers ``PreTrainedModel``: an attached processor, else its ``model_type``'s checkpoints;
    ``False`` for a model type not listed, so the walk looks inside (a vision tower in a VLM)."""
    if library_of(m) != "transformers" or "transformers" not in sys.modules:
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
        tap = d.child(path, "vision_model")
    attached = d.attached_processor(m)
    if attached is not None:
        attr, proc = attached
        if d.from_processor(path, tap, proc, f"{path or 'root'}.{attr}"):
            return True
    if mt in HF_MODEL_TYPES:
        conv, why = HF_MODEL_TYPES[mt]
        d.put(tap, "input", conv, f"transformers {user_class(m).__name__} (model_type {mt!r}) at {path or 'the root module'}: {why}")
        return True
    return False  # not a vision model we know: let rules look inside (e.g. a vision tower in a VLM)
