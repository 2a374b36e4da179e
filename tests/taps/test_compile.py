"""Module taps and the NaN/Inf tracer inside ``torch.compile``d models (issue 14, item 5).

The hooks put one call of the ``rangewatch::hook_call`` operator into the graph (no graph break, no
guard on rangewatch's state): the statistics they record must equal eager mode's exactly (numpy
references), the tracer must still name the first module that produced NaN/Inf, and the graph count
must stay fixed after warm-up whatever rangewatch's Python state does (check steps, detail updates).
``aot_eager`` runs dynamo and AOT autograd (functionalisation, the operator's fake kernel) without
inductor's C++ build; one test per hook kind runs inductor itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

from helpers import fit as quiet
from helpers.compiled import CompiledBody, GraphCount
from rangewatch.taps import compiled as compile_hooks
from rangewatch.checks.numerics import ModuleTracer
from rangewatch.stats.range_stats import RangeStats
from rangewatch.taps.hooks import ModuleTaps

pytestmark = pytest.mark.skipif(not compile_hooks.AVAILABLE, reason="the rangewatch operator needs torch >= 2.2")


def _body(overflow: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 3, 1)
    )
    if overflow:  # body.2 overflows float32 from finite inputs; GroupNorm then turns inf into NaN
        with torch.no_grad():
            body[2].weight.fill_(1e38)
    return body


def _batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 3, 16, 16, generator=g) * 2 - 1 for _ in range(n)]


def _graphs() -> int:
    return int(dynamo.utils.counters["stats"]["unique_graphs"])


def _breaks() -> dict:
    return dict(dynamo.utils.counters["graph_break"])


class _TapStats:
    """``on_tensor`` of a ModuleTaps: every tensor into a RangeStats per tap, ``detail`` toggled from outside
    (as RangeWatch does at check steps); the tensors kept for the numpy references."""

    def __init__(self) -> None:
        self.stats: dict[str, RangeStats] = {}
        self.seen: dict[str, list[np.ndarray]] = {}
        self.detail = False

    def __call__(self, tap: str, t: torch.Tensor) -> None:
        if tap not in self.stats:
            self.stats[tap] = RangeStats(channel_dim=1, bounds="symmetric")
        self.stats[tap].update(t, detail=self.detail, moments=self.detail)
        self.seen.setdefault(tap, []).append(t.detach().numpy().copy())


def _run_taps(backend: str | None, batches: list[torch.Tensor]) -> tuple[_TapStats, list[torch.Tensor], list[int]]:
    dynamo.reset()
    dynamo.utils.counters.clear()
    body = _body()
    sink = _TapStats()
    taps = ModuleTaps(sink)
    assert taps.attach(body, {"0": {"input"}, "2": {"output"}, "4": {"output"}}) == []
    if backend:
        body.compile(backend=backend)
    outs, graphs = [], []
    try:
        for step, x in enumerate(batches):
            sink.detail = step % 2 == 1  # the "check step" mode flips every other step: no graph may depend on it
            y = body(x)
            y.pow(2).mean().backward()
            outs.append(y.detach())
            graphs.append(_graphs())
    finally:
        taps.detach()
    return sink, outs, graphs


def _assert_stats_equal(a: RangeStats, b: RangeStats) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # bit for bit, NaN and all


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_tap_statistics_under_compile_equal_eager_exactly(backend):
    batches = _batches()
    eager, eager_out, _ = _run_taps(None, batches)
    comp, comp_out, graphs = _run_taps(backend, batches)
    assert _breaks() == {} and graphs[0] >= 1 and len(set(graphs)) == 1, (graphs, _breaks())
    for tap in ("0:input", "2:output", "4:output"):
        got = comp.stats[tap].compute()
        # numpy reference: the tensors the compiled model itself produced (inductor's kernels may round
        # differently from eager's), per channel
        seen = np.stack(comp.seen[tap])  # (steps, N, C, H, W)
        assert len(seen) == len(batches)
        per_channel = seen.transpose(2, 0, 1, 3, 4).reshape(seen.shape[2], -1)
        np.testing.assert_array_equal(got.min.numpy(), per_channel.min(axis=1))
        np.testing.assert_array_equal(got.max.numpy(), per_channel.max(axis=1))
        assert got.count.tolist() == [per_channel.shape[1]] * per_channel.shape[0]
        detail = seen[1::2].transpose(2, 0, 1, 3, 4).reshape(seen.shape[2], -1).astype(np.float64)
        np.testing.assert_allclose(got.mean.numpy(), detail.mean(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.below.numpy(), (detail < -1).sum(axis=1))
        # and exactly what eager RangeStats makes of the same tensors, detail steps included
        ref = RangeStats(channel_dim=1, bounds="symmetric")
        for step, t in enumerate(comp.seen[tap]):
            ref.update(torch.from_numpy(t), detail=step % 2 == 1, moments=step % 2 == 1)
        _assert_stats_equal(comp.stats[tap], ref)
    np.testing.assert_array_equal(comp.seen["0:input"][0], batches[0].numpy())
    np.testing.assert_array_equal(comp.seen["4:output"][-1], comp_out[-1].numpy())
    if backend == "aot_eager":  # eager kernels: the very same tensors, so the very same statistics as eager mode
        for tap in eager.stats:
            _assert_stats_equal(comp.stats[tap], eager.stats[tap])


def _run_tracer(backend: str | None, batches: list[torch.Tensor], exact: bool = True, fullgraph: bool = False):
    dynamo.reset()
    dynamo.utils.counters.clear()
    body = _body(overflow=True)
    tracer = ModuleTracer(body, "all", history=4, auto_step=False, exact=exact).attach()
    if backend:
        body.compile(backend=backend, fullgraph=fullgraph)
    graphs = []
    try:
        for step, x in enumerate(batches):
            tracer.start_step(step)
            body(x).float().nan_to_num().sum().backward()
            graphs.append(_graphs())
    finally:
        tracer.detach()
    return tracer, graphs


def _calls(rep) -> list[tuple]:
    return [(c.name, c.step, c.order, c.in_maxabs, c.in_nonfinite, c.out_maxabs, c.out_nonfinite, c.dtype) for c in rep.frames]


@pytest.mark.parametrize("exact", [True, False])
def test_tracer_names_the_first_nonfinite_module_under_compile(exact):
    batches = _batches(3)
    eager, _ = _run_tracer(None, batches, exact)
    comp, graphs = _run_tracer("aot_eager", batches, exact, fullgraph=True)  # fullgraph: no graph break allowed
    assert len(set(graphs)) == 1 and _breaks() == {}, (graphs, _breaks())
    rep, ref = comp.report(), eager.report()
    assert rep.origin is not None and rep.origin.name == "2" and rep.nonfinite_step == 0
    assert _calls(rep) == _calls(ref)  # every call of the broken step, in forward order, the same values
    assert [(p.name, p.out_maxabs, p.in_maxabs, p.dtype) for p in rep.peaks] == [
        (p.name, p.out_maxabs, p.in_maxabs, p.dtype) for p in ref.peaks
    ]
    # numpy reference for the origin's input (the SiLU output) and the first call (the batch)
    x = batches[0].numpy().astype(np.float64)
    assert rep.frames[0].in_maxabs == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert rep.frames[0].in_nonfinite == 0
    (f,) = [f for f in comp.check(3) if f.kind == "nonfinite"]
    (g,) = [g for g in eager.check(3) if g.kind == "nonfinite"]
    assert (f.where, f.observed, f.evidence) == (g.where, g.observed, g.evidence)


class _Doubles(nn.Module):
    """User code that writes into its input: the tracer must see the input as it came in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x - 1


