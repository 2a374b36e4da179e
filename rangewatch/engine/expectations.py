"""The engine's expectation sources: declared (``expect=``), read from the model's metadata, compared with the loaders.

:class:`ExpectationSources` is the part of :class:`rangewatch.Watch` that fills ``Watch.expectations``: the declared
keys under their tap names, the expectations :func:`rangewatch.expect.models.derive_expectations` reads from the
model (declared ones win), and the ``mismatch`` finding when what a loader is predicted to produce contradicts what
the model expects. Which expectation applies to a tap is :meth:`rangewatch.Watch.expectation_for`.
"""

from __future__ import annotations

from torch import nn

from ..expect.expectation import Expectation
from ..findings.finding import Finding, mismatch_finding
from ..taps.hooks import parse_tap_key

__all__ = ["ExpectationSources"]


class ExpectationSources:
    """Where the engine's expectations come from (a mixin of :class:`~rangewatch.engine.watch.Watch`): the declared
    ``expect=`` keys as tap names, the model's metadata, and the finding when a loader prediction contradicts them."""

    def _set_declared(self) -> None:
        for key, conv in self.expect.items():
            name = self._tap_name_for_key(key)
            self.expectations[name] = Expectation(conv, f"declared in RangeWatch(expect={{{key!r}: {conv!r}}})", "declared",
                                                  "batch" if name.startswith("batch") else parse_tap_key(key)[1])  # type: ignore[arg-type]

    @staticmethod
    def _tap_name_for_key(key: str) -> str:
        if key.startswith("batch"):
            return key
        if key.startswith("val/"):
            return key
        name, side = parse_tap_key(key)
        return f"{name}:{side}"

    def _derive(self, model: nn.Module) -> None:
        """Expectations from model metadata; declared ones win."""
        if not self.derive_expectations or self._derived_keys or self._derived_done:
            return
        self._derived_done = True  # metadata is read once per fit (teardown clears it)
        from ..expect.models import derive_expectations

        notes: list[str] = []
        try:
            derived = derive_expectations(model, image_processors=self.image_processors or None, notes=notes)
        except Exception as e:
            self._internal("derive_expectations", e, None)
            return
        for key, exp in derived.items():
            name, side = key.rsplit(":", 1)
            if side not in ("input", "output") or not name:
                continue
            tap = f"{name}:{side}"
            if tap in self.expectations:  # declared wins
                continue
            self.expectations[tap] = exp
            self._derived_keys.add(tap)
        for n in notes:
            self._note_once(n, f"rangewatch: {n}")

    def _pipeline_finding(self, tap: str, data: Expectation, model: Expectation) -> Finding:
        from ..checks.fixes import conversion_fix

        module = tap.rsplit(":", 1)[0]
        return mismatch_finding(
            where=f"train dataloader -> {tap}",
            observed=data.convention,
            expected=model.convention,
            evidence=(
                f"the data pipeline produces {data.conv.label} ({data.source}) while {module} expects {model.conv.label} "
                f"({model.source}); unless the model re-normalises in between, {module} gets the wrong range"
            ),
            fix=conversion_fix(data.convention, model.convention, module),
            severity="info",
            step=self._now(),
            source=model.source,
        )
