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
    "Watch": "engine.watch",
    "TapInfo": "engine.watch",
    "watch": "loop",
    "FindingsLog": "findings.log",
    "Collectives": "engine.collectives",
    "SingleProcess": "engine.collectives",
    "LightningCollectives": "engine.collectives",
    "TorchDistributed": "engine.collectives",
    "ConfigError": "config",
    "Convention": "expect.conventions",
    "get_convention": "expect.conventions",
    "list_conventions": "expect.conventions",
    "register_convention": "expect.conventions",
    "Expectation": "expect.expectation",
    "Finding": "findings.finding",
    "RangeMismatchError": "findings.finding",
    "Inference": "checks.inference",
    "infer_convention": "checks.inference",
    "RangeStats": "stats.range_stats",
    "RangeSummary": "stats.range_stats",
    "enable_basicsr_compat": "compat.basicsr",
    "import_basicsr": "compat.basicsr",
    "LatentMonitor": "checks.latents",
    "latent_preview": "checks.latents",
    "log_latents": "sinks.latents",
    "soft_clamp": "checks.latents",
    "latent_convention_of": "expect.vae_latents",
    "FP16_MAX": "checks.numerics",
    "ModuleTracer": "checks.numerics",
    "TraceReport": "checks.numerics",
    "nan_image_finding": "checks.numerics",
    "VisualizationWatch": "visualization",
    "log_previews": "visualization",
    "watch_visualization": "visualization",
    "LossWatch": "integrations",
    "find_loss_networks": "integrations",
    "PipelineWatch": "pipeline.watch",
    "watch_pipeline": "pipeline.watch",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'rangewatch' has no attribute {name!r}")
    from .rng import kept_rng  # importing torch, Lightning, rich, ... never draws from the user's generators

    with kept_rng():
        value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .callback import RangeWatch
    from .engine.collectives import Collectives, LightningCollectives, SingleProcess, TorchDistributed
    from .engine.watch import TapInfo, Watch
    from .findings.log import FindingsLog
    from .loop import watch
    from .compat.basicsr import enable_basicsr_compat, import_basicsr
    from .config import ConfigError
    from .expect.conventions import Convention, get_convention, list_conventions, register_convention
    from .expect.expectation import Expectation
    from .findings.finding import Finding, RangeMismatchError
    from .checks.inference import Inference, infer_convention
    from .integrations import LossWatch, find_loss_networks
    from .checks.latents import LatentMonitor, latent_preview, soft_clamp
    from .expect.vae_latents import latent_convention_of
    from .checks.numerics import FP16_MAX, ModuleTracer, TraceReport, nan_image_finding
    from .pipeline.watch import PipelineWatch, watch_pipeline
    from .sinks.latents import log_latents
    from .stats.range_stats import RangeStats, RangeSummary
    from .visualization import VisualizationWatch, log_previews, watch_visualization
