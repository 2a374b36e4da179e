"""What one pipeline call recorded, and what the pipeline checks read of the watch.

:class:`Call` is the per-call record :class:`rangewatch.pipeline.watch.PipelineWatch` fills while a pipeline
runs (device tensors until the call returns) and :mod:`rangewatch.pipeline.checks` judges once the call is over;
:class:`Setup` is the part of the watch those checks read (the pipeline, its VAE's latent scaling, the options).
Both live here so that the watch imports the checks and the checks import neither the watch nor each other
in a circle.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import torch

from ..checks.latents import LatentMonitor

__all__ = ["Call", "Setup"]


class Call:
    """What one pipeline call recorded (device tensors until the watch judges it).

    The statistics themselves are the engine's (judged taps, :mod:`rangewatch.engine.judged_taps`): ``monitors`` is
    the window of the checked steps' tap, ``decodes`` the keys of this call's decodes in the decode taps' windows."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.inputs: list[str] = []  # input arguments fed to the engine's taps
        self.steps: list[torch.Tensor] = []  # per step (C, 4): mean, std, max|x|, non-finite (model space)
        self.num_steps: int | None = None
        self.checked: list[int] | None = None
        self.monitors: Mapping[int, LatentMonitor] = {}  # checked step -> monitor of noise-normalised latents (the engine's window)
        self.init_sigma: Any = 1.0  # scheduler.init_noise_sigma (a float or a tensor)
        self.decodes: list[int] = []  # keys of the completed decodes (their input and output taps' windows)
        self.height: int | None = None
        self.width: int | None = None
        self.levels: torch.Tensor | float | None = None  # noise level per scheduler step (see watch._levels)


class Setup(Protocol):
    """What :mod:`rangewatch.pipeline.checks` reads of the watch (a :class:`~rangewatch.pipeline.watch.PipelineWatch`)."""

    pipe: Any  # the diffusers pipeline
    vae: torch.nn.Module
    scale: float | None  # vae.config.scaling_factor
    shift: float  # vae.config.shift_factor (0 without one)
    latents_std: Sequence[float] | None  # per-channel latents_std (SDXL-style configs, LTX buffers)
    trace: str  # "vae", "all" or "none"
    clip_share: float  # the decoded share outside [-1, 1] that is a clipping finding

    @property
    def convention(self) -> str | None: ...  # the VAE's latent convention's name
