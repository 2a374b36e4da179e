"""Hook bodies inside a ``torch.compile``d model, without graph breaks or guards on rangewatch's state.

A hook that dynamo traces into puts rangewatch's Python state (step counters, pending lists, flags)
into the graph's guards, which change every step: dynamo recompiles each step up to its limit. A
hook wrapped in ``torch.compiler.disable`` avoids that, but each call is then a graph break (the
compiled body is split into pieces, forward and backward). Here a hook, when traced, puts one call
of a custom operator into the graph instead (:func:`call_in_graph`): ``rangewatch::hook_call``
takes the tensors the hook measures (or statistics of them computed in the graph), a key and a
constant tag, and at run time looks the key up and calls the registered Python function with the
run-time tensors (valid during the call only: see :func:`call_in_graph`);
so the same eager code runs at every call of the compiled model, with no guard on it. The operator

* mutates a 0-d sink tensor, so it is kept (never dead code) and its calls stay in program order
  (each one reads and writes the sink);
* asks for the eager strides (``needs_exact_strides``): the statistics see the tensor exactly as
  an eager run does;
* is ``cudagraph_unsafe``: CUDA graphs (``mode="reduce-overhead"``) are split around it rather
  than replaying a stale call.

Where the operator cannot be defined (torch < 2.2), :func:`invisible_to_compiler` falls back to
``torch.compiler.disable`` (a graph break per call). See ``benchmarks/bench_compile.py``.

>>> import torch
>>> seen = []
>>> key = register(lambda ts, tag: seen.append(float(ts[0].sum())))
>>> f = torch.compile(lambda x: (call_in_graph(key, [x * 2]), x + 1)[1], backend="aot_eager")
>>> f(torch.ones(3)).tolist(), seen
([2.0, 2.0, 2.0], [6.0])
>>> unregister(key)
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Callable

import torch

__all__ = ["AVAILABLE", "SKIP", "call_in_graph", "compiling", "hook_in_graph", "invisible_to_compiler", "register", "unregister"]

_compiler = getattr(torch, "compiler", None)
_is_compiling: Callable[[], bool] | None = getattr(_compiler, "is_compiling", None)
if _is_compiling is None:  # torch < 2.3
    try:
        from torch._dynamo import is_compiling as _is_compiling
    except ImportError:  # pragma: no cover  (torch without dynamo)
        _is_compiling = None


def compiling() -> bool:
    """True while dynamo traces the calling code (``torch.compiler.is_compiling()``); about 0.1 us in eager mode."""
    return _is_compiling is not None and _is_compiling()


def invisible_to_compiler(fn: Callable) -> Callable:
    """``fn`` run eagerly even inside a ``torch.compile``d model: dynamo does not trace into it (no
    guards on rangewatch's Python state, no recompiles), at the cost of a graph break per call.
    The fallback where :data:`AVAILABLE` is False, and for the rare calls that cannot go through
    the operator (odd tensors). About 1.5 us per call in eager mode."""
    disable = getattr(_compiler, "disable", None)
    if disable is None:  # torch < 2.1
        import torch._dynamo as dynamo

        disable = dynamo.disable
    return disable(fn)


# key -> function of the run-time tensors; entries are removed when the hooks come off
_CALLS: dict[int, Callable[[list[torch.Tensor], str], None]] = {}
_KEYS = itertools.count(1)
_SINK = torch.zeros(())  # mutated (in name only) by every call: keeps the calls alive and in order


def register(fn: Callable[[list[torch.Tensor], str], None]) -> int:
    """A key under which ``fn(tensors, tag)`` is called at run time by :func:`call_in_graph`."""
    key = next(_KEYS)
    _CALLS[key] = fn
    return key


def unregister(key: int) -> None:
    """Forget ``key``: graphs compiled with it call nothing any more."""
    _CALLS.pop(key, None)


_LIB: object = None  # the torch.library.Library that holds the operator (kept alive: it unregisters when collected)


def _run(sink: torch.Tensor, tensors: list[torch.Tensor], key: int, tag: str = "") -> None:
    fn = sys.modules[__name__]._CALLS.get(key)  # by module name: a re-imported module's table
    if fn is not None:
        try:
            fn(tensors, tag)
        except Exception:  # noqa: BLE001  (the registered functions report their own failures; never into the model)
            pass


def _fake(sink: torch.Tensor, tensors: list[torch.Tensor], key: int, tag: str = "") -> None:
    return None


def _define() -> Callable | None:
    """The operator, defined through ``torch.library.Library`` (a call costs about 12 us; the
    ``torch.library.custom_op`` wrapper's Python autograd layer about 70 us); None where this torch
    cannot define it (no fake-kernel registration before torch 2.2)."""
    global _LIB
    register_fake = getattr(torch.library, "register_fake", None) or getattr(torch.library, "impl_abstract", None)
    if register_fake is None:
        return None
    # a second copy of this package (another module name) gets its own operator
    ns = "rangewatch" if __name__ == "rangewatch.taps.compiled" else "rangewatch_" + "".join(
        ch if ch.isalnum() else "_" for ch in __name__
    )
    existing = getattr(getattr(torch.ops, ns), "hook_call", None)
    if existing is not None:  # this module re-imported (importlib.reload): the operator stays, _run finds the new table
        return existing.default
    tags = tuple(getattr(torch.Tag, t) for t in ("needs_exact_strides", "cudagraph_unsafe") if hasattr(torch.Tag, t))
    try:
        lib = torch.library.Library(ns, "DEF")
        lib.define("hook_call(Tensor(a!) sink, Tensor[] tensors, int key, str tag='') -> ()", tags=tags)
        lib.impl("hook_call", _run, "CompositeExplicitAutograd")
        register_fake(f"{ns}::hook_call", _fake, lib=lib)
    except Exception:  # noqa: BLE001  (an odd torch build: the graph-break fallback still works)
        return None
    _LIB = lib
    return getattr(torch.ops, ns).hook_call.default


_OP = _define()
#: whether hooks can run inside compiled graphs without a graph break (torch >= 2.2)
AVAILABLE = _OP is not None


def call_in_graph(key: int, tensors: list[torch.Tensor], tag: str = "") -> None:
    """Call the function registered under ``key`` with ``tensors`` and ``tag`` (a constant of the
    traced code, e.g. a dtype's name): inside a graph being traced, as one operator call (the
    function runs at every run of the compiled code, with its run-time tensors); outside, directly.

    The tensors are the compiled code's buffers, valid during the call only: the compiled code
    reuses them afterwards without bumping their version counters. A function that keeps one
    beyond the call must keep a copy."""
    assert _OP is not None
    _OP(_SINK, tensors, key, tag)


#: what a ``measure`` of :func:`hook_in_graph` returns when there is nothing to hand over
SKIP: tuple[list[torch.Tensor], str] = ([], "")


def hook_in_graph(keys: list[int], run: Callable[[list[torch.Tensor], str], None], eager: Callable,
                  measure: Callable[..., tuple[list[torch.Tensor], str] | None], fallback: Callable | None = None) -> Callable:
    """A module hook that runs ``eager`` (the hook body) in eager mode; inside a graph being traced,
    the tensors ``measure(*hook_args)`` returns (computed there, fused into the compiled code) go
    through one call of the rangewatch operator to ``run`` (the Python bookkeeping, at run time): no
    graph break and no guard on rangewatch's state. ``measure`` returns None for tensors the operator
    cannot take (nested, sparse): that call takes ``eager`` as a graph break, which notes them; and
    :data:`SKIP` when there is nothing to hand over. ``fallback`` (default ``eager``) is what such a
    graph-break call runs. The operator's key is appended to ``keys`` (for :func:`unregister` at detach)."""
    if not AVAILABLE:
        return invisible_to_compiler(eager)
    key = register(run)
    keys.append(key)
    eager_off = invisible_to_compiler(eager if fallback is None else fallback)

    def hook(module: Any, *rest: Any) -> None:
        if compiling():
            try:
                measured = measure(*rest)
            except Exception:  # noqa: BLE001  (the eager body notes what it cannot read)
                measured = None
            if measured is None:
                eager_off(module, *rest)
            elif measured is not SKIP:
                call_in_graph(key, *measured)
            return None
        return eager(module, *rest)

    return hook
