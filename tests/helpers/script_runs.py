"""The harness around the ``tests/scripts`` copies of published training loops (each loop keeps its script's shape).

- ``problems``: the findings a correct script must not produce: warnings and errors, less the watch's own notes and
  internal reports. (An info-level ``latent_outliers`` remark may come from the tiny VAE's heavy-tailed latents, which
  are not a real VAE's; it says so itself: "a heavy-tailed distribution rather than a fault".)
- ``trains_identically``: run a script's loop without, then with the watch, after the same seeding, and assert the
  losses are equal bit for bit (the unwatched run is the reference); returns the watch of the watched run.
"""

from __future__ import annotations

from typing import Any, Callable


def problems(watch: Any) -> list:
    """Warnings and errors of ``watch``, its notes and internal reports left out."""
    return [f for f in watch.findings if f.kind not in ("note", "internal") and f.severity != "info"]


def trains_identically(train: Callable[..., tuple[list[float], Any]], *args: Any,
                       seed: Callable[[], object] | None = None, **kwargs: Any) -> Any:
    """``train(False, ...)`` then ``train(True, ...)`` (each after ``seed()`` when given): equal losses; the watch."""
    if seed is not None:
        seed()
    plain, _ = train(False, *args, **kwargs)
    if seed is not None:
        seed()
    watched, watch = train(True, *args, **kwargs)
    assert watched == plain  # bit for bit: watching changes no result
    return watch
