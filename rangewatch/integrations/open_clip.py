"""open_clip: what its visual towers expect, read from the model (``read_expectations``).

``visual.preprocess_cfg`` (or the legacy ``image_mean`` / ``image_std``), else open_clip's
``PreprocessCfg`` default, the OpenAI CLIP constants
(https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/transform.py).
"""

from __future__ import annotations

from torch import nn

from .metadata import Deriving, library_of
from ..taps.sharding import user_class

__all__ = ["read_expectations"]


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """An open_clip visual tower: its ``preprocess_cfg`` mean/std, else open_clip's default."""
    if library_of(m) != "open_clip":
        return False
    attrs = getattr(m, "__dict__", {})
    pp = attrs.get("preprocess_cfg") or {}
    mean = pp.get("mean") if isinstance(pp, dict) else None
    std = pp.get("std") if isinstance(pp, dict) else None
    how = "preprocess_cfg"
    if mean is None or std is None:
        mean, std, how = attrs.get("image_mean"), attrs.get("image_std"), "image_mean/image_std"
    cls = user_class(m).__name__
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
    return d.put_normalize(path, mean, std, src)
