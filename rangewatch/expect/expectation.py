"""What a tap is expected to carry, and where that expectation came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .conventions import Convention, get_convention

__all__ = ["Expectation"]

Origin = Literal["declared", "model", "transform"]


@dataclass(frozen=True)
class Expectation:
    """``convention`` expected at a tap; ``source`` says why (e.g. "timm pretrained_cfg of backbone (resnet18)").

    ``convention`` is given as a catalogue name or as a :class:`~rangewatch.expect.conventions.Convention`
    (one read from a VAE config need not be registered); the expectation carries the object as
    :attr:`conv` and ``convention`` is its name (a name given stays as given, aliases included). ``target`` is the tap's side: a module's
    ``"input"`` or ``"output"``, or ``"batch"``.

    >>> import dataclasses
    >>> from rangewatch.expect.conventions import Convention
    >>> custom = Convention("latent_s0p5_c4", "latent", "latent scale 0.5", "a VAE config", scale=0.5, channels=4)
    >>> e = Expectation(custom, source="vae.config", origin="model", target="output")
    >>> e.convention, e.conv.scale
    ('latent_s0p5_c4', 0.5)
    >>> dataclasses.replace(e, source="elsewhere").conv is custom  # carried along, never looked up
    True
    >>> Expectation("symmetric").conv.label
    '[-1,1]'
    """

    convention: str
    source: str = "declared in RangeWatch(expect=...)"
    origin: Origin = "declared"
    target: Literal["input", "output", "batch"] = "input"
    #: the convention itself (resolved from ``convention`` when not given)
    conv: Convention = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if isinstance(self.convention, Convention):
            object.__setattr__(self, "conv", self.convention)
            object.__setattr__(self, "convention", self.convention.name)
        elif self.conv is None:
            object.__setattr__(self, "conv", get_convention(self.convention))  # fail early on unknown names
        elif self.convention != self.conv.name and self.convention not in self.conv.aliases:
            raise ValueError(f"Expectation({self.convention!r}, conv=...) names another convention ({self.conv.name!r})")
