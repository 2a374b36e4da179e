"""NaN/Inf origin tracing and fp16 headroom, without a host sync per module.

Three pieces:

* :class:`ModuleTracer` hooks a model's leaf modules (or named ones) and, for every call, writes
  the max-abs of the finite input/output values and their non-finite counts into a preallocated
  float32 buffer **on the model's device** (a ring of the last ``history`` steps). Nothing is
  read back until :meth:`ModuleTracer.report` / :meth:`ModuleTracer.check` (one host transfer),
  which name the first module, in forward order, whose inputs were finite and whose output was not
  (the overflow origin), and the modules with the least fp16 headroom (``max|x| / 65504``): the
  report transformers' ``DebugUnderflowOverflow`` prints, without its per-tensor syncs.
* :func:`nonfinite_flag` / :func:`nonfinite_taps`: the per-tap non-finite counter is
  :class:`~rangewatch.stats.range_stats.RangeStats`' ``nonfinite_seen`` state, which every ``update`` already
  maintains on the device (NaN makes min/max NaN, Inf makes one of them infinite). How a callback
  uses it:

  - at logging/check steps the flag arrives with the one ``compute()`` transfer
    (``RangeSummary.nonfinite_seen``); nothing extra is needed;
  - with ``check_nonfinite_every_step=True`` (fail-fast runs) the callback calls, once per step
    (e.g. in ``on_train_batch_end``), ``if nonfinite_flag(all_tap_stats).item(): ...``: one
    device-to-host transfer of a single bool for all taps together, then, only when it is set,
    ``nonfinite_taps(...)`` and ``tracer.check(step)`` to say where.
    :meth:`ModuleTracer.nonfinite_flag` is the same flag for the traced modules.
* :func:`nan_image_finding`: "outputs about to be converted to images contain NaN/Inf: this will
  be a black image", from a tap's :class:`~rangewatch.stats.range_stats.RangeSummary`.

Per-step path rule: hooks and flags only queue device kernels (no ``.item()``, ``.cpu()``,
``.tolist()``, ``bool(tensor)``, ``float(tensor)``, no Python branch on tensor values). The only
host-visible per-call bookkeeping is Python metadata (call order, dtypes), never tensor values.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..taps import compiled as compile_hooks
from ..findings.finding import Finding, first_seen, nonfinite_finding
from ..stats.range_stats import RangeStats, RangeSummary
from ..taps.batches import odd_tensor_kind
from ..taps.sharding import user_named_modules
from ..taps.hooks import is_script_module

__all__ = [
    "FP16_MAX",
    "ModuleTracer",
    "UnknownModuleError",
    "ModuleCall",
    "ModulePeak",
    "TraceReport",
    "fp16_fix",
    "nan_image_finding",
    "nonfinite_flag",
    "nonfinite_taps",
]

#: largest finite float16 value
FP16_MAX = 65504.0

# columns of a buffer row: one row per module call
_IN_MAX, _IN_NF, _OUT_MAX, _OUT_NF = 0, 1, 2, 3
_K = 4


# ---------------------------------------------------------------------------- fix text
def fp16_fix(module: str | None = None) -> str:
    """The standard remedies for fp16 overflow, naming ``module`` where known."""
    keep = (
        f"keep {module} in fp32: model.get_submodule('{module}').float() and call it inside "
        "torch.autocast(device_type, enabled=False) with its input cast .float()"
        if module
        else "keep the overflowing module in fp32 (module.float() inside torch.autocast(device_type, enabled=False))"
    )
    return (
        "run in bfloat16 instead of float16 (Trainer(precision='bf16-mixed'), torch_dtype=torch.bfloat16), "
        f"which has the range of fp32; or {keep}; for an SDXL VAE use the fixed VAE "
        "madebyollin/sdxl-vae-fp16-fix, or keep the VAE in fp32 (--no-half-vae in A1111 / kohya sd-scripts, "
        "vae.config.force_upcast=True in diffusers)"
    )


# ---------------------------------------------------------------------------- tensor helpers
def _float_leaves(obj: Any, out: list[torch.Tensor], depth: int = 0, odd: list[str] | None = None) -> list[torch.Tensor]:
    """Floating-point, non-empty dense tensors inside ``obj`` (tensor, tuple/list, dict/ModelOutput).
    Nested, sparse and meta tensors (and wrapper subclasses) are left out; their kinds go to ``odd``."""
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor or obj.layout is not torch.strided or obj.is_nested or obj.is_meta:
            kind = odd_tensor_kind(obj)
            if kind is not None:
                if odd is not None:
                    odd.append(kind)
                return out
        if obj.is_floating_point() and obj.numel() > 0:
            out.append(obj)
    elif depth < 4:
        if isinstance(obj, (tuple, list)):
            for v in obj:
                _float_leaves(v, out, depth + 1, odd)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                _float_leaves(v, out, depth + 1, odd)
    return out


def _version(t: torch.Tensor) -> int:
    """In-place version counter (-1 for inference-mode tensors, which have none: never reused)."""
    return -1 if t.is_inference() else t._version


def _maxabs_nonfinite(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max |x| over the finite values, number of non-finite values)`` as 0-d device tensors.

    ``amax`` propagates NaN, so non-finite values are zeroed (in the scratch ``abs`` copy) before
    the max: the finite max-abs is still reported when some values overflowed. The max is exact in
    any float dtype; the count is an int64 reduction. No host sync.
    """
    a = t.detach().abs()
    nf = a.numel() - (a < torch.inf).sum()  # |x| < inf is False exactly for NaN and +-inf (one op; isfinite is four)
    mx = a.nan_to_num_(nan=0.0, posinf=0.0).amax()
    return mx, nf


