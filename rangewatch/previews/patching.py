"""The process-wide patches that let visualisation watchers observe image-conversion calls.

One :data:`PATCHER` holds the state: the active watchers (they act as the reference count), the
wrappers (reused across start/stop cycles), the patches installed and a thread-local depth that
keeps calls made from inside an observed call (``save_image`` -> ``make_grid``) or from
rangewatch's own drawing (:meth:`CallPatcher.suppressed`) from being observed.

The first active watcher replaces the functions where they are referenced (module attributes whose
value is the original function, in every imported module, e.g. ``basicsr.utils.tensor2img`` and
``basicsr.models.sr_model.tensor2img``; class attributes for ``SummaryWriter``); the last one to
stop puts every original back, also in modules that imported a patched name while the watch was on.
A wrapper never changes the call's result and never lets an error of rangewatch's reach the caller.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..rng import kept_rng
from ..findings.finding import internal_finding
from .calls import SPECS
from .measure import observe

if TYPE_CHECKING:
    from .watch import VisualizationWatch

__all__ = ["CallPatcher", "PATCHER", "is_patched", "unwrap", "original_make_grid", "load_basicsr"]


def unwrap(fn: Any) -> Any:
    """The original function behind rangewatch's wrapper(s) of ``fn`` (``fn`` itself when not wrapped)."""
    while fn is not None and hasattr(fn, "_rangewatch_original"):
        fn = fn._rangewatch_original
    return fn


def original_make_grid() -> Callable:
    """torchvision's own ``make_grid``, also while it is patched."""
    import torchvision.utils

    return unwrap(torchvision.utils.make_grid)


def _caller(frame: Any) -> tuple[str, str]:
    """(function name, "file.py:line") of the frame that made the observed call."""
    if frame is None:
        return "unknown", "?"
    return frame.f_code.co_name, f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _video_shape(bound: inspect.BoundArguments) -> tuple[int, ...] | None:
    """The shape of a 5-D tensor (or array) among the call's first argument(s), else None."""
    for v in list(bound.arguments.values())[:2]:
        for t in (v if isinstance(v, (list, tuple)) else [v]):
            shape = getattr(t, "shape", None)
            if shape is not None and len(shape) == 5:
                return tuple(int(d) for d in shape)
    return None


def _module_dicts() -> list[dict]:
    out = []
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None) if mod is not None else None
        if isinstance(d, dict):
            out.append(d)
    return out


def _replace_everywhere(swap: dict[int, tuple[Any, Any]]) -> dict[int, list[tuple[dict, str]]]:
    """One pass over every imported module: each attribute whose value *is* an ``old`` of
    ``swap`` (``{id(old): (old, new)}``) becomes its ``new``. Returns where, per id(old)."""
    done: dict[int, list[tuple[dict, str]]] = {k: [] for k in swap}
    if not swap:
        return done
    for d in _module_dicts():
        try:
            hits = [(k, id(v)) for k, v in list(d.items()) if id(v) in swap]
        except RuntimeError:  # a module being imported right now changed its dict; try once more
            hits = [(k, id(v)) for k, v in list(d.copy().items()) if id(v) in swap]
        for k, i in hits:
            old, new = swap[i]
            if d.get(k) is old:
                d[k] = new
                done[i].append((d, k))
    return done


def _function_targets(want_basicsr: bool) -> list[tuple[str, str, str]]:
    """(call name, module, attribute) of the module-level functions to patch."""
    out = []
    try:
        import torchvision.utils  # noqa: F401

        out += [("make_grid", "torchvision.utils", "make_grid"), ("save_image", "torchvision.utils", "save_image")]
    except ImportError:
        pass
    if want_basicsr:
        out += [("tensor2img", "basicsr.utils.img_util", "tensor2img"),
                ("tensor2img_fast", "basicsr.utils.img_util", "tensor2img_fast")]
    return out


def _writer_classes() -> list[type]:
    classes = []
    try:
        from torch.utils.tensorboard.writer import SummaryWriter

        classes.append(SummaryWriter)
    except ImportError:
        pass
    tbx = sys.modules.get("tensorboardX")
    if tbx is not None and isinstance(getattr(tbx, "SummaryWriter", None), type):
        classes.append(tbx.SummaryWriter)
    return classes


def load_basicsr(mode: bool | None) -> bool:
    """Import basicsr's img_util if wanted (None: when installed). Returns whether it is there."""
    if mode is False:
        return False
    if "basicsr.utils.img_util" in sys.modules:
        return True
    from ..compat.basicsr import basicsr_available, import_basicsr

    if mode is None and not basicsr_available():
        return False
    try:
        import_basicsr()
        import basicsr.utils.img_util  # noqa: F401
    except ImportError:
        if mode is True:
            raise
        return False
    return True


