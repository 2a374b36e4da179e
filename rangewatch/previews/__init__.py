"""Clipping at visualisation: observe the calls that turn tensors into images, flag the ones that
silently clamp a meaningful share of values, and make corrected previews.

The calls observed (their results are never changed):

=========================================  ==================================================
call                                       range it assumes
=========================================  ==================================================
basicsr ``tensor2img`` / ``tensor2img_fast``  ``min_max`` (default ``(0, 1)``): clamps, then maps to [0, 1]
torchvision ``utils.save_image``            [0, 1] (``mul(255).add_(0.5).clamp_(0, 255)``), or the
                                           ``make_grid`` normalisation it is given
torchvision ``utils.make_grid``             nothing unless ``normalize=True``; with ``value_range``
                                           it clamps to it, without it stretches by min/max
                                           (which hides the data's real range: a ``note``)
TensorBoard ``SummaryWriter.add_image(s)``  floats: [0, 1] (``x * 255`` clipped); uint8 as is
TensorBoard ``SummaryWriter.add_video``     ``(N, T, C, H, W)``; floats: [0, 1] (``x * 255`` clipped); uint8 as
                                           is; the preview shows the first clip's first / middle / last frames
=========================================  ==================================================

A 5-D (video) tensor passed to an image call (``make_grid``, ``save_image``, ``add_image(s)``,
``tensor2img``) is not measured: one ``note`` per call site (the call itself runs unchanged).

(``SummaryWriter`` is ``torch.utils.tensorboard``'s, which is what Lightning's
``TensorBoardLogger.experiment`` is; tensorboardX's is observed too when it is already imported.)

For each call the tensor's statistics come from one device-side :class:`~rangewatch.stats.range_stats.RangeStats`
``detail=True`` update (bounds = the assumed range) and one small host transfer of those
statistics; the convention the data really follows comes from
:func:`~rangewatch.checks.inference.infer_convention`. A ``Finding(kind="clipping")`` is made when at
least ``threshold`` of the values are clamped (NaN: ``kind="nonfinite"``, "this will be a black
image"). Identical findings are reported once per watcher.

Usage::

    with watch_visualization() as watch:          # anywhere
        img = tensor2img(out)                     # basicsr, default min_max=(0, 1)
    watch.findings                                # [Finding(kind="clipping", ...)]
    log_previews(writer, watch, step=global_step)  # broken | corrected side by side

or, from a callback::

    watch = VisualizationWatch(on_finding=report)
    watch.start(); ...; watch.stop()
    log_previews(trainer.logger.experiment, watch, step=trainer.global_step)

For example, generator outputs in [-1, 1] shown with ``make_grid(..., value_range=(0, 1))``, which clamps
the negative half to black::

    >>> import tempfile, torch, torchvision
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from rangewatch.visualization import log_previews, watch_visualization
    >>> out = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> with watch_visualization() as watch:
    ...     grid = torchvision.utils.make_grid(out, normalize=True, value_range=(0, 1))
    >>> [(f.kind, f.observed) for f in watch.findings]
    [('clipping', 'symmetric')]
    >>> watch.findings[0].fix
    'pass `make_grid(x, normalize=True, value_range=(-1, 1))`'
    >>> tmp = tempfile.TemporaryDirectory()
    >>> writer = SummaryWriter(tmp.name)
    >>> log_previews(writer, watch, step=0)[0]
    'rangewatch/preview/make_grid_in_.../broken_value_range_0_1-vs-corrected_symmetric'
    >>> writer.close(); tmp.cleanup()

Patching is global and scoped: the first active watcher replaces the functions where they are
referenced (module attributes whose value is the original function, in every imported module,
e.g. ``basicsr.utils.tensor2img`` and ``basicsr.models.sr_model.tensor2img``; class attributes
for ``SummaryWriter``); the last one to stop puts every original back, also after exceptions
(and also in modules that imported a patched name while the watch was on). A lock and the list
of active watchers act as the reference count. **Nesting**: every active watcher sees every call
(inner and outer both get the record and the finding); statistics are computed once per call.
Calls made from inside an observed call (``save_image`` -> ``make_grid``, ``tensor2img`` ->
``make_grid``) are not observed a second time.

The package, one concept a module:

=================================  ===================================================================
:mod:`.calls`                      the observed calls and the range each assumes (``SPECS``)
:mod:`.patching`                   the process-wide patches and the hand-off of each call (``PATCHER``)
:mod:`.measure`                    one call's statistics and inferred convention
:mod:`.judge`                      the clipping rule and its advice (``ClippingJudge``)
:mod:`.records`                    what a watcher keeps of a call (``VisRecord``)
:mod:`.drawing`                    the corrected side-by-side previews (``Preview``)
:mod:`.watch`                      the watcher (``VisualizationWatch``, ``watch_visualization``)
:mod:`.log`                        writing previews through :mod:`rangewatch.sinks.loggers` (``log_previews``)
=================================  ===================================================================

``rangewatch.visualization`` re-exports the public names.
"""

from __future__ import annotations

from .calls import OBSERVED_CALLS
from .drawing import Preview
from .log import log_previews
from .patching import is_patched
from .records import VisRecord
from .watch import VisualizationWarning, VisualizationWatch, watch_visualization

__all__ = [
    "OBSERVED_CALLS",
    "Preview",
    "VisRecord",
    "VisualizationWarning",
    "VisualizationWatch",
    "is_patched",
    "log_previews",
    "watch_visualization",
]
