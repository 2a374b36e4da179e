"""rangewatch: catch value-range mistakes in image and diffusion training while the run is young."""

from .callback import RangeWatch
from .config import ConfigError
from .conventions import Convention, get_convention, list_conventions, register_convention
from .expectation import Expectation
from .findings import Finding, RangeMismatchError
from .inference import Inference, infer_convention
from .stats import RangeStats, RangeSummary
from .compat import enable_basicsr_compat, import_basicsr
from .integrations import LossWatch, find_loss_networks
from .latents import LatentMonitor, latent_preview, log_latents, soft_clamp
from .numerics import FP16_MAX, ModuleTracer, TraceReport, nan_image_finding
from .pipeline import PipelineWatch, watch_pipeline
from .visualization import VisualizationWatch, log_previews, watch_visualization

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Convention",
    "RangeWatch",
    "Expectation",
    "Finding",
    "Inference",
    "RangeMismatchError",
    "RangeStats",
    "RangeSummary",
    "get_convention",
    "infer_convention",
    "list_conventions",
    "register_convention",
    "VisualizationWatch",
    "enable_basicsr_compat",
    "import_basicsr",
    "log_previews",
    "watch_visualization",
    "FP16_MAX",
    "LatentMonitor",
    "LossWatch",
    "find_loss_networks",
    "ModuleTracer",
    "TraceReport",
    "latent_preview",
    "log_latents",
    "nan_image_finding",
    "PipelineWatch",
    "watch_pipeline",
    "soft_clamp",
    "__version__",
]
