"""One-read CPU updates of :class:`~rangewatch.stats.range_stats.RangeStats`: a small C kernel (``native.c``
beside this file) built with the system C compiler at first use and called through :mod:`ctypes`.

Eager PyTorch has no fused multi-reduction on CPU (``aminmax``/``var_mean`` over a dimension are
slower than separate reductions), so the eager update reads a tensor once per statistic: two reads
every step (min, max), four for a full update, about twenty for ``detail=True``. The kernel reads a
float32 ``(A, C, B)`` view once per update kind (and the histogram once more), reducing each row in
16 float32 lanes over slices of at most 1024 values, combined in float64: extremes and counts are
exact, NaN propagates into min/max as ``torch.amin`` does, and the histogram's slot arithmetic is
the eager path's float32 operations (``-ffp-contract=off``). Rows are shared among
``torch.get_num_threads()`` OpenMP threads (torch's own OpenMP runtime where torch bundles
``libgomp.so.1``: the same soname is loaded once).

Cost: building takes about half a second once per machine (the library is cached under
``$RANGEWATCH_CACHE_DIR``, default ``~/.cache/rangewatch``, keyed by the source, the compiler and
the CPU), a call about 20 us of Python on top of the read. Why not ``torch.compile``: inductor's compile of the same
loops takes 9-45 s per shape on a small CPU (:mod:`rangewatch.stats.inductor`, kept opt-in); this
kernel is shape-independent and built in under a second, so it is on by default.

Off (the eager path) where it cannot help or cannot run: no C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``), a failed build or load (logged once), ``RANGEWATCH_NATIVE=0`` in the environment, tensors
below :data:`MIN_NUMEL` elements, rows shorter than :data:`MIN_ROW`, non-float32 or non-contiguous rows, and inside a ``torch.compile``
trace.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["MIN_NUMEL", "MIN_ROW", "MAX_INTERLEAVED", "available", "usable", "minmax", "moments", "detail", "histogram", "library"]

log = logging.getLogger(__name__)

#: whether the kernel may be used (``RANGEWATCH_NATIVE=0`` turns it off)
enabled = os.environ.get("RANGEWATCH_NATIVE", "1") != "0"
#: smaller tensors stay eager: a kernel call costs about 20 us of Python around it, which the eager
#: reductions beat below about 2^17 values (one thread, measured with the update's own overhead)
MIN_NUMEL = 1 << 17
#: shorter rows (channels-last-like layouts: ``B`` of 1) stay eager, whose blocked reductions suit them
MIN_ROW = 64
#: channels-last-like views (``B`` of 1) with at most this many channels go through the kernel
MAX_INTERLEAVED = 16
SOURCE = Path(__file__).with_name("native.c")
_BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared"]

_lock = threading.Lock()
_lib: Any = None
_broken: str | None = None  # why the kernel is off for this process (None: not tried yet or loaded)
#: kernel calls so far in this process (tests check that the kernel, not the fallback, ran)
calls = 0

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_F = ctypes.c_float


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str | None:
    """The CPU's feature flags where Linux lists them: what ``-march=native`` depends on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return None


def _cache_dir() -> Path:
    root = os.environ.get("RANGEWATCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rangewatch")
    return Path(root)


