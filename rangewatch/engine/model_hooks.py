"""What the engine places on a model for a fit: module hooks, the loss networks' watch, the module tracer.

:class:`ModelHooks` is a collaborator of :class:`rangewatch.Watch` that places these together at ``Watch.attach`` and
takes them off together at ``Watch.detach`` / ``Watch.abort``: the forward hooks of the named submodules
(:class:`~rangewatch.taps.hooks.ModuleTaps`, which feed the engine's taps), the loss networks and metrics
(:class:`~rangewatch.integrations.LossWatch`: LPIPS, FID, VGG losses) and the module tracer of ``trace_modules``
(:class:`~rangewatch.engine.numerics_tracing.NumericsTracing`, the engine's, given). A submodule name the model lacks
is a :class:`~rangewatch.ConfigError` that leaves nothing behind.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch
from torch import nn

from ..config import ConfigError
from ..findings.finding import Finding, RangeMismatchError
from ..taps.hooks import ModuleTaps
from ..taps.sharding import user_named_modules
from .numerics_tracing import NumericsTracing
from .reporter import FindingsReporter
from .surroundings import Surroundings

__all__ = ["ModelHooks"]


class ModelHooks:
    """The hooks of one fit: :meth:`attach_watchers` (loss networks, tracer), :meth:`attach_taps` (the submodules'
    forward hooks, feeding ``on_tensor(name, tensor)``; a hook that fails calls ``on_error(name, error)``),
    :meth:`check` (the tracer's and the loss networks' findings at a check step), :meth:`detach`, :meth:`abort`."""

    def __init__(self, reporter: FindingsReporter, surroundings: Surroundings, numerics: NumericsTracing,
                 on_tensor: Callable[[str, torch.Tensor], None], on_error: Callable[[str, BaseException], None]) -> None:
        self._reporter, self._env, self._numerics = reporter, surroundings, numerics
        self.module_taps = ModuleTaps(on_tensor, on_error)
        self.losses: Any = None  # the LossWatch, placed by attach_watchers
        self.attached = False  # placed (until detach)

    @property
    def hooked(self) -> Any:
        """The submodules that carry hooks, with their sides (None when nothing is attached)."""
        return self.module_taps.attached if self.attached else None

    def attach_watchers(self, model: nn.Module, *, losses: bool, trace_modules: Any, history: int, headroom_share: float,
                        exact: bool, origin: str | None) -> None:
        """The loss networks and metrics (with ``losses``) and the tracer of ``trace_modules`` (an unknown name is a
        :class:`~rangewatch.ConfigError`); any other failure is an internal error, that piece off."""
        self.attached = True
        try:  # loss networks and metrics (LPIPS, FID, PSNR, VGG losses): rangewatch.integrations
            from ..integrations import LossWatch

            if losses:
                self.losses = (self.losses or LossWatch()).attach(model)
        except Exception as e:
            self._reporter.internal("loss networks", e, None)
        try:
            notes = self._numerics.attach(model, trace_modules, history=history, headroom_share=headroom_share,
                                          exact=exact, origin=origin)
            for n in notes:
                self._reporter.note_once(n, f"rangewatch: {n}")
        except ConfigError:
            raise
        except Exception as e:
            self._reporter.internal("trace_modules", e, None)

    def attach_taps(self, model: nn.Module, wanted: dict[str, set[str]]) -> list[str]:
        """Hook the ``wanted`` sides of the named submodules; returns the names the model lacks. The submodules that
        cannot carry hooks (TorchScript) are said once."""
        missing = self.module_taps.attach(model, wanted)
        for n in self.module_taps.skipped:
            self._reporter.note_once(n, f"rangewatch: {n}")
        return missing

    def unknown(self, model: nn.Module, missing: list[str], origin: str | None) -> ConfigError:
        """Take off everything this attach placed; the error that names the ``missing`` submodules (and near misses)."""
        self.module_taps.detach()
        if self.losses is not None:
            self.losses.detach()
        self._numerics.detach()
        names = [n for n, _ in user_named_modules(model) if n]
        msgs = []
        for m in missing:
            close = difflib.get_close_matches(m, names, n=3)
            msgs.append(f"{m!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        return ConfigError(
            f"{origin + ': ' if origin else ''}RangeWatch: no submodule named {', '.join(msgs)} in {type(model).__name__}; "
            f"named submodules include: {', '.join(names[:25])}{' ...' if len(names) > 25 else ''}"
        )

    def check(self, step: int, trace: bool, gather: Callable[[bytes], list[bytes]] | None) -> list[Finding]:
        """The tracer's findings (with ``trace``: a training check; ``gather``: the ranks' byte all-gather, so every
        rank reaches the same verdict) and the loss networks' at check ``step``."""
        new: list[Finding] = []
        if self._numerics.tracer is not None and trace:
            try:
                found, notes = self._numerics.check(step, gather)
                new.extend(found)
                for n in notes:
                    self._reporter.note_once(n, f"rangewatch: {n}")
            except Exception as e:
                self._reporter.internal("trace_modules", e, None)
        if self.losses is not None:
            new.extend(self.losses.check(step))
        return new

    def detach(self) -> None:
        """The module hooks and the loss networks off (the tracer is the engine's to take off, last)."""
        self.module_taps.detach()
        self.attached = False
        if self.losses is not None:
            self.losses.detach()

    def abort(self, exception: BaseException | None) -> None:
        """The run failed with ``exception``: everything off; unless rangewatch itself stopped the run, the tracer
        still names where NaN/Inf came from (a NaN loss that raised), said at once."""
        self.detach()
        if self._numerics.tracer is not None and not isinstance(exception, RangeMismatchError):
            try:  # a NaN loss that raised: still name where the NaN came from
                for f in self._numerics.check(self._env.now())[0]:
                    if self._reporter.log.add(f):
                        from ..sinks.console import finding_text

                        self._env.warn(finding_text(f))
            except Exception as e:
                self._reporter.internal("trace_modules", e, None)
            self._numerics.detach()
