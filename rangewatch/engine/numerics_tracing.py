"""The engine's numerics: the module tracer (NaN/Inf origin, fp16 headroom) and the fail-fast NaN/Inf read.

:class:`NumericsTracing` is the part of :class:`rangewatch.Watch` that attaches a
:class:`~rangewatch.checks.numerics.ModuleTracer` for ``trace_modules`` (a name the model lacks is a
:class:`~rangewatch.ConfigError`) and, with ``check_nonfinite_every_step``, reads one NaN/Inf flag from the device
(every rank together). The tracer's check runs in the engine's check step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, _short

__all__ = ["NumericsTracing"]


class NumericsTracing:
    """The engine's module tracer (a mixin of :class:`~rangewatch.engine.watch.Watch`): attaching the
    :class:`~rangewatch.checks.numerics.ModuleTracer` that ``trace_modules`` asks for, and the fail-fast NaN/Inf flag."""

    def _attach_tracer(self, model: nn.Module) -> None:
        if self.trace_modules is None or self._tracer is not None:
            return
        from ..checks.numerics import ModuleTracer, UnknownModuleError

        try:
            tracer = ModuleTracer(
                model, self.trace_modules, self.trace_history, headroom_share=self.headroom_share,
                auto_step=False, exact=self.trace_exact,
            )
        except UnknownModuleError as e:
            raise ConfigError(
                f"{self.origin + ': ' if getattr(self, 'origin', None) else ''}option 'trace_modules' = {_short(self.trace_modules)}: {e}; allowed: 'all' or names / patterns of "
                f"submodules of {type(model).__name__}"
            ) from None
        self._tracer = tracer.attach()  # attach() removes every hook it placed when one fails
        for n in tracer.notes:
            self._note_once(n, f"rangewatch: {n}")

    def _nonfinite_now(self) -> bool:
        """Fail-fast: one bool read from the device (a small sync), only with check_nonfinite_every_step."""
        from ..checks.numerics import nonfinite_flag

        flag = nonfinite_flag([t.stats for t in self._taps.values() if not t.disabled])
        if self._tracer is not None:
            flag = flag.to(self._tracer.nonfinite_flag().device) | self._tracer.nonfinite_flag()
        coll = self.collectives
        if coll.world_size > 1:  # every rank must then check, or none
            flag = coll.all_reduce_sum(flag.to(coll.device, torch.float32)) > 0
        return bool(flag.item())
