"""The engine's expectation sources: declared (``expect=``), read from the model's metadata, compared with the loaders.

:class:`ExpectationSources` is the part of :class:`rangewatch.Watch` that fills ``Watch.expectations``: the declared
keys under their tap names, the expectations :func:`rangewatch.expect.models.derive_expectations` reads from the
model (declared ones win), and the ``mismatch`` finding when what a loader is predicted to produce contradicts what
the model expects. Which expectation applies to a tap is :meth:`rangewatch.Watch.expectation_for`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..expect.expectation import Expectation
from ..findings.finding import Finding, mismatch_finding
from ..taps.hooks import parse_tap_key

__all__ = ["ExpectationSources"]

#: the names training scripts give their clean, scaled latents (the diffusers examples' and sd-scripts'
#: ``latents``, the diffusers Flux/SD3 DreamBooth scripts' ``model_input``); never the noisy mix
_LATENT_NAME = re.compile(r"(?:clean_|vae_|image_|video_|target_|gt_)?latents?|model_input", re.IGNORECASE)


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
            self._reporter.internal("derive_expectations", e, None)
            return
        for key, exp in derived.items():
            name, side = key.rsplit(":", 1)
            if side == "latent":  # a VAE's scaled latents: no hook sees them; a tensor named as latents is bound to it
                self._vae_latents[name] = exp
                continue
            if side not in ("input", "output") or not name:
                continue
            tap = f"{name}:{side}"
            if tap in self.expectations:  # declared wins
                continue
            self.expectations[tap] = exp
            self._derived_keys.add(tap)
        for n in notes:
            self._reporter.note_once(n, f"rangewatch: {n}")

    def _bind_latent(self, name: str, t: torch.Tensor) -> int | None:
        """A tensor handed to :meth:`~rangewatch.Watch.tensor` under a latents name (``latents``,
        ``clean_latents``, ``model_input``), with nothing declared for it, is judged against the latent
        convention of the attached VAE's own config (scaling / shift factor, ``latents_mean/std``, latent
        channels). Bound only when exactly one VAE is attached and the tensor carries its latent channel count
        on dim 1 (packed token latents and other shapes are said once, not guessed). Returns the channel dim
        to feed it with (1), or None when it is not bound. Once per tap (at its first tensor)."""
        if name in self.expectations or not _LATENT_NAME.fullmatch(name.rsplit(":", 1)[0].rsplit(".", 1)[-1]):
            return None
        if len(self._vae_latents) > 1:
            vaes = ", ".join(p or "the root module" for p in sorted(self._vae_latents))
            self._reporter.note_once(f"latents {name}", f"rangewatch: {name}: several VAEs are attached ({vaes}); the latents are not "
                            "judged against either; declare which: expect={" + repr(name.split(':')[0]) + ": '<latent convention>'}")
            return None
        (path, exp), = self._vae_latents.items()
        conv = exp.conv
        c = conv.channels
        from ..taps.layout import convention_channel_dim  # (N, C, H, W), (N, C, F, H, W) or the VAE's (N, F, C, H, W)

        dim = convention_channel_dim(t, conv) if t.dim() in (4, 5) else None
        if t.dim() not in (4, 5) or (c is not None and dim is None):
            self._reporter.note_once(f"latents {name}", (
                f"rangewatch: {name} has shape {tuple(t.shape)}, not the {c or 'N'}-channel (N, C, H, W) or (N, C, F, H, W) "
                f"latents of the attached VAE ({path or 'the root module'}): not judged against its latent scaling "
                "(packed token latents must be unpacked first); declare it with expect={" + repr(name.split(':')[0]) + ": ...} if meant"))
            return None
        self.expectations[name] = Expectation(
            conv, f"{exp.source}, for the tensor named {name.split(':')[0]!r}",
            "model", "output",  # type: ignore[arg-type]
        )
        return 1 if dim is None else dim

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
            fix=conversion_fix(data.conv, model.conv, module),  # the carried conventions: custom ones are not in the catalogue
            severity="info",
            step=self._env.now(),
            source=model.source,
        )