def test_one_operator_call_per_torch_layer_and_two_where_the_input_may_change():
    """A ``torch.nn`` layer that writes no input hands its input and output statistics over in one
    operator call (its forward hook); an in-place layer and user code keep the pre-hook's call, which
    reads the input before the forward changes it. The records equal eager mode's either way."""
    torch.manual_seed(0)

    def body() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Doubles(), nn.ReLU(inplace=True), nn.Conv2d(4, 3, 1))

    batches = _batches(2)
    peaks, calls = [], []
    for backend in (None, "aot_eager"):
        dynamo.reset()
        dynamo.utils.counters.clear()
        m = body()
        tracer = ModuleTracer(m, "all", history=4, auto_step=False).attach()
        counted = {"n": 0}
        for k, f in list(compile_hooks._CALLS.items()):
            if k in tracer._keys:
                compile_hooks._CALLS[k] = lambda ts, tag, f=f: (counted.__setitem__("n", counted["n"] + 1), f(ts, tag))
        if backend:
            m.compile(backend=backend, fullgraph=True)
        try:
            for step, x in enumerate(batches):
                tracer.start_step(step)
                m(x.clone()).sum().backward()
            tracer.start_step(len(batches))  # closes the last step: the run peaks take it
        finally:
            tracer.detach()
        peaks.append({p.name: (p.in_maxabs, p.out_maxabs, p.dtype) for p in tracer.report().peaks})
        calls.append(counted["n"])
    assert calls == [0, 2 * (1 + 2 + 2 + 1)]  # per step: conv 1, user module 2, in-place ReLU 2, conv 1
    eager, comp = peaks
    assert comp == eager and sorted(comp) == ["0", "1", "2", "3"]
    # the user module's input is the first conv's output before it doubled it; a numpy reference
    w, bias = (t.detach().numpy().astype(np.float64) for t in (body()[0].weight, body()[0].bias))
    conv_max, out_max = 0.0, 0.0
    for x in batches:
        xp = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        conv = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 16, j:j + 16], w[:, :, i, j]) for i in range(3) for j in range(3))
        conv = conv + bias[None, :, None, None]
        conv_max, out_max = max(conv_max, np.abs(conv).max()), max(out_max, np.abs(2 * conv - 1).max())
    assert comp["1"][0] == pytest.approx(conv_max, rel=1e-5)
    assert comp["1"][1] == pytest.approx(out_max, rel=1e-5)
    assert comp["2"][0] == comp["1"][1]  # the in-place ReLU's input, read before it ran