class CallPatcher:
    """Installs the wrappers while any watcher is active and hands each observed call to them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.active: list[VisualizationWatch] = []
        self._tls = threading.local()
        self._wrappers: dict[int, Callable] = {}  # id(original) -> wrapper (reused across start/stop cycles)
        self._keep: list[Callable] = []  # keeps originals alive so their ids stay unique
        # installed patches: ("func", original, wrapper, [(dict, key), ...]) or ("attr", cls, name, original, wrapper)
        self._installed: list[tuple] = []
        self._signatures: dict[int, inspect.Signature] = {}

    # ---------------------------------------------------------------- watchers
    def add(self, watch: VisualizationWatch, want_basicsr: bool) -> None:
        """Make ``watch`` active, installing the patches not installed yet."""
        with self.lock:
            self._install(want_basicsr)
            self.active.append(watch)

    def remove(self, watch: VisualizationWatch) -> None:
        """``watch`` stops observing; the last one puts every original back."""
        with self.lock:
            if watch in self.active:
                self.active.remove(watch)
            if not self.active:
                self._uninstall()

    @property
    def patched(self) -> bool:
        with self.lock:
            return bool(self._installed)

    @contextmanager
    def suppressed(self) -> Iterator[None]:
        """Calls made inside are not observed (rangewatch's own previews, nested library calls)."""
        self._tls.depth = getattr(self._tls, "depth", 0) + 1
        try:
            yield
        finally:
            self._tls.depth -= 1

    # ---------------------------------------------------------------- wrappers
    def _make_wrapper(self, name: str, original: Callable) -> Callable:
        key = id(original)
        if key in self._wrappers:
            return self._wrappers[key]
        tls = self._tls

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active or getattr(tls, "depth", 0):
                return original(*args, **kwargs)
            tls.depth = getattr(tls, "depth", 0) + 1
            try:
                with kept_rng():  # the measuring only, never the call itself: the user's random state kept
                    try:
                        self._observe(name, original, args, kwargs, sys._getframe(1))
                    except Exception as exc:  # rangewatch must never break the user's call
                        self._internal_error(name, exc)
                return original(*args, **kwargs)
            finally:
                tls.depth -= 1

        wrapper._rangewatch_original = original  # type: ignore[attr-defined]
        wrapper._rangewatch_call = name  # type: ignore[attr-defined]
        self._wrappers[key] = wrapper
        self._keep.append(original)
        return wrapper

    def _install(self, want_basicsr: bool) -> None:
        """Patch every target not patched yet (idempotent). Caller holds the lock."""
        funcs = {id(p[1]): p for p in self._installed if p[0] == "func"}
        attrs = {(id(p[1]), p[2]) for p in self._installed if p[0] == "attr"}
        try:
            swap: dict[int, tuple[Any, Any]] = {}
            for call, modname, attr in _function_targets(want_basicsr):
                mod = sys.modules.get(modname)
                fn = unwrap(getattr(mod, attr, None)) if mod is not None else None
                if fn is None or not callable(fn):
                    continue
                if id(fn) not in funcs:
                    entry = ("func", fn, self._make_wrapper(call, fn), [])
                    self._installed.append(entry)
                    funcs[id(fn)] = entry
                # also when already patched: modules imported since then hold the original
                swap[id(fn)] = (fn, funcs[id(fn)][2])
            for i, where in _replace_everywhere(swap).items():
                funcs[i][3].extend(where)
            for cls in _writer_classes():
                for call in ("add_image", "add_images", "add_video"):
                    fn = cls.__dict__.get(call)
                    if (id(cls), call) in attrs or fn is None:
                        continue
                    fn = unwrap(fn)
                    wrapper = self._make_wrapper(call, fn)
                    setattr(cls, call, wrapper)
                    self._installed.append(("attr", cls, call, fn, wrapper))
        except BaseException:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        """Put every original back. Caller holds the lock."""
        swap: dict[int, tuple[Any, Any]] = {}
        while self._installed:
            entry = self._installed.pop()
            if entry[0] == "func":
                _, fn, wrapper, where = entry
                for d, k in where:
                    if d.get(k) is wrapper:
                        d[k] = fn
                swap[id(wrapper)] = (wrapper, fn)
            else:
                _, cls, call, fn, wrapper = entry
                if cls.__dict__.get(call) is wrapper:
                    setattr(cls, call, fn)
        _replace_everywhere(swap)  # modules that imported a patched name while the watch was on

    # ---------------------------------------------------------------- one observed call
    def _signature(self, fn: Callable) -> inspect.Signature:
        key = id(fn)
        if key not in self._signatures:
            self._signatures[key] = inspect.signature(fn)
        return self._signatures[key]

    def _observe(self, name: str, original: Callable, args: tuple, kwargs: dict, frame: Any) -> None:
        watchers = [w for w in list(self.active) if w._wants(name)]
        if not watchers:
            return
        func, site = _caller(frame)
        if any(w.gate is not None for w in watchers):  # before any measuring: a gated watcher may not want this call
            key, filename = f"{name}|{func}|{site}", frame.f_code.co_filename if frame is not None else ""
            watchers = [w for w in watchers if w.gate is None or w.gate(key, filename)]
            if not watchers:
                return
        try:
            bound = self._signature(original).bind(*args, **kwargs)
        except TypeError:
            return  # the call itself will raise
        bound.apply_defaults()
        call = SPECS[name](name, bound)
        if call is None:
            shape = _video_shape(bound)
            if shape is not None:  # a video passed to an image call: one note, not measured
                for w in watchers:
                    w._skipped_video(name, func, site, shape)
            return
        obs = observe(call, func, site)
        for w in watchers:
            w._record(obs)

    def _internal_error(self, name: str, exc: BaseException) -> None:
        f = internal_finding(
            f"visualisation watch of `{name}`", exc,
            evidence="rangewatch failed while measuring this call; the call itself ran unchanged",
        )
        for w in list(self.active):
            try:
                w._emit(f)
            except Exception:  # an on_finding callable that fails must not break the user's call either
                pass


#: the one patcher of this process
PATCHER = CallPatcher()


def is_patched() -> bool:
    """Whether rangewatch's visualisation patches are installed right now."""
    return PATCHER.patched