def _maxabs_flag(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast variant (``exact=False``): one read-only ``aminmax`` pass. Gives the max-abs exactly when
    every value is finite; otherwise the max-abs reads 0 (unknown) and the "count" is 1 (at least one)."""
    mn, mx = torch.aminmax(t.detach())
    m = torch.maximum(mx, -mn).float()  # NaN if any NaN, inf if any +-inf
    bad = ~torch.isfinite(m)
    return torch.where(bad, 0.0, m), bad.long()


def _one_call_under_compile(m: nn.Module) -> bool:
    """Whether a compiled graph may take ``m``'s input statistics in its forward hook, with the
    output's (one operator call per module call instead of two): a ``torch.nn`` layer that does not
    write into its input (no ``inplace=True``). Any other module (user code, which may change its
    input in place) keeps the pre-hook's call, which measures the input before the forward runs."""
    return type(m).__module__.startswith("torch.nn.modules.") and not getattr(m, "inplace", False)


def _graph_measure(leaves: list[torch.Tensor], exact: bool) -> torch.Tensor | None:
    """:func:`_maxabs_nonfinite` / :func:`_maxabs_flag` of one call's float leaves as traced into a
    compiled graph (fused there), packed as ``[max-abs, non-finite count]`` float32: the values the
    eager hooks stage (the buffer rows are float32 either way). None when the leaves are on several
    devices (that call takes the eager path)."""
    if not leaves:
        return None
    parts = [_maxabs_nonfinite(t) if exact else _maxabs_flag(t) for t in leaves]
    if len(parts) == 1:
        mx, nf = parts[0]
    else:
        if any(t.device != leaves[0].device for t in leaves):
            return None
        mx = torch.stack([m.float() for m, _ in parts]).amax()
        nf = torch.stack([n for _, n in parts]).sum()
    return torch.stack([mx.float(), nf.float()])


class UnknownModuleError(ValueError):
    """A module name or pattern given to :class:`ModuleTracer` matches no module of the model."""


# ---------------------------------------------------------------------------- report types
@dataclass(frozen=True)
class ModuleCall:
    """One traced call: where it came in the step's forward order and what it saw (host values)."""

    name: str
    type: str
    step: int | None
    order: int
    in_maxabs: float
    in_nonfinite: float
    out_maxabs: float
    out_nonfinite: float
    dtype: str


@dataclass(frozen=True)
class ModulePeak:
    """A module's largest finite max-abs of outputs (and inputs) over the traced steps."""

    name: str
    type: str
    out_maxabs: float
    in_maxabs: float
    dtype: str
    recent_out_maxabs: float  # over the steps still in the ring

    @property
    def fp16(self) -> bool:
        return self.dtype == "float16"

    @property
    def share(self) -> float:
        """Share of the fp16 maximum (65504) reached by the output (1 - headroom)."""
        return self.out_maxabs / FP16_MAX


@dataclass
class TraceReport:
    """What :meth:`ModuleTracer.report` found.

    ``origin``: the first call (forward order, earliest broken step) whose inputs were finite and
    whose output was not; ``nonfinite_input``: set instead when the first call touching non-finite
    values already had them in its input (the data or untraced code produced them). ``frames``:
    the calls of that step up to and including it (for printing). ``peaks``: per module, sorted by
    output max-abs, largest (least fp16 headroom) first.
    """

    steps: list[int | None]
    origin: ModuleCall | None = None
    nonfinite_input: ModuleCall | None = None
    nonfinite_step: int | None = None
    frames: list[ModuleCall] = field(default_factory=list)
    peaks: list[ModulePeak] = field(default_factory=list)
    dropped_calls: int = 0

    @property
    def nonfinite(self) -> bool:
        return self.origin is not None or self.nonfinite_input is not None

    def format(self, max_frames: int = 21) -> str:
        """A text report in the spirit of ``DebugUnderflowOverflow``'s frame dump."""
        lines: list[str] = []
        if self.nonfinite:
            at = self.origin or self.nonfinite_input
            assert at is not None
            what = "first non-finite output from finite inputs" if self.origin else "non-finite values already in the input"
            lines.append(f"Detected inf/nan at step {self.nonfinite_step}: {what} at {at.name} ({at.type})")
            lines.append(f"Last {min(max_frames, len(self.frames))} forward frames:")
            lines.append(f"{'in max|x|':>10} {'in n/f':>7} {'out max|x|':>10} {'out n/f':>7}  module")
            for c in self.frames[-max_frames:]:
                lines.append(
                    f"{c.in_maxabs:10.3e} {c.in_nonfinite:7.0f} {c.out_maxabs:10.3e} {c.out_nonfinite:7.0f}  "
                    f"{c.name} {c.type} [{c.dtype}]"
                )
        else:
            lines.append(f"No inf/nan in steps {self.steps}")
        lines.append("Least fp16 headroom (finite output max|x| / 65504):")
        for p in self.peaks[:10]:
            lines.append(f"  {p.out_maxabs:10.3e} ({p.share:6.1%})  {p.name} {p.type} [{p.dtype}]")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- tracer
class ModuleTracer:
    """Per-module max-abs and non-finite counts of inputs and outputs, recorded on the device.

    Args:
        model: the module to trace.
        modules: ``"all"`` (every leaf module) or a list of module names / fnmatch patterns
            (``"vae.decoder.*"``); named modules may be non-leaf.
        history: number of steps kept in the ring buffer.
        headroom_share: ``check`` reports ``fp16_headroom`` when a module's fp16 output reaches this
            share of 65504.
        auto_step: advance to a new step whenever the root module's ``forward`` starts, until
            :meth:`start_step` is called explicitly (then steps are whatever the caller says).
        max_calls_per_step: the buffer grows (doubling, from the number of traced modules) up to
            this many calls per step; further calls in the step are dropped and counted.
        exact: ``True`` (default) measures, per tensor, the max-abs of the finite values and the exact
            number of non-finite values (about five memory passes). ``False`` uses one read-only
            ``aminmax`` pass: the same origin and headroom, but a non-finite tensor is only flagged
            (count 1, finite max-abs unknown). See ``benchmarks/bench_tracing.py`` for the cost.

    Each call's input statistics are taken in a forward *pre*-hook (before an in-place module can
    change its input) and the output's in the forward hook, which also writes the row: rows are in
    the order forward calls complete (a child before the parent that contains it). The earliest
    step with non-finite values is latched on the device, so the origin is still reported when the
    check comes many steps after the break and later steps are NaN everywhere.

    Inside a ``torch.compile``d model the per-call statistics are computed in the compiled graph
    (fused there) and handed, by calls of the rangewatch operator (:mod:`rangewatch.taps.compiled`),
    to the same bookkeeping at run time: no graph break, and no guard on the tracer's state, so the
    graph count stays fixed whatever the steps do. A ``torch.nn`` layer that writes no input hands
    its input and output statistics over together, in one call from its forward hook; an in-place
    layer (``inplace=True``) and any other module take one call per hook, the input's read before
    the forward runs.

    Caveats: the first step with a new call sequence copies its module-index list to the device
    once (cached afterwards); module outputs on another device than the buffer are copied with
    ``non_blocking=True``.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: str | Sequence[str] = "all",
        history: int = 8,
        *,
        headroom_share: float = 0.5,
        auto_step: bool = True,
        max_calls_per_step: int | None = None,
        exact: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModuleTracer traces an nn.Module, got {type(model).__name__}")
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a positive int, got {history!r}")
        if not 0 < headroom_share <= 1:
            raise ValueError(f"headroom_share must be in (0, 1], got {headroom_share!r}")
        self.model = model
        self.history = history
        self.headroom_share = float(headroom_share)
        self.auto_step = auto_step
        self.exact = bool(exact)
        self._measure = _maxabs_nonfinite if self.exact else _maxabs_flag
        self.names, self.modules = self._select(model, modules)
        self.types = [type(m).__name__ for m in self.modules]
        n = len(self.modules)
        self.max_calls_per_step = max_calls_per_step or max(64 * n, 256)
        self.enabled = True
        self.dropped_calls = 0
        #: what the tracer skipped or switched off (odd tensors, TorchScript modules, a failed hook), each said once
        self.notes: list[str] = list(self._skipped_scripts)
        self._noted: set[str] = set(self.notes)
        self._broken: set[int] = set()  # modules whose hook failed: not traced any more

        self._handles: list[Any] = []
        self._keys: list[int] = []  # rangewatch operator keys of the placed hooks (compile_hooks)
        self._device: torch.device | None = None
        self._cap = max(n, 1)
        self._buf: torch.Tensor | None = None  # (history, cap, K)
        self._pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n)]
        # per-call rows staged until the step closes / a report (one write per step): an eager call's
        # (in max, in n/f, out max, out n/f) device scalars, or a compiled call's packed float32 (4,) row
        self._stage: list[tuple[torch.Tensor, ...] | torch.Tensor] = []
        self._one_call = [_one_call_under_compile(m) for m in self.modules]
        self._pre_bodies: dict[int, Callable] = {}  # module index -> its eager pre-hook body
        self._flushed = 0  # rows of the current slot already written to the buffer
        self._last: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None  # last output's stats
        self._dtypes: list[str] = [""] * n
        # ring metadata (host side, Python values only)
        self._slot = -1
        self._slot_step: list[int | None] = [None] * history
        self._slot_seq: list[list[int]] = [[] for _ in range(history)]
        self._slot_closed: list[bool] = [True] * history
        self._order = 0  # steps started, in order
        self._slot_order: list[int] = [-1] * history
        self._manual = False
        self._auto_counter = 0
        # sequences of module indices seen in a step, interned (for the latch)
        self._seq_ids: dict[tuple[int, ...], int] = {}
        self._seq_list: list[tuple[int, ...]] = []
        self._seq_idx_dev: dict[int, torch.Tensor] = {}
        # device-side run state
        self._peak: torch.Tensor | None = None  # (n, 2): max finite |in|, |out| per module, closed steps
        self._latch: torch.Tensor | None = None  # (cap, K) rows of the earliest broken step
        self._latch_meta: torch.Tensor | None = None  # int64 (4,): set, step, seq id, rows
        self._zf: torch.Tensor | None = None  # 0-d float32 zero on the buffer's device
        self._zi: torch.Tensor | None = None  # 0-d int64 zero

    # ------------------------------------------------------------------ selection
    def _select(self, model: nn.Module, modules: str | Sequence[str]) -> tuple[list[str], list[nn.Module]]:
        names, mods = self._select_all(model, modules)
        self._skipped_scripts = [
            f"trace_modules: {n} is a TorchScript module ({type(m).__name__}), which takes no forward hooks: not traced"
            for n, m in zip(names, mods) if is_script_module(m)
        ]
        keep = [(n, m) for n, m in zip(names, mods) if not is_script_module(m)]
        return [n for n, _ in keep], [m for _, m in keep]

    @staticmethod
    def _select_all(model: nn.Module, modules: str | Sequence[str]) -> tuple[list[str], list[nn.Module]]:
        named = user_named_modules(model)  # as the user named them (taps/sharding.py)
        if isinstance(modules, str) and modules == "all":
            picked = [(n, m) for n, m in named if next(m.children(), None) is None]
        else:
            pats = [modules] if isinstance(modules, str) else list(modules)
            if not pats:
                raise ValueError("modules must be 'all' or a non-empty list of module names")
            picked, seen = [], set()
            for p in pats:
                hit = [(n, m) for n, m in named if n == p or (any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(n, p))]
                if not hit:
                    near = [n for n, _ in named if n and (p in n or n in p)][:8]
                    raise UnknownModuleError(
                        f"no module named {p!r} in {type(model).__name__}"
                        + (f"; similar names: {', '.join(near)}" if near else "")
                    )
                for n, m in hit:
                    if n not in seen:
                        seen.add(n)
                        picked.append((n, m))
        if not picked:
            raise ValueError(f"{type(model).__name__} has no modules to trace")
        return [n or type(m).__name__ for n, m in picked], [m for _, m in picked]

    # ------------------------------------------------------------------ attach / detach
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "ModuleTracer":
        """Register the hooks (idempotent). Returns ``self``."""
        if self._handles:
            return self
        try:
            if self.auto_step and not is_script_module(self.model):
                self._handles.append(self.model.register_forward_pre_hook(self._make_root_pre()))
            for i, m in enumerate(self.modules):
                self._handles.append(m.register_forward_pre_hook(self._make_pre(i), with_kwargs=True))
                self._handles.append(m.register_forward_hook(self._make_post(i), with_kwargs=self._one_call[i]))
        except BaseException:
            self.detach()  # every hook placed so far comes off again
            raise
        return self

    def detach(self) -> None:
        """Remove the hooks; recorded data stays readable."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for k in self._keys:
            compile_hooks.unregister(k)
        self._keys = []
        for p in self._pending:
            p.clear()
        self._flush()
        self._last = None

    def __enter__(self) -> "ModuleTracer":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------ buffers
    def _ensure(self, device: torch.device) -> None:
        with torch.inference_mode(False):  # state stays a normal tensor (validation runs in inference mode)
            return self._ensure_impl(device)

    def _ensure_impl(self, device: torch.device) -> None:
        if self._buf is not None:
            return
        self._device = device
        self._buf = torch.zeros(self.history, self._cap, _K, dtype=torch.float32, device=device)
        self._peak = torch.zeros(len(self.modules), 2, dtype=torch.float32, device=device)
        self._latch = torch.zeros(self._cap, _K, dtype=torch.float32, device=device)
        self._latch_meta = torch.zeros(4, dtype=torch.int64, device=device)
        self._zf = torch.zeros((), dtype=torch.float32, device=device)
        self._zi = torch.zeros((), dtype=torch.int64, device=device)

    def _grow(self) -> bool:
        with torch.inference_mode(False):  # state stays a normal tensor (validation runs in inference mode)
            return self._grow_impl()

    def _grow_impl(self) -> bool:
        if self._cap >= self.max_calls_per_step:
            return False
        assert self._buf is not None and self._latch is not None
        new = min(self._cap * 2, self.max_calls_per_step)
        pad = new - self._cap
        self._buf = torch.cat([self._buf, self._buf.new_zeros(self.history, pad, _K)], dim=1)
        self._latch = torch.cat([self._latch, self._latch.new_zeros(pad, _K)], dim=0)
        self._cap = new
        return True

    def _model_device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ steps
    def _root_pre_hook(self, module: nn.Module, args: Any) -> None:
        if self.enabled and not self._manual:
            self._auto_counter += 1
            self._advance(self._auto_counter - 1)

    def start_step(self, step: int | None = None) -> None:
        """Begin recording a new step (closes the previous one). Calling this switches ``auto_step`` off."""
        self._manual = True
        self._advance(step)

    def _advance(self, step: int | None) -> None:
        self._close_current()
        self._last = None
        self._flushed = 0
        self._slot = (self._slot + 1) % self.history
        self._slot_step[self._slot] = step
        self._slot_seq[self._slot] = []
        self._slot_closed[self._slot] = False
        self._slot_order[self._slot] = self._order
        self._order += 1

    def _seq_id(self, seq: list[int]) -> int:
        key = tuple(seq)
        sid = self._seq_ids.get(key)
        if sid is None:
            sid = len(self._seq_list)
            self._seq_ids[key] = sid
            self._seq_list.append(key)
        return sid

    def _close_current(self) -> None:
        with torch.inference_mode(False):  # state stays a normal tensor (validation runs in inference mode)
            return self._close_current_impl()

    def _close_current_impl(self) -> None:
        """Fold the current step into the run peaks and the latch (device ops only)."""
        s = self._slot
        if s < 0 or self._slot_closed[s]:
            return
        self._flush()
        self._slot_closed[s] = True
        seq = self._slot_seq[s]
        if not seq or self._buf is None:
            return
        assert self._peak is not None and self._latch is not None and self._latch_meta is not None
        sid = self._seq_id(seq)
        idx = self._seq_idx_dev.get(sid)
        if idx is None:  # once per distinct call sequence
            idx = torch.tensor(seq, dtype=torch.long, device=self._buf.device)
            self._seq_idx_dev[sid] = idx
        n = len(seq)
        rows = self._buf[s, :n]
        self._peak[:, 0].scatter_reduce_(0, idx, rows[:, _IN_MAX], "amax")
        self._peak[:, 1].scatter_reduce_(0, idx, rows[:, _OUT_MAX], "amax")
        # latch the earliest step that saw non-finite values
        bad = (rows[:, _IN_NF] + rows[:, _OUT_NF]).sum() > 0
        keep = self._latch_meta[0] > 0
        step = self._slot_step[s]
        dev = self._buf.device
        meta = torch.stack(
            [
                torch.ones((), dtype=torch.int64, device=dev),
                torch.full((), -1 if step is None else int(step), dtype=torch.int64, device=dev),
                torch.full((), sid, dtype=torch.int64, device=dev),
                torch.full((), n, dtype=torch.int64, device=dev),
            ]
        )
        take = bad & ~keep
        new_rows = self._buf[s]
        self._latch = torch.where(take, new_rows, self._latch)
        self._latch_meta = torch.where(take, meta, self._latch_meta)

    def reset(self) -> None:
        """Forget everything recorded (keeps the hooks)."""
        self._buf = None
        self._peak = self._latch = self._latch_meta = self._zf = self._zi = None
        self._stage = []
        self._flushed = 0
        self._last = None
        self._slot = -1
        self._slot_step = [None] * self.history
        self._slot_seq = [[] for _ in range(self.history)]
        self._slot_closed = [True] * self.history
        self._slot_order = [-1] * self.history
        self._seq_ids, self._seq_list, self._seq_idx_dev = {}, [], {}
        self.dropped_calls = 0

    # ------------------------------------------------------------------ hooks
    def _stats(self, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(max-abs, non-finite count) of the float leaves, as device scalars; the previous call's output
        statistics are reused when this is the same, unmodified tensor (chains of modules)."""
        assert self._zf is not None and self._zi is not None and self._device is not None
        if not leaves:
            return self._zf, self._zi
        if len(leaves) == 1:
            t = leaves[0]
            last = self._last
            if last is not None and last[0] is t and last[1] == _version(t):
                return last[2], last[3]
            mx, nf = self._measure(t)
        else:
            parts = [self._measure(t) for t in leaves]
            if any(p[0].device != self._device for p in parts):
                parts = [(m.to(self._device, non_blocking=True), n.to(self._device, non_blocking=True)) for m, n in parts]
            mx = torch.stack([m.float() for m, _ in parts]).amax()
            nf = torch.stack([n for _, n in parts]).sum()
        if mx.device != self._device:
            mx, nf = mx.to(self._device, non_blocking=True), nf.to(self._device, non_blocking=True)
        return mx, nf

    def _note(self, text: str) -> None:
        if text not in self._noted and len(self._noted) < 64:
            self._noted.add(text)
            self.notes.append(text)

    def _odd(self, i: int, kinds: list[str]) -> None:
        for k in kinds:
            self._note(f"trace_modules: {self.names[i]} saw a {k} tensor; the tracer reads dense tensors only, so it is left out")

    def _hook_failed(self, i: int, where: str, e: BaseException) -> None:
        """A hook body failed: that module is not traced any more (said once); the model goes on."""
        self._broken.add(i)
        self._pending[i].clear()
        self._note(f"trace_modules: tracing {self.names[i]} failed in its {where} hook ({type(e).__name__}: {str(e)[:160]}); "
                   "that module is not traced any more")

    def _in_graph(self, run: Callable[[list[torch.Tensor], str], None], eager: Callable,
                  measure: Callable[..., tuple[list[torch.Tensor], str] | None], fallback: Callable | None = None) -> Callable:
        """``eager`` (the hook body) in eager mode; inside a graph being traced, the statistics
        ``measure(*hook_args)`` computes there (fused into the compiled code) go, through one call of
        the rangewatch operator, to ``run`` (the Python bookkeeping, at run time): no graph break and
        no guard on the tracer's state. ``measure`` returns None for tensors the operator cannot
        take (nested, sparse; leaves on several devices): that call takes ``eager`` as a graph
        break, which notes them."""
        return compile_hooks.hook_in_graph(self._keys, run, eager, measure, fallback)

    def _graph_parts(self, *objs: Any) -> tuple[list[torch.Tensor], str] | None:
        """Traced: ``([packed statistics], first leaf's dtype)`` of the float leaves of ``objs``
        (``([], "")`` without any), or None when the operator cannot take them."""
        odd: list[str] = []
        leaves: list[torch.Tensor] = []
        for obj in objs:
            _float_leaves(obj, leaves, 0, odd)
        if odd:
            return None
        if not leaves:
            return [], ""
        packed = _graph_measure(leaves, self.exact)
        if packed is None:
            return None
        return [packed], str(leaves[0].dtype)[6:]  # "torch.float16" -> "float16"

    def _unpack(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run time: one call's packed ``[max-abs, count]`` as (max-abs, count) on the buffer's device,
        copied (the compiled code reuses its buffers after the call)."""
        assert self._zf is not None and self._zi is not None and self._device is not None
        if not parts:
            return self._zf, self._zi
        p = parts[0].to(self._device, non_blocking=True) if parts[0].device != self._device else parts[0].clone()
        return p[0], p[1]

    def _make_root_pre(self):
        def run(parts: list[torch.Tensor], tag: str) -> None:
            self._root_pre_hook(self.model, ())

        return self._in_graph(run, self._root_pre_hook, lambda args: ([], ""))

    def _make_pre(self, i: int):
        def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
            if not self.enabled or i in self._broken:
                return
            try:
                odd: list[str] = []
                leaves = _float_leaves(args, [], 0, odd)
                if kwargs:
                    _float_leaves(kwargs, leaves, 0, odd)
                if odd:
                    self._odd(i, odd)
                if self._buf is None:
                    self._ensure(leaves[0].device if leaves else self._model_device())
                self._pending[i].append(self._stats(leaves))
            except Exception as e:  # noqa: BLE001  (never raised into the model)
                self._hook_failed(i, "forward pre-", e)

        def run(parts: list[torch.Tensor], tag: str) -> None:  # the same, from statistics taken in a compiled graph
            if not self.enabled or i in self._broken:
                return
            try:
                if self._buf is None:
                    self._ensure(parts[0].device if parts else self._model_device())
                self._pending[i].append(self._unpack(parts))
            except Exception as e:  # noqa: BLE001
                self._hook_failed(i, "forward pre-", e)

        self._pre_bodies[i] = pre
        if self._one_call[i]:  # the forward hook takes the input's statistics too, in the same call
            return self._in_graph(run, pre, lambda args, kwargs: compile_hooks.SKIP)
        return self._in_graph(run, pre, self._graph_parts)

    def _make_post(self, i: int):
        def post(module: nn.Module, args: Any, output: Any) -> None:
            if i in self._broken:
                return
            try:
                self._post(i, output)
            except Exception as e:  # noqa: BLE001  (never raised into the model)
                self._hook_failed(i, "forward ", e)

        def run(parts: list[torch.Tensor], tag: str) -> None:  # the same, from statistics taken in a compiled graph
            if i in self._broken:
                return
            try:
                self._record(i, None, parts, tag)
            except Exception as e:  # noqa: BLE001
                self._hook_failed(i, "forward ", e)

        if not self._one_call[i]:
            return self._in_graph(run, post, lambda args, output: self._graph_parts(output))

        def post_kw(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            return post(module, args, output)

        def both(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            # a graph break for tensors the operator cannot take (nested, sparse): the eager bodies of
            # both hooks, which note them (the input is unchanged: a module of one call writes no input)
            self._pre_bodies[i](module, args, kwargs)
            post(module, args, output)

        def run_row(parts: list[torch.Tensor], tag: str) -> None:  # input and output statistics in one call
            if not self.enabled or i in self._broken:
                return
            try:
                self._record_row(i, parts[0], tag)
            except Exception as e:  # noqa: BLE001
                self._hook_failed(i, "forward ", e)

        return self._in_graph(run_row, post_kw, self._graph_row, both)

    def _graph_row(self, args: Any, kwargs: Any, output: Any) -> tuple[list[torch.Tensor], str] | None:
        """Traced, for a module of one operator call: ``([in max, in count, out max, out count])`` of
        the call's float input leaves (args, kwargs) and output leaves, float32 (zeros for a side
        without leaves, as the eager hooks stage), and the output's dtype; None when the operator
        cannot take them (that call takes the eager hooks' bodies as graph breaks)."""
        odd: list[str] = []
        ins: list[torch.Tensor] = []
        _float_leaves(args, ins, 0, odd)
        if kwargs:
            _float_leaves(kwargs, ins, 0, odd)
        outs = _float_leaves(output, [], 0, odd)
        if odd:
            return None
        zeros = None
        sides = []
        for leaves in (ins, outs):
            packed = _graph_measure(leaves, self.exact) if leaves else None
            if leaves and packed is None:
                return None
            if packed is None:
                if zeros is None:
                    dev = (ins or outs)[0].device if (ins or outs) else None
                    zeros = torch.zeros(2, dtype=torch.float32, device=dev)
                packed = zeros
            sides.append(packed)
        if sides[0].device != sides[1].device:
            return None
        return [torch.cat(sides)], str(outs[0].dtype)[6:] if outs else ""

    def _record_row(self, i: int, row: torch.Tensor, dtype: str) -> None:
        """Run time, a module of one operator call: stage its packed row (copied: the compiled code
        reuses its buffers after the call)."""
        pending = self._pending[i]
        if pending:  # an eager pre-hook's statistics (a graph break before this call): superseded
            pending.clear()
        if self._buf is None:
            self._ensure(row.device)
        seq = self._call_seq()
        if seq is None:
            return
        self._last = None  # a compiled graph's buffers are reused without a version bump
        if dtype:
            self._dtypes[i] = dtype
        self._stage.append(row.to(self._device, non_blocking=True) if row.device != self._device else row.clone())
        seq.append(i)

    def _call_seq(self) -> list[int] | None:
        """The current step's call sequence (a step opened if none is), with room for one more
        call; None (the call counted in ``dropped_calls``) where the buffer cannot grow."""
        if self._slot < 0:
            self._advance(None if self._manual else self._auto_counter)
        seq = self._slot_seq[self._slot]
        if len(seq) >= self._cap and not self._grow():
            self.dropped_calls += 1
            return None
        return seq

    def _post(self, i: int, output: Any) -> None:
        """The body of the forward hook."""
        self._record(i, output, None)

    def _record(self, i: int, output: Any, parts: list[torch.Tensor] | None, dtype: str = "") -> None:
        """Close call ``i``: its output's statistics from ``output`` (eager) or ``parts`` (taken in a
        compiled graph, the output's dtype ``dtype``), with the input's from the pre-hook, staged as
        one row."""
        pending = self._pending[i]
        if not self.enabled or not pending:
            pending.clear()
            return
        in_mx, in_nf = pending.pop()
        seq = self._call_seq()
        if seq is None:
            return
        if parts is None:
            odd: list[str] = []
            leaves = _float_leaves(output, [], 0, odd)
            if odd:
                self._odd(i, odd)
            out_mx, out_nf = self._stats(leaves)
            if leaves:
                t = leaves[0]
                self._dtypes[i] = str(t.dtype)[6:]  # "torch.float16" -> "float16"
                if len(leaves) == 1:
                    v = _version(t)
                    self._last = (t, v, out_mx, out_nf) if v >= 0 else None
        else:
            # a compiled graph's buffers are reused without a version bump: no reuse of the last
            # output's statistics across its calls (the graph itself computes them once)
            self._last = None
            out_mx, out_nf = self._unpack(parts)
            if dtype:
                self._dtypes[i] = dtype
        self._stage.append((in_mx, in_nf, out_mx, out_nf))
        seq.append(i)

    def _flush(self) -> None:
        with torch.inference_mode(False):  # state stays a normal tensor (validation runs in inference mode)
            return self._flush_impl()

    def _flush_impl(self) -> None:
        """Write the staged per-call scalars of the current step into its buffer rows (a few device ops)."""
        st = self._stage
        if not st or self._buf is None or self._slot < 0:
            return
        n = len(st)
        packed = [r for r in st if type(r) is not tuple]  # rows a compiled graph packed
        if not packed:  # eager calls only
            cols = [torch.stack([r[k] for r in st]).float() for k in range(_K)]
            block = torch.stack(cols, dim=1)  # column order = _IN_MAX, _IN_NF, ...
        elif len(packed) == n:
            block = torch.stack(packed)
        else:
            block = torch.stack([r if type(r) is not tuple else torch.stack([v.float() for v in r]) for r in st])
        self._buf[self._slot, self._flushed : self._flushed + n].copy_(block)
        self._flushed += n
        self._stage = []

    # ------------------------------------------------------------------ per-step flag
    def nonfinite_flag(self) -> torch.Tensor:
        """0-d bool device tensor: did any traced call of the current step see non-finite values? No sync."""
        if self._buf is None or self._slot < 0:
            return torch.zeros((), dtype=torch.bool, device=self._device or self._model_device())
        self._flush()
        n = len(self._slot_seq[self._slot])
        rows = self._buf[self._slot, :n]
        return (rows[:, _IN_NF] + rows[:, _OUT_NF]).sum() > 0

    # ------------------------------------------------------------------ report
    def report(self) -> TraceReport:
        """One host transfer of the ring, the latch and the run peaks; see :class:`TraceReport`."""
        if self._buf is None or self._slot < 0:
            return TraceReport(steps=[], dropped_calls=self.dropped_calls)
        self._flush()
        assert self._peak is not None and self._latch is not None and self._latch_meta is not None
        cap, h, n_mod = self._cap, self.history, len(self.modules)
        # float32 throughout (no float64 on the device: MPS has none); the int64 latch metadata travels
        # bit-for-bit as 8 float32 words and is viewed back as int64 on the host
        packed = torch.cat(
            [self._buf.reshape(-1), self._latch.reshape(-1), self._peak.reshape(-1), self._latch_meta.view(torch.float32)]
        ).cpu()  # the single host transfer
        o = 0
        ring = packed[o : o + h * cap * _K].view(h, cap, _K).double()
        o += h * cap * _K
        latch = packed[o : o + cap * _K].view(cap, _K).double()
        o += cap * _K
        peak = packed[o : o + n_mod * 2].view(n_mod, 2).double()
        o += n_mod * 2
        meta = packed[o : o + 8].clone().view(torch.int64).tolist()

        # steps in the ring, oldest first
        slots = sorted((s for s in range(h) if self._slot_order[s] >= 0), key=lambda s: self._slot_order[s])
        rep = TraceReport(steps=[self._slot_step[s] for s in slots], dropped_calls=self.dropped_calls)

        def calls(rows: torch.Tensor, seq: Sequence[int], step: int | None) -> list[ModuleCall]:
            vals = rows[: len(seq)].tolist()
            return [
                ModuleCall(
                    self.names[m], self.types[m], step, k, v[_IN_MAX], v[_IN_NF], v[_OUT_MAX], v[_OUT_NF], self._dtypes[m]
                )
                for k, (m, v) in enumerate(zip(seq, vals))
            ]

        # candidate steps with non-finite values: the latched one, then the ring's, earliest first
        candidates: list[list[ModuleCall]] = []
        if meta[0] > 0:
            seq = self._seq_list[int(meta[2])]
            step = None if meta[1] < 0 else int(meta[1])
            candidates.append(calls(latch, seq, step))
        for s in slots:
            seq = self._slot_seq[s]
            if seq:
                cs = calls(ring[s], seq, self._slot_step[s])
                if any(c.in_nonfinite or c.out_nonfinite for c in cs):
                    candidates.append(cs)
        if candidates:
            cs = candidates[0]
            k = next(k for k, c in enumerate(cs) if c.in_nonfinite or c.out_nonfinite)
            first = cs[k]
            rep.nonfinite_step = first.step
            rep.frames = cs[: k + 1]
            if first.in_nonfinite:
                rep.nonfinite_input = first
            else:
                rep.origin = first

        # peaks: closed steps (device peak) and every ring step (covers the open one)
        out_run = peak[:, 1].clone()
        in_run = peak[:, 0].clone()
        recent = torch.zeros(n_mod, dtype=torch.float64)
        for s in slots:
            seq = self._slot_seq[s]
            if not seq:
                continue
            idx = torch.tensor(seq, dtype=torch.long)
            rows = ring[s, : len(seq)]
            recent.scatter_reduce_(0, idx, rows[:, _OUT_MAX], "amax")
            in_run.scatter_reduce_(0, idx, rows[:, _IN_MAX], "amax")
        out_run = torch.maximum(out_run, recent)
        called = set(m for s in slots for m in self._slot_seq[s]) | set(m for q in self._seq_list for m in q)
        rep.peaks = sorted(
            (
                ModulePeak(self.names[m], self.types[m], out_run[m].item(), in_run[m].item(), self._dtypes[m], recent[m].item())
                for m in called
            ),
            key=lambda p: -p.out_maxabs,
        )
        return rep

    def check(self, step: int | None = None, *, max_headroom: int = 3, gather: Any = None) -> list[Finding]:
        """Findings (host sync): ``nonfinite`` for the overflow origin (or non-finite input) and
        ``fp16_headroom`` for up to ``max_headroom`` fp16 modules whose output max-abs passed
        ``headroom_share`` of 65504.

        Under DDP pass ``gather(payload: bytes) -> list[bytes]`` (every rank's payload, in rank
        order; a collective: every rank must call ``check`` together). The ranks then agree on one
        first-origin record: the earliest broken step, then the earliest call in forward order,
        then the lowest rank, named in the evidence ("on rank 1 of 2"); a rank whose NaN only came
        from the gradient all-reduce does not blame its own first module. ``fp16_headroom``
        findings are the union over ranks."""
        rep = self.report()
        local = self._findings(rep, step, max_headroom)
        if gather is None:
            return local
        first = rep.origin or rep.nonfinite_input
        key = None if first is None else [-1 if first.step is None else int(first.step), int(first.order)]
        payload = json.dumps({"key": key, "findings": [f.to_dict() for f in local]}).encode()
        parts = [json.loads(p.decode()) for p in gather(payload)]
        best: tuple[tuple[int, int, int], Finding] | None = None
        others: list[Finding] = []
        for rank, part in enumerate(parts):
            for d in part["findings"]:
                f = Finding(**d)
                if f.kind == "nonfinite":
                    k = part["key"] or [1 << 62, 1 << 62]
                    cand = (int(k[0]), int(k[1]), rank)
                    if best is None or cand < best[0]:
                        best = (cand, f)
                else:
                    others.append(f)
        out = first_seen(others, set())
        if best is not None:
            (_, _, rank), f = best
            out.insert(0, replace(f, evidence=f"on rank {rank} of {len(parts)}: {f.evidence}"))
        return out

    def _findings(self, rep: TraceReport, step: int | None, max_headroom: int) -> list[Finding]:
        out: list[Finding] = []
        names = dict(zip(self.names, self.modules))
        if rep.origin is not None:
            c = rep.origin
            prev = rep.frames[-2] if len(rep.frames) > 1 else None
            prev_txt = f"; the call before it, {prev.name} ({prev.type}), output max |x| {prev.out_maxabs:.4g}" if prev else ""
            limit = f" (float16 max {FP16_MAX:.0f})" if c.dtype == "float16" else ""
            out.append(
                nonfinite_finding(
                    c.name,
                    observed=f"NaN/Inf output of {c.type} from finite inputs",
                    expected="finite activations",
                    evidence=(
                        f"first module in forward order to produce non-finite values (call {c.order + 1} of step "
                        f"{c.step}): input max |x| {c.in_maxabs:.4g}, all finite; output "
                        + (
                            f"{c.out_nonfinite:.0f} non-finite values, finite max |x| {c.out_maxabs:.4g}"
                            if self.exact
                            else "non-finite (exact=False: count and finite max not measured)"
                        )
                        + f", dtype {c.dtype or '?'}{limit}{prev_txt}"
                        f"{self._weights_note(names.get(c.name))}"
                    ),
                    fix=fp16_fix(c.name),
                    step=step,
                    source="rangewatch.checks.numerics.ModuleTracer",
                )
            )
        elif rep.nonfinite_input is not None:
            c = rep.nonfinite_input
            out.append(
                nonfinite_finding(
                    c.name,
                    observed="NaN/Inf already in the input of the first traced module to see them",
                    expected="finite activations",
                    evidence=(
                        f"step {c.step}: {f'{c.in_nonfinite:.0f} ' if self.exact else ''}non-finite input values reach {c.name} ({c.type}, call "
                        f"{c.order + 1}) and no traced module before it produced them: they come from the batch or "
                        "from untraced code"
                    ),
                    fix="check the batch for NaN/Inf (torch.isfinite(x).all()) and trace the modules that run before "
                    f"{c.name} (modules='all'); if they come from an fp16 overflow: " + fp16_fix(None),
                    step=step,
                    source="rangewatch.checks.numerics.ModuleTracer",
                )
            )
        origin_name = rep.origin.name if rep.origin else None
        n = 0
        for p in rep.peaks:
            if n >= max_headroom or p.share < self.headroom_share:
                break
            if not p.fp16 or p.name == origin_name or p.in_maxabs >= self.headroom_share * FP16_MAX:
                continue  # not fp16, already reported, or only passing on large values it received
            n += 1
            out.append(
                Finding(
                    kind="fp16_headroom",
                    where=p.name,
                    observed=f"fp16 activations reach at least {self.headroom_share:.0%} of the float16 maximum",
                    expected=f"max |x| well below {FP16_MAX:.0f}",
                    evidence=(
                        f"{p.name} ({p.type}) output max |x| {p.out_maxabs:.4g} = {p.share:.0%} of {FP16_MAX:.0f} "
                        f"(headroom {FP16_MAX / max(p.out_maxabs, 1e-30):.2f}x; last {len(rep.steps)} steps: "
                        f"{p.recent_out_maxabs:.4g}); input max |x| {p.in_maxabs:.4g}; a little more and it overflows "
                        "to inf, then NaN"
                    ),
                    fix=fp16_fix(p.name),
                    severity="warning",
                    step=step,
                    source="rangewatch.checks.numerics.ModuleTracer",
                )
            )
        return out

    @staticmethod
    def _weights_note(module: nn.Module | None) -> str:
        """Current state of the module's own parameters (check time; may differ from the broken step)."""
        if module is None:
            return ""
        ps = [p.detach() for p in module.parameters(recurse=False) if p.is_floating_point() and p.numel()]
        if not ps:
            return ""
        mx = max(p.abs().nan_to_num(nan=0.0, posinf=0.0).amax().item() for p in ps)
        bad = sum(int((~torch.isfinite(p)).sum().item()) for p in ps)
        state = f", {bad} of them non-finite now (an update after the overflow wrote NaN into them)" if bad else ""
        return f"; its weights (now): finite max |w| {mx:.4g}{state}"


# ---------------------------------------------------------------------------- per-tap flags
def _stats_list(stats: RangeStats | Iterable[RangeStats] | Mapping[str, RangeStats]) -> list[RangeStats]:
    if isinstance(stats, RangeStats):
        return [stats]
    if isinstance(stats, Mapping):
        return list(stats.values())
    return list(stats)


def nonfinite_flag(stats: RangeStats | Iterable[RangeStats] | Mapping[str, RangeStats]) -> torch.Tensor:
    """0-d bool tensor on the taps' device: has any tap seen NaN/Inf since its last reset? No sync.

    Fail-fast use, once per step: ``if nonfinite_flag(taps).item(): ...`` (one transfer of one bool).
    """
    lst = [s for s in _stats_list(stats) if s.nonfinite_seen.numel()]
    if not lst:
        return torch.zeros((), dtype=torch.bool)
    dev = lst[0].nonfinite_seen.device
    tot = torch.stack([s.nonfinite_seen.to(dev, non_blocking=True).sum() for s in lst]).sum()
    return tot > 0


def nonfinite_taps(stats: Mapping[str, RangeStats]) -> list[str]:
    """Names of the taps whose ``nonfinite_seen`` flag is set (one host transfer)."""
    items = [(k, s) for k, s in stats.items() if s.nonfinite_seen.numel()]
    if not items:
        return []
    dev = items[0][1].nonfinite_seen.device
    flags = torch.stack([s.nonfinite_seen.to(dev, non_blocking=True).amax() for _, s in items]).cpu().tolist()
    return [k for (k, _), f in zip(items, flags) if f > 0]


# ---------------------------------------------------------------------------- black images
def nan_image_finding(where: str, summary: RangeSummary, step: int | None = None) -> Finding | None:
    """A ``nonfinite`` finding when outputs about to become images contain NaN/Inf (else ``None``).

    Uses the detail counts (``nan``/``inf``) when the tap had ``detail=True`` updates, otherwise the
    every-step ``nonfinite_seen`` flag.
    """
    if summary.channels == 0:
        return None
    detail = float(summary.detail_count.sum()) > 0
    nan, inf = float(summary.nan.sum()), float(summary.inf.sum())
    flagged = bool(summary.nonfinite_seen.any())
    if not (nan or inf or flagged):
        return None
    if detail and (nan or inf):
        total = float(summary.detail_count.sum())
        chans = [str(c) for c in range(summary.channels) if float(summary.nonfinite[c]) > 0]
        counts = (
            f"{nan:.0f} NaN and {inf:.0f} Inf values of {total:.0f} ({(nan + inf) / max(total, 1):.1%}), "
            f"in channel(s) {', '.join(chans)}"
        )
    else:
        counts = "non-finite values seen (min/max became NaN/Inf)"
    return nonfinite_finding(
        where,
        observed="NaN/Inf in outputs about to be converted to images",
        evidence=(
            f"{counts}; converting them to uint8 prints 'RuntimeWarning: invalid value encountered in cast' "
            "and gives an all-black image (diffusers VaeImageProcessor.postprocess / numpy_to_pil)"
        ),
        fix="find the module that first produced them (RangeWatch(trace_modules=...) / rangewatch.checks.numerics.ModuleTracer); "
        + fp16_fix(None),
        step=step,
        source="rangewatch.checks.numerics",
    )
