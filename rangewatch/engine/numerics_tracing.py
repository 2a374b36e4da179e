"""The engine's numerics: the module tracer (NaN/Inf origin, fp16 headroom).

:class:`NumericsTracing` is a collaborator of :class:`rangewatch.Watch`: it owns the
:class:`~rangewatch.checks.numerics.ModuleTracer` that ``trace_modules`` asks for (a name the model lacks is a
:class:`~rangewatch.ConfigError`), steps it with the training steps, pauses it during validation, checks it at the
engine's check steps and contributes its NaN/Inf flag to the fail-fast read (``check_nonfinite_every_step``).

A front end may also place tracers of its own (:meth:`NumericsTracing.add`, through
:meth:`rangewatch.Watch.judged.trace`): each on one module, under the front end's prefix, stepped by the front end
(:meth:`NumericsTracing.step_front` / :meth:`NumericsTracing.pause_front`, or by each forward of its module with
``auto_step``) and judged by it (a judged tap of :mod:`rangewatch.engine.judged_taps`), never by the engine's
checks; the engine owns them and takes them off (:meth:`NumericsTracing.remove`, and :meth:`NumericsTracing.detach`
with its own). The diffusers pipeline front end traces its VAE this way, stepped per decode, and with
``trace="all"`` its denoiser, stepped per forward.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..config import ConfigError, _short
from ..findings.finding import Finding

__all__ = ["NumericsTracing"]


class NumericsTracing:
    """The module tracer the engine drives: :meth:`attach` / :meth:`detach` with the model, :meth:`start_step` /
    :meth:`pause` around training and validation forwards, :meth:`check` at check steps, :meth:`nonfinite_flag`."""

    def __init__(self) -> None:
        #: the :class:`~rangewatch.checks.numerics.ModuleTracer` placed on the model (None without ``trace_modules``)
        self.tracer: Any = None
        #: the front ends' own tracers by prefix (:meth:`add`), in the order placed
        self.front: dict[str, Any] = {}

    def attach(self, model: nn.Module, modules: str | list[str] | None, *, history: int, headroom_share: float,
               exact: bool, origin: str | None = None) -> list[str]:
        """Place the tracer on ``model`` for ``modules`` (once: a placed tracer stays); returns its notes."""
        if modules is None or self.tracer is not None:
            return []
        from ..checks.numerics import ModuleTracer, UnknownModuleError

        try:
            tracer = ModuleTracer(model, modules, history, headroom_share=headroom_share, auto_step=False, exact=exact)
        except UnknownModuleError as e:
            raise ConfigError(
                f"{origin + ': ' if origin else ''}option 'trace_modules' = {_short(modules)}: {e}; allowed: 'all' or names / patterns of "
                f"submodules of {type(model).__name__}"
            ) from None
        self.tracer = tracer.attach()  # attach() removes every hook it placed when one fails
        return list(tracer.notes)

    def detach(self) -> None:
        """Take the tracer off, and the front ends' tracers with it."""
        if self.tracer is not None:
            self.tracer.detach()
            self.tracer = None
        self.remove()

    def start_step(self, step: int) -> None:
        """Training forwards from now on belong to ``step``."""
        if self.tracer is not None:
            self.tracer.enabled = True
            self.tracer.start_step(step)

    def pause(self) -> None:
        """Validation forwards would mix into the training step: not traced until the next :meth:`start_step`."""
        if self.tracer is not None:
            self.tracer.enabled = False

    def check(self, step: int | None, gather: Callable[[bytes], list[bytes]] | None = None) -> tuple[list[Finding], list[str]]:
        """The tracer's findings (``nonfinite`` origin, ``fp16_headroom``) and notes at a check step; ``gather``: the
        ranks' byte all-gather, so that every rank reaches the same verdict."""
        if self.tracer is None:
            return [], []
        found = self.tracer.check(step, gather=gather)
        return found, list(self.tracer.notes)

    def nonfinite_flag(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` (the taps' NaN/Inf flag on the device) or'ed with the tracer's, without a host read."""
        if self.tracer is None:
            return flag
        own = self.tracer.nonfinite_flag()
        return flag.to(own.device) | own

    # ------------------------------------------------------------------ a front end's own tracers
    def add(self, prefix: str, model: nn.Module, *, auto_step: bool, history: int, headroom_share: float,
            enabled: bool = True) -> Any:
        """Place a :class:`~rangewatch.checks.numerics.ModuleTracer` over every leaf module of ``model`` under
        ``prefix`` (replacing one there): stepped by each forward of ``model`` with ``auto_step``, else by
        :meth:`step_front`; ``enabled=False`` records nothing until the first :meth:`step_front`. Returns it."""
        from ..checks.numerics import ModuleTracer

        self.remove(prefix)
        tracer = ModuleTracer(model, "all", history, headroom_share=headroom_share, auto_step=auto_step)
        tracer.enabled = enabled
        self.front[prefix] = tracer.attach()  # attach() removes every hook it placed when one fails
        return tracer

    def step_front(self, prefix: str, step: int | None) -> None:
        """The forwards of ``prefix``'s module from now on belong to ``step`` (recorded again after :meth:`pause_front`)."""
        tracer = self.front.get(prefix)
        if tracer is not None:
            tracer.start_step(step)
            tracer.enabled = True

    def pause_front(self, prefix: str) -> None:
        """Record nothing of ``prefix``'s module until the next :meth:`step_front`."""
        tracer = self.front.get(prefix)
        if tracer is not None:
            tracer.enabled = False

    def remove(self, prefix: str | None = None) -> list[str]:
        """Take the front-end tracer ``prefix`` off (every one with None); returns the prefixes taken off."""
        gone = [p for p in self.front if prefix is None or p == prefix]
        for p in gone:
            self.front.pop(p).detach()
        return gone
