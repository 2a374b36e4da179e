"""Loss networks and metrics: the range each one expects, checked at its first call.

One file per library, each saying what that library's objects expect and how to read the
convention from the object and from the call:

- :mod:`~rangewatch.integrations.lpips`: ``lpips.LPIPS`` ([-1,1]; ``forward(a, b, normalize=True)``: [0,1])
- :mod:`~rangewatch.integrations.taming`: the taming / latent-diffusion ``LPIPS`` copy ([-1,1])
- :mod:`~rangewatch.integrations.torchmetrics`: LPIPS, FID/KID/IS, PSNR/SSIM metrics and functions
- :mod:`~rangewatch.integrations.basicsr`: ``PerceptualLoss`` / ``VGGFeatureExtractor``, ``calculate_psnr`` / ``calculate_ssim``
- :mod:`~rangewatch.integrations.torchvision`: frozen torchvision classifiers used as feature extractors

Model metadata (what a model's own input/output expects, read by
:func:`rangewatch.expect.models.derive_expectations`), one reader per library, each with
``read_expectations(d, path, module)`` (the sink is :class:`~rangewatch.integrations.metadata.Deriving`):
:mod:`~rangewatch.integrations.diffusers` (autoencoders: pixels and latent scaling),
:mod:`~rangewatch.integrations.compvis` (latent-diffusion / taming / generative-models autoencoders),
:mod:`~rangewatch.integrations.timm`, :mod:`~rangewatch.integrations.transformers`,
:mod:`~rangewatch.integrations.open_clip`.

:class:`LossWatch` (in :mod:`~rangewatch.integrations.watch`) finds them in a module and watches
them; :class:`~rangewatch.RangeWatch` does this on its LightningModule with no options. No library
is imported here: objects are recognised by ``type(obj).__module__`` and class name.
"""

from .base import Expects, Reading, Watched
from .watch import LossWatch, find_loss_networks

__all__ = ["Expects", "LossWatch", "Reading", "Watched", "find_loss_networks"]
