"""The user's random state, kept: rangewatch never draws from or reseeds the global generators.

Watching must never change a result. rangewatch's own sampling uses private generators
(``numpy.random.default_rng`` with a fixed seed), but the libraries it imports lazily may draw at import
time: ``rich`` (imported by ``lightning.pytorch``, which the default console voice uses) calls
``random.getrandbits`` in ``rich/style.py`` at import. A seeded script whose dataset draws with
``random.random()`` (IP-Adapter's ``tutorial_train.py`` drops text/image conditions that way) would then
see other draws from the first console message on.

:func:`kept_rng` saves Python's ``random`` state, numpy's global generator (when numpy is imported),
torch's CPU generator (when torch is imported) and the CUDA generators (when CUDA is initialised) on
entry, and puts back any that changed on exit (also when the block raises). It nests for free (only the
outermost block saves and restores), so the engine's entry points can all use it. It is used at the
engine's boundaries (attach, connect, checks, messages, previews, the report, state) and never around
the user's own code; the per-step hot path pays for it only on check steps and when a tap is first seen.
"""

from __future__ import annotations

import functools
import random
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["kept_rng", "rng_kept", "rng_state"]

_tls = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def rng_state() -> dict[str, Any]:
    """The global generators' states: Python ``random``, numpy's legacy global generator, torch CPU and
    every initialised CUDA device (those of libraries not imported yet are left out: nothing to keep)."""
    state: dict[str, Any] = {"python": random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None and hasattr(np, "random"):
        state["numpy"] = np.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        state["torch"] = torch.get_rng_state()
        cuda = getattr(torch, "cuda", None)
        try:
            if cuda is not None and cuda.is_initialized() and not cuda.is_current_stream_capturing():
                state["cuda"] = cuda.get_rng_state_all()
        except Exception:  # noqa: BLE001  (a CUDA that cannot tell: nothing of it is touched)
            pass
    return state


def _same_numpy(a: Any, b: Any) -> bool:
    return a[0] == b[0] and a[2:] == b[2:] and bool((a[1] == b[1]).all())


def _restore(saved: dict[str, Any]) -> None:
    if random.getstate() != saved["python"]:
        random.setstate(saved["python"])
    if "numpy" in saved:
        np = sys.modules["numpy"]
        if not _same_numpy(np.random.get_state(), saved["numpy"]):
            np.random.set_state(saved["numpy"])
    if "torch" in saved:
        torch = sys.modules["torch"]
        if not torch.equal(torch.get_rng_state(), saved["torch"]):
            torch.set_rng_state(saved["torch"])
        if "cuda" in saved:
            now = torch.cuda.get_rng_state_all()
            if any(not torch.equal(a, b) for a, b in zip(now, saved["cuda"])):
                torch.cuda.set_rng_state_all(saved["cuda"])


@contextmanager
def kept_rng() -> Iterator[None]:
    """Run the block with the global generators' states kept (see the module's text); nests for free."""
    if getattr(_tls, "depth", 0):
        yield
        return
    _tls.depth = 1
    try:
        saved = rng_state()
    except Exception:  # noqa: BLE001  (a state that cannot be read: the block still runs)
        _tls.depth = 0
        yield
        return
    try:
        yield
    finally:
        _tls.depth = 0
        try:
            _restore(saved)
        except Exception:  # noqa: BLE001  (rangewatch must never be the cause of a failed run)
            pass


def rng_kept(fn: F) -> F:
    """Decorator: ``fn`` runs inside :func:`kept_rng`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kept_rng():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
