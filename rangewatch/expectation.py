"""What a tap is expected to carry, and where that expectation came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .conventions import Convention, get_convention

__all__ = ["Expectation"]

Origin = Literal["declared", "model", "transform"]


@dataclass(frozen=True)
class Expectation:
    """``convention`` expected at a tap; ``source`` says why (e.g. "timm pretrained_cfg of backbone (resnet18)").

    ``target`` is the tap's side: a module's ``"input"`` or ``"output"``, or ``"batch"``.
    """

    convention: str
    source: str = "declared in RangeWatch(expect=...)"
    origin: Origin = "declared"
    target: Literal["input", "output", "batch"] = "input"

    def __post_init__(self) -> None:
        get_convention(self.convention)  # fail early on unknown names

    @property
    def conv(self) -> Convention:
        return get_convention(self.convention)