@pytest.mark.slow
def test_tracer_under_inductor():
    batches = _batches(3)
    eager, _ = _run_tracer(None, batches)
    comp, graphs = _run_tracer("inductor", batches)
    assert len(set(graphs)) == 1 and _breaks() == {}, (graphs, _breaks())
    rep, ref = comp.report(), eager.report()
    assert rep.origin is not None and rep.origin.name == "2" and rep.nonfinite_step == 0
    assert [c.name for c in rep.frames] == [c.name for c in ref.frames] == ["0", "1", "2"]
    assert rep.frames[0].in_maxabs == ref.frames[0].in_maxabs  # the batch itself: exact
    assert rep.frames[-1].out_nonfinite == ref.frames[-1].out_nonfinite > 0


def test_graphs_stay_fixed_while_rangewatch_state_changes():
    """Steps started and closed, the ring wrapping round, reports read, the tracer switched off and on,
    a module's tracing failing: none of it reaches dynamo's guards."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    body = _body()
    tracer = ModuleTracer(body, "all", history=2, auto_step=False).attach()
    seen: list[str] = []
    taps = ModuleTaps(lambda tap, t: seen.append(tap))
    taps.attach(body, {"1": {"output"}})
    body.compile(backend="aot_eager")
    graphs = []
    try:
        for step, x in enumerate(_batches(8)):
            tracer.start_step(step)
            tracer.enabled = step != 3
            if step == 5:
                tracer._hook_failed(1, "test", RuntimeError("x"))  # a broken module: not traced any more
            body(x).sum().backward()
            if step % 3 == 0:
                tracer.report()
            graphs.append(_graphs())
    finally:
        tracer.detach()
        taps.detach()
    assert len(set(graphs)) == 1 and _breaks() == {}, (graphs, _breaks())
    assert seen == ["1:output"] * 8
    rep = tracer.report()
    assert rep.steps == [6, 7] and all(c.name != "1" for c in rep.frames)
    names = {p.name for p in rep.peaks}
    assert names == {"0", "1", "2", "3", "4"}  # "1" from the steps before it broke


def test_detached_hooks_leave_nothing_registered():
    before = len(compile_hooks._CALLS)
    body = _body()
    tracer = ModuleTracer(body, "all", auto_step=True).attach()
    taps = ModuleTaps(lambda tap, t: None)
    taps.attach(body, {"0": {"input", "output"}})
    assert len(compile_hooks._CALLS) == before + 1 + 2 * 5 + 2
    tracer.detach()
    taps.detach()
    assert len(compile_hooks._CALLS) == before


def test_without_the_operator_hooks_fall_back_to_graph_breaks(monkeypatch):
    """Where the operator is missing (torch < 2.2) the hooks are torch.compiler.disable'd: still no
    recompiles, the same records, a graph break per call."""
    batches = _batches(3)
    eager, _ = _run_tracer(None, batches)
    monkeypatch.setattr(compile_hooks, "AVAILABLE", False)
    comp, graphs = _run_tracer("aot_eager", batches)
    assert graphs[-1] == graphs[1] and _breaks() != {}
    assert _calls(comp.report()) == _calls(eager.report())


def test_auto_step_root_hook_runs_in_the_graph():
    dynamo.reset()
    dynamo.utils.counters.clear()
    body = _body()
    tracer = ModuleTracer(body, "all", history=4).attach()
    body.compile(backend="aot_eager", fullgraph=True)
    try:
        for x in _batches(3):
            body(x).sum().backward()
    finally:
        tracer.detach()
    rep = tracer.report()
    assert rep.steps == [0, 1, 2] and not rep.nonfinite and _breaks() == {}


# ---------------------------------------------------------------------------------------------- RangeWatch
@pytest.mark.slow
def test_rangewatch_with_validation_under_compile_matches_eager():
    from torch.utils.data import DataLoader

    from rangewatch import RangeWatch

    batches = _batches(8)
    results = []
    for compiled in (False, True):
        dynamo.reset()
        dynamo.utils.counters.clear()
        model = CompiledBody(_body(), "aot_eager" if compiled else None)  # validation: data in [0, 1], its own taps
        watch = RangeWatch(expect={"body.0": "unit"}, modules=["body.4:output"], trace_modules="all", log_every_n_steps=2)
        count = GraphCount()
        trainer = quiet.trainer([watch, count], max_epochs=2, limit_val_batches=2)
        loader = DataLoader(batches, batch_size=None)
        trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
        results.append((model.losses, sorted((f.kind, f.where, f.observed, f.expected) for f in watch.findings), count.graphs))
    (eager_losses, eager_findings, _), (losses, findings, graphs) = results
    assert _breaks() == {}
    # graphs for training and for validation (inference mode) are made in the first epoch, never again
    assert graphs[-1] == graphs[len(batches)] and graphs[0] >= 1, graphs
    assert findings == eager_findings and ("mismatch", "body.0:input", "symmetric", "unit") in findings
    assert losses == eager_losses