def _flag_sets() -> list[list[str]]:
    """Flags tried in order: native CPU and OpenMP first, then without each. ``-march=native`` only
    where the CPU's flags key the cache (a cache shared by machines with other CPUs must not hand
    them code for this one)."""
    native = ["-march=native"] if _cpu_flags() else []
    return [native + ["-fopenmp"], ["-fopenmp"], native, []] if native else [["-fopenmp"], []]


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    errors = []
    for extra in _flag_sets():
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(b"\0".join([src, cc.encode(), " ".join(flags).encode(), (_cpu_flags() or "").encode(),
                                          platform.machine().encode()])).hexdigest()[:20]
        out = _cache_dir() / f"stats_native-{key}.so"
        if out.exists():
            return out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: the temporary directory, per user
            out = Path(tempfile.gettempdir()) / f"rangewatch-{getattr(os, 'getuid', lambda: 0)()}" / out.name
            if out.exists():
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name and renamed: processes building at once (DDP ranks) never
        # load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            r = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                os.replace(tmp, out)
                return out
            errors.append(f"{' '.join(extra) or 'plain'}: {r.stderr.strip()[-300:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("building the kernel failed: " + " | ".join(errors))


class _Layout(ctypes.Structure):
    """``struct layout`` of ``native.c``: how the values are cut into segments."""

    _fields_ = [("nseg", _I64), ("split", _I64), ("rowlen", _I64), ("seglen", _I64), ("cin", _I64), ("crow", _I64),
                ("total", _I64)]


def _load() -> Any:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (CC, cc, gcc, clang)")
    lib = ctypes.CDLL(str(_build(cc)))
    if lib.rw_version() != 3:
        raise RuntimeError("a stale kernel library")
    lay = ctypes.POINTER(_Layout)
    lib.rw_minmax.argtypes = [_P, lay, _INT, _P]
    lib.rw_moments.argtypes = [_P, lay, _INT, _P, _P]
    lib.rw_detail.argtypes = [_P, lay, _P, _P, _INT, _P, _P]
    lib.rw_histogram.argtypes = [_P, lay, _I64, _P, _P, _P, _F, _F, _F, _I64, _INT, _P]
    for fn in (lib.rw_minmax, lib.rw_moments, lib.rw_detail, lib.rw_histogram):
        fn.restype = _INT
    return lib


def library() -> Any:
    """The loaded kernel library, built on first call; None where it is off (the reason is logged once)."""
    global _lib, _broken
    if _lib is not None or _broken is not None or not enabled:
        return _lib
    with _lock:
        if _lib is None and _broken is None:
            try:
                _lib = _load()
            except Exception as e:  # noqa: BLE001  (no compiler, a build or load error: the eager path)
                _broken = f"{type(e).__name__}: {e}"[:600]
                log.info("rangewatch: the one-read CPU statistics kernel is off (%s); using the eager path", _broken)
    return _lib


def available() -> bool:
    """Whether the kernel is (or can be) loaded here; builds it on first call."""
    return library() is not None


def usable(rows: torch.Tensor) -> bool:
    """Whether the kernel takes ``rows`` ``(A, C, B)``: float32, contiguous, on the CPU, at least
    :data:`MIN_NUMEL` elements, outside a ``torch.compile`` trace, and either rows of at least
    :data:`MIN_ROW` values or a channels-last-like view (``B`` of 1, at most :data:`MAX_INTERLEAVED`
    channels). Decided from shapes, dtypes and devices only."""
    if not enabled or _broken is not None or rows.device.type != "cpu" or rows.dtype != torch.float32:
        return False
    if rows.layout != torch.strided or rows.dim() != 3 or rows.numel() < MIN_NUMEL or not rows.is_contiguous():
        return False
    b, c = rows.shape[2], rows.shape[1]
    if not (b >= MIN_ROW or (b == 1 and c <= MAX_INTERLEAVED)):
        return False
    if torch.compiler.is_compiling():
        return False
    return available()


class _Plan:
    """The kernel's layout for one ``(A, C, B)`` shape and thread count, and how its results
    ``(k, slots)`` read as per-channel partials: ``(k, P, C, 1)`` (``parts`` > 1: segments of one
    row, folded over that axis)."""

    __slots__ = ("layout", "ref", "slots", "view", "parts")

    def __init__(self, a: int, c: int, b: int, threads: int) -> None:
        if b == 1:  # channels-last-like: one row of A positions of C interleaved channels, cut into segments
            seglen = max(-(-a // (4 * threads)), min(a, 4096))
            nseg = -(-a // seglen)
            self.layout = _Layout(nseg, nseg, a, seglen, c, c, a * c)
            self.view, self.parts = (nseg, c, 1), 1
        else:  # one segment per row; rows cut in parts when there are too few rows for the threads
            split = -(-4 * threads // (a * c)) if a * c < 4 * threads and b >= 1 << 14 else 1
            self.layout = _Layout(a * c * split, split, b, -(-b // split), 1, c, a * c * b)
            self.view, self.parts = (a, c, split), split
        self.ref = ctypes.byref(self.layout)
        self.slots = self.layout.nseg * self.layout.cin

    def read(self, out: torch.Tensor, ops: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """``out`` ``(k, slots)`` as k ``(P, C, 1)`` partials (``ops``: how parts of a row fold)."""
        t = out.view(len(ops), *self.view)
        if self.parts == 1:
            return t.unbind(0)
        return tuple(r.amin(dim=2, keepdim=True) if op == "amin" else r.amax(dim=2, keepdim=True) if op == "amax"
                     else r.sum(dim=2, keepdim=True) for r, op in zip(t.unbind(0), ops))


_PLANS: dict[tuple[int, int, int, int], _Plan] = {}


def _plan(rows: torch.Tensor) -> tuple[_Plan, int]:
    threads = torch.get_num_threads()
    key = (*rows.shape, threads)
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) >= 256:  # ever-changing shapes: stay bounded
            _PLANS.clear()
        p = _PLANS[key] = _Plan(*rows.shape, threads)
    return p, threads


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1).to(torch.float32).contiguous()


def _ok(rc: int) -> bool:
    """Count a kernel call; a declined layout (a bug: :func:`usable` admits only what the kernel
    takes) switches the kernel off for the process, logged once."""
    global calls, _broken
    if rc == 0:
        calls += 1
        return True
    if rc == -2 and _broken is None:
        _broken = f"the kernel declined a layout ({rc})"
        log.warning("rangewatch: %s; using the eager path from now on", _broken)
    return False


def minmax(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(P, C)`` float32 partial min and max of ``rows`` ``(A, C, B)`` (NaN propagated), or None."""
    p, threads = _plan(rows)
    out = torch.empty(2, p.slots)
    if not _ok(library().rw_minmax(rows.data_ptr(), p.ref, threads, out.data_ptr())):
        return None
    mn, mx = p.read(out, ("amin", "amax"))
    return mn.squeeze(-1), mx.squeeze(-1)


def moments(rows: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """``(P, C, 1)`` partial min, max (float32), sum and sum of squares (float64) of ``rows``
    ``(A, C, B)`` (the partials' layout of :func:`rangewatch.stats.inductor.moments`), or None."""
    p, threads = _plan(rows)
    of = torch.empty(2, p.slots)
    od = torch.empty(2, p.slots, dtype=torch.float64)
    if not _ok(library().rw_moments(rows.data_ptr(), p.ref, threads, of.data_ptr(), od.data_ptr())):
        return None
    return p.read(of, ("amin", "amax")) + p.read(od, ("sum", "sum"))


def detail(rows: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None) -> tuple[torch.Tensor, ...] | None:
    """``(P, C, 1)`` partial min, max, sum, sum of squares, finite min, finite max, non-finite
    count, NaN count, and with float32 bounds ``lo``/``hi`` (``C`` values each) the ``x < lo`` and
    ``x > hi`` counts (zeros without bounds): the order of :func:`rangewatch.stats.inductor.detail`;
    or None."""
    p, threads = _plan(rows)
    lo, hi = _flat(lo), _flat(hi)
    of = torch.empty(4, p.slots)
    od = torch.empty(6, p.slots, dtype=torch.float64)
    if not _ok(library().rw_detail(rows.data_ptr(), p.ref, _ptr(lo), _ptr(hi), threads, of.data_ptr(), od.data_ptr())):
        return None
    mn, mx, fmn, fmx = p.read(of, ("amin", "amax", "amin", "amax"))
    s, q, nonfinite, nan, below, above = p.read(od, ("sum",) * 6)
    return mn, mx, s, q, fmn, fmx, nonfinite, nan, below, above


def histogram(rows: torch.Tensor, origin: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, low: int,
              high: int, nan_slot: int, size: int) -> torch.Tensor | None:
    """``(size,)`` int64 counts of the histogram slots of ``rows``, with the slot arithmetic of
    ``RangeStats._histogram`` (``origin``/``scale``/``offset``: ``C`` float32 values each); None if
    the kernel declined (out of memory, or a slot outside ``size``)."""
    p, threads = _plan(rows)
    origin, scale, offset = _flat(origin), _flat(scale), _flat(offset)
    counts = torch.zeros(size, dtype=torch.int64)
    rc = library().rw_histogram(rows.data_ptr(), p.ref, origin.numel(), origin.data_ptr(), scale.data_ptr(),
                                offset.data_ptr(), float(low), float(high), float(nan_slot), size, threads,
                                counts.data_ptr())
    return counts if _ok(rc) else None
