"""The engine's expectation sources: declared (``expect=``), read from the model's metadata, predicted from the loaders.

:class:`ExpectationSources` is a collaborator of :class:`rangewatch.Watch` that holds ``Watch.expectations``: the
declared keys under their tap names, the expectations :func:`rangewatch.expect.models.derive_expectations` reads from
the model (declared ones win; a VAE's scaled latents bound to a tensor named as latents), what the loaders' transforms
are predicted to produce (:mod:`rangewatch.expect.transforms`), the ``mismatch`` finding when such a prediction
contradicts what the model expects, and which expectation applies to a tap (:meth:`ExpectationSources.for_tap`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..expect.conventions import Convention, is_registered
from ..expect.expectation import Expectation
from ..findings.finding import Finding, RangeMismatchError, mismatch_finding
from ..taps.hooks import parse_tap_key
from .reporter import FindingsReporter
from .surroundings import Surroundings

__all__ = ["ExpectationSources", "tap_name_for_key"]

#: the names training scripts give their clean, scaled latents (the diffusers examples' and sd-scripts'
#: ``latents``, the diffusers Flux/SD3 DreamBooth scripts' ``model_input``); never the noisy mix
_LATENT_NAME = re.compile(r"(?:clean_|vae_|image_|video_|target_|gt_)?latents?|model_input", re.IGNORECASE)


def tap_name_for_key(key: str) -> str:
    """The tap an ``expect=`` / ``modules=`` key names: batch and validation paths as given, a module (or tensor)
    name with its side (``"vae.encoder"`` is ``"vae.encoder:input"``)."""
    if key.startswith("batch") or key.startswith("val/"):
        return key
    name, side = parse_tap_key(key)
    return f"{name}:{side}"


class ExpectationSources:
    """Where the engine's expectations come from: ``expectations`` (by tap name: the declared ``expect=`` keys, then
    :meth:`derive` from the model's metadata and :meth:`bind_latent` for a tensor named as latents), ``loader`` (what
    :meth:`predict_loaders` read from the loaders' transforms, by stage) and :meth:`for_tap`, the one that applies."""

    def __init__(self, expect: dict[str, str], reporter: FindingsReporter, surroundings: Surroundings) -> None:
        self._reporter, self._env = reporter, surroundings
        #: the expectation of each tap, by tap name (declared ones first; ``Watch.expectations``)
        self.expectations: dict[str, Expectation] = {}
        #: what the loaders produce, predicted from their transforms, by stage (``"train"``, ``"val"``)
        self.loader: dict[str, Expectation] = {}
        self.loader_noise: dict[str, float] = {}  # stage -> share of values random erasing may replace by noise
        self.derived_keys: set[str] = set()  # the taps whose expectation the model's metadata gave
        self.derived_done = False  # model metadata read: once per fit (:meth:`new_fit` clears it)
        self.vae_latents: dict[str, Expectation] = {}  # VAE path -> the scaled latents its config says (no hook sees them)
        for key, conv in expect.items():
            name = tap_name_for_key(key)
            self.expectations[name] = Expectation(conv, f"declared in RangeWatch(expect={{{key!r}: {conv!r}}})", "declared",
                                                  "batch" if name.startswith("batch") else parse_tap_key(key)[1])  # type: ignore[arg-type]

    def for_tap(self, tap: str) -> Expectation | None:
        """The expectation that applies to a tap (validation batch taps share the train key)."""
        if tap in self.expectations:
            return self.expectations[tap]
        if tap.startswith("val/"):  # a validation module tap takes its module's expectation, never the loader's
            inner = tap[4:]
            return self.expectations.get(inner) or (self.loader.get("val") if inner.startswith("batch") else None)
        if tap.startswith("batch"):
            return self.loader.get("train")
        return None

    def new_fit(self) -> None:
        """The model's metadata is read again at the next :meth:`derive` (a new fit)."""
        self.derived_done = False

    def derive(self, model: nn.Module, image_processors: dict[str, Any] | None = None) -> None:
        """Expectations from model metadata; declared ones win. Once per fit."""
        if self.derived_keys or self.derived_done:
            return
        self.derived_done = True  # metadata is read once per fit (teardown clears it)
        from ..expect.models import derive_expectations

        notes: list[str] = []
        try:
            derived = derive_expectations(model, image_processors=image_processors or None, notes=notes)
        except Exception as e:
            self._reporter.internal("derive_expectations", e, None)
            return
        for key, exp in derived.items():
            name, side = key.rsplit(":", 1)
            if side == "latent":  # a VAE's scaled latents: no hook sees them; a tensor named as latents is bound to it
                self.vae_latents[name] = exp
                continue
            if side not in ("input", "output") or not name:
                continue
            tap = f"{name}:{side}"
            if tap in self.expectations:  # declared wins
                continue
            self.expectations[tap] = exp
            self.derived_keys.add(tap)
        for n in notes:
            self._reporter.note_once(n, f"rangewatch: {n}")

    def derived_names(self) -> set[str]:
        """The modules whose expectations the model's metadata gave."""
        return {t.rsplit(":", 1)[0] for t in self.derived_keys}

    def hooked_sides(self, expect: dict[str, str], modules: list[str]) -> dict[str, set[str]]:
        """Which sides (``input`` / ``output``) of which submodules to hook: the derived taps, the declared module keys
        (a ``modules=`` key without a side: both)."""
        wanted: dict[str, set[str]] = {}
        for tap in self.derived_keys:
            name, side = tap.rsplit(":", 1)
            wanted.setdefault(name, set()).add(side)
        for key in list(expect) + list(modules):
            if key.startswith("batch") or key.startswith("val/"):
                continue
            name, side = parse_tap_key(key)
            sides = wanted.setdefault(name, set())
            if ":" in key or key in expect:
                sides.add(side)
            else:  # modules=[...] without a side: both
                sides.update(("input", "output"))
        return wanted

    def describe(self) -> str | None:
        """The line said at fit start: every expectation and where it comes from (None without any)."""
        if not self.expectations:
            return None
        lines = [f"  {tap}: {e.convention} ({e.source})" for tap, e in sorted(self.expectations.items())]
        return "rangewatch expectations:\n" + "\n".join(lines)

    def carried_conventions(self) -> list[Convention]:
        """The pixel conventions this run's expectations carry that the catalogue does not hold (a model's or a
        loader's unusual Normalize constants, never registered): candidates at every tap, beside the catalogue's."""
        out: dict[str, Convention] = {}
        for exp in [*self.expectations.values(), *self.loader.values()]:
            conv = exp.conv
            if conv.kind == "pixel" and conv.name not in out and not is_registered(conv):
                out[conv.name] = conv
        return list(out.values())

    def predict_loaders(self, train: Any = None, val: Any = None) -> list[Finding]:
        """What the loaders' transforms produce (read from their datasets' transforms, no batch is pulled), said
        once; returns the ``mismatch`` findings where a train prediction contradicts a module input's expectation
        (to be reported at once). A failure is an internal error (no prediction)."""
        try:
            from ..expect.transforms import predict_dataset

            early: list[Finding] = []
            for stage, loader in (("train", train), ("val", val)):
                if loader is None:
                    continue
                pred = predict_dataset(loader, where=f"{stage} dataloader")
                if pred is None:
                    continue
                exp = pred.expectation("batch")
                if exp is None:
                    for n in pred.notes:
                        self._reporter.note_once(n, f"rangewatch: {n}")
                    continue
                self.loader[stage] = exp
                self.loader_noise[stage] = float(getattr(pred, "noise_share", 0.0) or 0.0)
                if stage != "train":
                    continue
                for tap, mexp in sorted(self.expectations.items()):
                    if tap.startswith(("batch", "val/")) or not tap.endswith(":input") or mexp.conv.kind != "pixel":
                        continue
                    if mexp.convention != exp.convention:
                        early.append(self._pipeline_finding(tap, exp, mexp))
            if self.loader:
                self._env.info("rangewatch loader predictions: " + ", ".join(f"{k}: {v.convention} ({v.source})" for k, v in self.loader.items()))
            return early
        except (ConfigError, RangeMismatchError):
            raise
        except Exception as e:
            self._reporter.internal("transform inspection", e, None)
            return []

    def bind_latent(self, name: str, t: torch.Tensor) -> int | None:
        """A tensor handed to :meth:`~rangewatch.Watch.tensor` under a latents name (``latents``,
        ``clean_latents``, ``model_input``), with nothing declared for it, is judged against the latent
        convention of the attached VAE's own config (scaling / shift factor, ``latents_mean/std``, latent
        channels). Bound only when exactly one VAE is attached and the tensor carries its latent channel count
        on dim 1 (packed token latents and other shapes are said once, not guessed). Returns the channel dim
        to feed it with (1), or None when it is not bound (or binding failed: an internal error). Once per tap (at its
        first tensor)."""
        try:
            return self._bind_latent(name, t)
        except Exception as e:  # noqa: BLE001
            self._reporter.internal(name, e, None, what="binding the latents to the attached VAE's config")
            return None

    def _bind_latent(self, name: str, t: torch.Tensor) -> int | None:
        if name in self.expectations or not _LATENT_NAME.fullmatch(name.rsplit(":", 1)[0].rsplit(".", 1)[-1]):
            return None
        if len(self.vae_latents) > 1:
            vaes = ", ".join(p or "the root module" for p in sorted(self.vae_latents))
            self._reporter.note_once(f"latents {name}", f"rangewatch: {name}: several VAEs are attached ({vaes}); the latents are not "
                            "judged against either; declare which: expect={" + repr(name.split(':')[0]) + ": '<latent convention>'}")
            return None
        (path, exp), = self.vae_latents.items()
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
