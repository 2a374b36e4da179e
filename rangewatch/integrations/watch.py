"""The watcher of loss networks and metrics: :class:`LossWatch`.

``attach(root)`` walks ``root.named_modules()``, asks each library file whether it knows the
module (the outermost recognised module wins: nothing inside an LPIPS or a metric is looked at
again), and observes each recognised one at the method its library names (a forward pre-hook, or
the metric's ``update``). Functions (torchmetrics ``peak_signal_noise_ratio`` /
``structural_similarity_index_measure``, basicsr ``calculate_psnr`` / ``calculate_ssim``) are
observed where they are referenced (module attributes holding the function, in every imported
module, and basicsr's ``METRIC_REGISTRY``), only when their library is already imported;
``detach()`` puts every original back.

Each call is read by its library file (what *this call* expects: LPIPS's ``normalize=``, a PSNR's
``data_range``) and its image arguments go into a :class:`~rangewatch.RangeStats` per
(tap, argument, expectation), on the tensor's device. The first call of each is judged at once (one
host transfer, once); later calls only accumulate (min/max, no host sync) until :meth:`check`, which
the callback runs at its check steps. A finding needs a confident
:func:`~rangewatch.infer_convention` that names a convention the call does not accept: when the
data cannot decide, nothing is said.

Watching never changes a result: the hooks return nothing, the wrappers call the original with the
same arguments and return its result, statistics are taken under ``no_grad`` from detached tensors.
A failure inside rangewatch switches that one object off and is reported once (kind ``internal``);
it never raises into the user's call. Under ``torch.compile`` tracing the hooks do nothing.

Example::

    >>> import torch, torchmetrics
    >>> from rangewatch.integrations import LossWatch
    >>> psnr = torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0)
    >>> watch = LossWatch().attach(psnr)
    >>> x = torch.rand(2, 3, 16, 16) * 2 - 1   # [-1,1] data ...
    >>> x[:, :, 0, 0], x[:, :, 0, 1] = -1.0, 1.0
    >>> _ = psnr(x, x.clamp(-0.9, 0.9))         # ... with data_range=1.0
    >>> [f.fix for f in watch.check(step=0)]
    ['pass data_range=2.0 to PeakSignalNoiseRatio (or map the data with (x + 1) / 2 before the call and keep data_range=1.0)']
    >>> watch.detach()
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..findings.finding import Finding, first_seen, internal_finding, mismatch_finding, note_finding
from ..checks.inference import infer_convention
from ..taps.sharding import user_class, user_named_modules
from ..rng import kept_rng
from ..stats.range_stats import RangeStats, RangeSummary
from . import basicsr as _basicsr
from . import lpips as _lpips
from . import taming as _taming
from . import torchmetrics as _torchmetrics
from . import torchvision as _torchvision
from .base import Expects, Reading, Watched

__all__ = ["LossWatch", "find_loss_networks", "RECOGNISERS"]

#: (library prefix of ``type(m).__module__``, recogniser): a recogniser is only asked about its own library's classes
RECOGNISERS: tuple[tuple[tuple[str, ...], Callable[[nn.Module], Watched | None]], ...] = (
    (("lpips",), _lpips.recognise),
    (("taming.", "ldm.", "sgm."), _taming.recognise),
    (("torchmetrics",), _torchmetrics.recognise),
    (("basicsr",), _basicsr.recognise),
    (("torchvision.models",), _torchvision.recognise),
)

#: functions observed where referenced, per library: (defining module, name, reader)
FUNCTIONS = (*_torchmetrics.FUNCTIONS, *_basicsr.FUNCTIONS)


def find_loss_networks(root: nn.Module) -> dict[str, Watched]:
    """The loss networks and metrics in ``root`` by module path (``""`` for ``root`` itself); the
    outermost recognised module wins. Never imports a library."""
    found: dict[str, Watched] = {}
    inside: list[str] = []
    for name, m in user_named_modules(root):
        if any(name.startswith(p + ".") for p in inside) or (inside and "" in inside):
            continue
        origin = getattr(user_class(m), "__module__", "") or ""
        for prefixes, recognise in RECOGNISERS:
            if origin.startswith(prefixes):
                w = recognise(m)
                if w is not None:
                    w.name = name or user_class(m).__name__  # the root itself: named by its class
                    found[name] = w
                    inside.append(name)
                break
    return found


@dataclass
class _Window:
    """Statistics of one (tap, argument, expectation) since the last check."""

    where: str
    arg: str
    what: str
    expects: Expects
    channel_dim: int | None
    stats: RangeStats
    judged: bool = False  # the first call was judged
    fed: bool = False


@dataclass
class _Target:
    watched: Watched
    off: bool = False
    handle: Any = None
    module: Any = None
    previous_update: Any = None
    had_update: bool = False
    seen: set = field(default_factory=set)
    kept: bool = False  # its first call ran with the user's random state kept (rangewatch/rng.py)


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if type(x).__module__ == "numpy" and hasattr(x, "dtype") and getattr(x, "ndim", 0) >= 2:
        try:
            return torch.from_numpy(x)  # shares memory: no copy
        except (TypeError, ValueError):
            return None
    return None


def _default_stage(root: nn.Module | None) -> tuple[str, int | None]:
    """("val/" during validation or the sanity check, "test/" in testing, "" otherwise; the global step)."""
    trainer = getattr(root, "_trainer", None) if root is not None else None
    if trainer is None:
        return "", None
    try:
        stage = getattr(getattr(trainer, "state", None), "stage", None)
        stage = str(getattr(stage, "value", stage) or "")  # RunningStage: "train", "sanity_check", "validate", "test"
        step = int(trainer.global_step)
    except Exception:  # noqa: BLE001
        return "", None
    if stage in ("validate", "sanity_check"):
        return "val/", step
    if stage == "test":
        return "test/", step
    return "", step


# module-name prefixes skipped by the reference scan (thousands of modules, none of which calls a metric function)
_NEVER_REFERENCE = (
    "torch.", "numpy", "scipy", "sympy", "transformers", "diffusers", "timm", "open_clip", "matplotlib", "pandas",
    "PIL", "cv2", "skimage", "tensorboard", "google", "grpc", "jax", "networkx", "IPython", "setuptools", "pkg_resources",
    "pip", "urllib3", "requests", "yaml", "jinja2", "mlflow", "wandb", "sklearn", "sentry_sdk", "botocore", "pydantic",
    "lightning.fabric", "lightning_utilities", "encodings", "email", "xml", "http", "asyncio", "importlib", "unittest",
)


class _Functions:
    """Observed functions, swapped where they are referenced; a reference count puts them back."""

    lock = threading.Lock()
    users: list["LossWatch"] = []
    originals: dict[tuple[str, str], Callable] = {}
    wrappers: dict[tuple[str, str], Callable] = {}
    swapped: list[tuple[dict, str, Callable, Callable]] = []

    @classmethod
    def start(cls, watch: "LossWatch") -> list[str]:
        with cls.lock:
            cls.users.append(watch)
            if len(cls.users) > 1:
                return [n for _, n in cls.wrappers]
            swap: dict[int, tuple[Callable, Callable]] = {}
            for mod_name, fn_name, reader in FUNCTIONS:
                mod = sys.modules.get(mod_name)  # only when already imported: never import a library
                original = getattr(mod, fn_name, None) if mod is not None else None
                if not callable(original):
                    continue
                wrapper = cls._wrapper(fn_name, original, reader)
                cls.originals[(mod_name, fn_name)] = original
                cls.wrappers[(mod_name, fn_name)] = wrapper
                swap[id(original)] = (original, wrapper)
            if swap:
                for d in cls._dicts():
                    for key, value in list(d.items()):
                        pair = swap.get(id(value))
                        if pair is not None and value is pair[0]:
                            d[key] = pair[1]
                            cls.swapped.append((d, key, pair[0], pair[1]))
            return [n for _, n in cls.wrappers]

    @staticmethod
    def _dicts() -> list[dict]:
        out = []
        for name, mod in list(sys.modules.items()):
            if name.startswith(_NEVER_REFERENCE):  # large libraries that hold none of these functions
                continue
            d = getattr(mod, "__dict__", None)
            if isinstance(d, dict):
                out.append(d)
        reg = getattr(sys.modules.get("basicsr.utils.registry"), "METRIC_REGISTRY", None)
        obj_map = getattr(reg, "_obj_map", None)  # basicsr's calculate_metric looks metrics up here
        if isinstance(obj_map, dict):
            out.append(obj_map)
        return out

    @classmethod
    def stop(cls, watch: "LossWatch") -> None:
        with cls.lock:
            if watch in cls.users:
                cls.users.remove(watch)
            if cls.users:
                return
            for d, key, original, wrapper in cls.swapped:
                if d.get(key) is wrapper:  # still ours (not replaced by someone else since)
                    d[key] = original
            cls.swapped.clear()
            cls.originals.clear()
            cls.wrappers.clear()

    @classmethod
    def _wrapper(cls, fn_name: str, original: Callable, reader: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for w in list(cls.users):
                w._on_function(fn_name, original, reader, args, kwargs)
            return original(*args, **kwargs)

        wrapper.__rangewatch_original__ = original  # type: ignore[attr-defined]
        return wrapper


class LossWatch:
    """Watch the loss networks and metrics of a module (see the module docstring).

    Args:
        stage: ``() -> (prefix, step)``; default: read from the LightningModule's trainer
            (``"val/"`` during validation, ``"test/"`` in testing, the global step).
        functions: also observe the functional metrics of the libraries already imported.

    ``findings`` holds every finding made; :meth:`check` returns the new ones.
    """

    def __init__(self, stage: Callable[[], tuple[str, int | None]] | None = None, functions: bool = True) -> None:
        self._stage = stage
        self.functions = functions
        self.root: nn.Module | None = None
        self.watched: dict[str, Watched] = {}
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self._targets: dict[str, _Target] = {}
        self._windows: dict[tuple, _Window] = {}
        self._pending: list[Finding] = []
        self._reported: set[tuple] = set()
        self._functions_on = False
        self._off_functions: set[str] = set()
        self._kept_functions: set[str] = set()  # functions whose first call ran with the user's random state kept
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ attach / detach
    def attach(self, root: nn.Module) -> "LossWatch":
        """Find and observe the loss networks and metrics in ``root`` (idempotent for the same root)."""
        if self.root is root and (self._targets or self._functions_on):
            return self
        self.detach()
        self.root = root
        self.watched = find_loss_networks(root)
        modules = dict(user_named_modules(root))  # once, not per watched network
        for name, w in self.watched.items():
            if w.note:  # recognised, never judged: said once, not hooked
                if f"{w.name}: {w.note}" not in self.notes:
                    self.notes.append(f"{w.name}: {w.note}")
                    self._pending.append(note_finding(f"{w.name}:input", w.what, evidence=w.note, fix="none needed"))
                continue
            t = _Target(w)
            m = modules.get(name, root) if name else root
            t.module = m
            if w.method == "forward":
                t.handle = m.register_forward_pre_hook(self._pre_hook(t), with_kwargs=True)
            else:
                t.had_update = "update" in m.__dict__
                t.previous_update = m.__dict__.get("update")
                current = getattr(m, "update")
                m.__dict__["update"] = self._update_wrapper(t, current)
            self._targets[name] = t
        if self.functions:
            _Functions.start(self)
            self._functions_on = True
        return self

    def detach(self) -> None:
        """Remove every hook and wrapper; statistics and findings are kept."""
        for t in self._targets.values():
            if t.handle is not None:
                t.handle.remove()
            elif t.module is not None:
                if t.had_update:
                    t.module.__dict__["update"] = t.previous_update
                else:
                    t.module.__dict__.pop("update", None)
        self._targets.clear()
        if self._functions_on:
            _Functions.stop(self)
            self._functions_on = False
        self.root = None

    # ------------------------------------------------------------------ observation
    def _pre_hook(self, t: _Target) -> Callable:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if not t.off:
                self._observe(t.watched.name, t, args, kwargs)
            return None

        return hook

    def _update_wrapper(self, t: _Target, update: Callable) -> Callable:
        @functools.wraps(update)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not t.off:
                self._observe(t.watched.name, t, args, kwargs)
            return update(*args, **kwargs)

        return wrapped

    def _observe(self, name: str, t: _Target, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_compiling():
            return
        with contextlib.nullcontext() if t.kept else kept_rng():  # the first call (lazy imports, first reading): the user's random state kept
            self._observe_call(name, t, args, kwargs)
        t.kept = True

    def _observe_call(self, name: str, t: _Target, args: tuple, kwargs: dict) -> None:
        try:
            reading = t.watched.read(args, kwargs)
            if reading is not None:
                self._feed(name, t.watched.what, reading)
        except Exception as e:  # noqa: BLE001  (never raise into the user's call)
            t.off = True
            self._internal(name or "<root>", e)

    def _on_function(self, fn_name: str, original: Callable, reader: Callable, args: tuple, kwargs: dict) -> None:
        if fn_name in self._off_functions or torch.compiler.is_compiling():
            return
        first = fn_name not in self._kept_functions
        with kept_rng() if first else contextlib.nullcontext():  # the first call: the user's random state kept
            try:
                reading = reader(original, args, kwargs)
                if reading is not None:
                    self._feed(fn_name, fn_name, reading)
            except Exception as e:  # noqa: BLE001
                self._off_functions.add(fn_name)
                self._internal(fn_name, e)
        self._kept_functions.add(fn_name)

    def _stage_now(self) -> tuple[str, int | None]:
        return self._stage() if self._stage is not None else _default_stage(self.root)

    def _feed(self, name: str, what: str, reading: Reading) -> None:
        prefix, step = self._stage_now()
        where = f"{prefix}{name}:input"
        for arg, value, channel_dim in reading.tensors:
            x = _as_tensor(value)
            if x is None or x.numel() == 0 or x.dim() < 2 or not (x.is_floating_point() or x.dtype == torch.uint8):
                continue
            cd = channel_dim if channel_dim is not None and channel_dim < x.dim() else None
            key = (where, arg, reading.expects.key)
            with self._lock:
                w = self._windows.get(key)
                if w is None:
                    w = self._windows[key] = _Window(where, arg, what, reading.expects, cd, RangeStats(channel_dim=cd, sync_on_compute=False))
            with torch.no_grad():
                if not w.judged:  # the first call: judged now (one host transfer, once), the user's random state kept
                    with kept_rng():
                        w.stats.update(x.detach(), detail=True)
                        w.judged = True
                        self._judge(w, w.stats.compute(), step)
                        w.stats.reset()
                else:
                    w.stats.update(x.detach(), moments=False)
                    w.fed = True

    # ------------------------------------------------------------------ judging
    def _judge(self, w: _Window, s: RangeSummary, step: int | None) -> None:
        if s.empty:
            return
        # the window's value sample (kept by detail updates) lets the verdict use the distribution,
        # not only the extremes: exact-zero erasing in [-1,1] data looks like [0,1]'s floor otherwise
        inf = infer_convention(s, sample=w.stats.value_sample)
        inf = inf if inf.confident else infer_convention(s)  # when the sample cannot decide, the extremes stand
        if not inf.confident or inf.name == "unknown" or inf.name in w.expects.accepts:
            return
        seen = inf.convention
        assert seen is not None  # a confident, named verdict
        f = mismatch_finding(
            where=w.where,
            observed=inf.name,
            expected=w.expects.accepts[0],
            evidence=f"argument {w.arg!r} of {w.what} looks like {seen.label} ({inf.evidence}); it expects {w.expects.label}",
            fix=w.expects.fix(inf.name),
            severity="error",
            step=step,
            source=w.expects.source,
        )
        self._record(f)

    def check(self, step: int | None = None) -> list[Finding]:
        """Judge what was seen since the last check (one host transfer per fed window) and return
        the findings not returned before (those of first calls included)."""
        for w in list(self._windows.values()):
            if not w.fed:
                continue
            try:
                s = w.stats.compute()
                self._judge(w, s, step)
            except Exception as e:  # noqa: BLE001
                self._internal(w.where, e)
            w.stats.reset()
            w.fed = False
        out, self._pending = self._pending, []
        return out

    def _internal(self, where: str, e: BaseException) -> None:
        self._record(internal_finding(
            where, e,
            evidence="rangewatch failed while watching this loss network / metric and switched it off; the call itself went on",
            fix="please report this with the call's arguments' shapes and dtypes",
        ))

    def _record(self, f: Finding) -> None:
        """Keep ``f`` (for :attr:`findings` and the next :meth:`check`) unless it was reported before."""
        for new in first_seen([f], self._reported):
            self.findings.append(new)
            self._pending.append(new)

    def __repr__(self) -> str:
        names = ", ".join(f"{n or '<root>'}: {w.what}" for n, w in self.watched.items())
        return f"LossWatch({names})"
