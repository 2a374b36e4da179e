"""timm: what its models expect, read from the model (``read_expectations``).

``timm.data.resolve_model_data_config(model)`` (the model's ``pretrained_cfg`` mean/std;
https://github.com/huggingface/pytorch-image-models/blob/main/timm/data/config.py), or the raw
``pretrained_cfg`` when that fails.
"""

from __future__ import annotations

import sys

from torch import nn

from .metadata import Deriving, library_of
from ..taps.sharding import user_class

__all__ = ["read_expectations"]


def read_expectations(d: Deriving, path: str, m: nn.Module) -> bool:
    """A timm model carrying a ``pretrained_cfg``: its input mean/std."""
    if library_of(m) != "timm" or not hasattr(m, "pretrained_cfg") or "timm" not in sys.modules:
        return False
    try:
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(m)
    except Exception as e:  # noqa: BLE001 - any failure: fall back to the raw pretrained_cfg
        cfg = dict(getattr(m, "pretrained_cfg", None) or {})
        d.note(f"timm resolve_model_data_config failed for {path or 'root'} ({e}); read pretrained_cfg directly")
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        d.note(f"timm model at {path or 'root'} has no mean/std in its pretrained_cfg")
        return True
    pc = getattr(m, "pretrained_cfg", {}) or {}
    arch = pc.get("architecture") or user_class(m).__name__
    tag = pc.get("tag")
    ident = f"{arch}.{tag}" if tag else arch
    src = f"timm pretrained_cfg of {path or 'the root module'} ({ident})"
    return d.put_normalize(path, mean, std, src)
