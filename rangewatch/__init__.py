"""rangewatch: catch value-range mistakes in image and diffusion training while the run is young.

The public names are imported on first use (PEP 562), so that ``rangewatch --help`` and other
light entry points start without importing torch or Lightning.

The flow is taps -> stats -> checks -> findings -> sinks; ``docs/ARCHITECTURE.md`` maps each step to
its module(s) and says where a new check, library integration or sink goes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "RangeWatch": "callback",
    "Watch": "engine",
    "TapInfo": "engine",
    "watch": "loop",
    "FindingsLog": "findings_log",
    "Collectives": "collectives",
    "SingleProcess": "collectives",
    "LightningCollectives": "collectives",
    "TorchDistributed": "collectives",
    "ConfigError": "config",
    "Convention": "conventions",
    "get_convention": "conventions",
    "list_conventions": "conventions",
    "register_convention": "conventions",
    "Expectation": "expectation",
    "Finding": "findings",
    "RangeMismatchError": "findings",
    "Inference": "inference",
    "infer_convention": "inference",
    "RangeStats": "stats",
    "RangeSummary": "stats",
    "enable_basicsr_compat": "compat",
    "import_basicsr": "compat",
    "LatentMonitor": "latents",
    "latent_preview": "latents",
    "log_latents": "latents",
    "soft_clamp": "latents",
    "FP16_MAX": "numerics",
    "ModuleTracer": "numerics",
    "TraceReport": "numerics",
    "nan_image_finding": "numerics",
    "VisualizationWatch": "visualization",
    "log_previews": "visualization",
    "watch_visualization": "visualization",
    "LossWatch": "integrations",
    "find_loss_networks": "integrations",
    "PipelineWatch": "pipeline",
    "watch_pipeline": "pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'rangewatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .callback import RangeWatch
    from .collectives import Collectives, LightningCollectives, SingleProcess, TorchDistributed
    from .engine import TapInfo, Watch
    from .findings_log import FindingsLog
    from .loop import watch
    from .compat import enable_basicsr_compat, import_basicsr
    from .config import ConfigError
    from .conventions import Convention, get_convention, list_conventions, register_convention
    from .expectation import Expectation
    from .findings import Finding, RangeMismatchError
    from .inference import Inference, infer_convention
    from .integrations import LossWatch, find_loss_networks
    from .latents import LatentMonitor, latent_preview, log_latents, soft_clamp
    from .numerics import FP16_MAX, ModuleTracer, TraceReport, nan_image_finding
    from .pipeline import PipelineWatch, watch_pipeline
    from .stats import RangeStats, RangeSummary
    from .visualization import VisualizationWatch, log_previews, watch_visualization
