"""What a model-metadata reader gets: :class:`Deriving`, the sink each library file writes into.

Each library file with a model reader (``diffusers.py``, ``compvis.py``, ``timm.py``,
``transformers.py``, ``open_clip.py``) has ``read_expectations(d, path, module) -> bool``: it returns
``False`` when ``module`` is not that library's (or says nothing), else records what the module expects
through ``d`` and returns ``True`` (the module is claimed: nothing inside it is read again).
:func:`rangewatch.expect.models.derive_expectations` walks the modules and calls the readers in
the order of its ``READERS`` table. A reader never imports its library unless the module's class comes
from it (``sys.modules`` is checked first).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from ..expect.conventions import Convention
from ..taps.sharding import user_class

__all__ = ["Deriving", "library_of", "class_of_origin", "put_autoencoder"]


def library_of(m: nn.Module) -> str:
    """The top-level package a module's class comes from (``"diffusers"``); never imports anything."""
    return (user_class(m).__module__ or "").split(".", 1)[0]


class Deriving(Protocol):
    """The sink a reader writes into (implemented by ``model_expectations._Deriver``)."""

    def note(self, text: str) -> None:
        """Record what was skipped and why."""

    def child(self, path: str, name: str) -> str:
        """The path of ``path``'s child ``name``."""

    def put(self, path: str, side: str, convention: str | Convention, source: str, target: str | None = None) -> None:
        """Record that ``"<path>:<side>"`` follows ``convention``."""

    def put_normalize(self, path: str, mean: Any, std: Any, src: str) -> bool:
        """Record an input expectation from a model's own mean/std."""

    def from_processor(self, path: str, tap: str, processor: Any, how: str) -> bool:
        """Record the input convention a processor produces; False when it cannot be told."""

    def attached_processor(self, m: nn.Module) -> tuple[str, Any] | None:
        """A processor kept on the module (``(attribute, processor)``), or None."""


def class_of_origin(m: nn.Module, table: dict[tuple[str, str], Any]) -> tuple[Any, str] | None:
    """The entry of ``table`` (keyed ``(module of origin, class name)``) that ``m``'s class or one of its bases
    matches, with the matched ``"module.Class"``; a key's module matches the class's module exactly or as its
    trailing dotted part (``"library.flux_models"`` matches a script run from the repository root and
    ``"sd_scripts.library.flux_models"`` alike). Never imports anything."""
    for cls in type(m).__mro__:
        mod, name = cls.__module__ or "", cls.__name__
        for (tmod, tname), value in table.items():
            if name == tname and (mod == tmod or mod.endswith("." + tmod)):
                return value, f"{mod}.{name}"
    return None


def put_autoencoder(d: Deriving, path: str, m: nn.Module, family: str, qual: str, why_input: str,
                    latent: Convention | None, latent_source: str, encoder: str = "encoder", decoder: str = "decoder") -> None:
    """The usual pixel sides of an autoencoder found by class: ``symmetric`` at ``<path>.encoder:input`` and
    ``<path>.decoder:output`` (when those children exist), and its scaled latents at ``<path>:latent``."""
    children = dict(m.named_children())
    where = path or "the root module"
    enc = d.child(path, encoder) if encoder in children else path
    d.put(enc, "input", "symmetric", f"{family} {qual} at {where}: pixel input in [-1, 1]; {why_input}")
    if decoder in children:
        d.put(d.child(path, decoder), "output", "symmetric", f"{family} {qual} at {where}: the decoder reconstructs that input, in [-1, 1]")
    if latent is not None:
        d.put(path, "latent", latent, f"{family} {qual} at {where}: {latent_source} (the scaled latent the diffusion model sees)", target="output")
