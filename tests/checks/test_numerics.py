"""NaN/Inf origin tracing and fp16 headroom (rangewatch.checks.numerics)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch import nn

from helpers import fit as quiet
from helpers.models import OverflowModule, make_net
from rangewatch.findings.finding import Finding
from rangewatch.checks.numerics import (
    FP16_MAX,
    ModuleTracer,
    nan_image_finding,
    nonfinite_flag,
    nonfinite_taps,
)
from rangewatch.stats.range_stats import RangeStats


class TraceCallback(L.Callback):
    """What RangeWatch(trace_modules=...) will do: attach at fit start, one step per batch, check at the end."""

    def __init__(self, **kw):
        self.kw = kw
        self.tracer: ModuleTracer | None = None
        self.findings: list[Finding] = []

    def on_fit_start(self, trainer, pl_module):
        self.tracer = ModuleTracer(pl_module, **self.kw).attach()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tracer.start_step(trainer.global_step)

    def on_fit_end(self, trainer, pl_module):
        self.findings = self.tracer.check(trainer.global_step)
        self.tracer.detach()


def fit_fp16(model: L.LightningModule, cb: L.Callback, steps: int = 2) -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(16, 8, generator=g) + 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.fit(model, torch.utils.data.DataLoader(data, batch_size=4), callbacks=[cb], max_steps=steps, precision="16-true")


# ---------------------------------------------------------------------------- Lightning runs
@pytest.mark.slow
def test_overflow_origin_names_third_layer_under_trainer():
    model = OverflowModule(third_scale=20000.0)  # outputs >= 80000 > 65504 -> inf
    cb = TraceCallback()
    fit_fp16(model, cb)
    assert model.out_dtypes and all(d == torch.float16 for d in model.out_dtypes)
    nf = [f for f in cb.findings if f.kind == "nonfinite"]
    assert len(nf) == 1, cb.findings
    f = nf[0]
    assert f.where == "net.2"
    assert f.severity == "error"
    assert "from finite inputs" in f.observed
    assert "input max |x|" in f.evidence and "float16 max 65504" in f.evidence
    assert "bfloat16" in f.fix and "net.2" in f.fix and "sdxl-vae-fp16-fix" in f.fix and "--no-half-vae" in f.fix
    rep = cb.tracer.report()
    assert rep.origin is not None and rep.origin.name == "net.2" and rep.origin.order == 2
    assert rep.origin.in_nonfinite == 0 and rep.origin.out_nonfinite == 4 * 8
    assert [c.name for c in rep.frames] == ["net.0", "net.1", "net.2"]
    assert rep.frames[0].in_maxabs == pytest.approx(rep.frames[1].out_maxabs)
    assert "net.2 Linear" in rep.format()


@pytest.mark.slow
def test_origin_is_latched_when_ring_has_moved_on():
    """After the inf step, the update writes inf/NaN into the weights; with a ring of one step the
    report must still name the first broken step and module."""
    model = OverflowModule(third_scale=20000.0)
    cb = TraceCallback(history=1)
    fit_fp16(model, cb, steps=3)
    rep = cb.tracer.report()
    assert rep.steps == [2]
    assert rep.nonfinite_step == 0
    assert rep.origin is not None and rep.origin.name == "net.2"
    assert [f.where for f in cb.findings if f.kind == "nonfinite"] == ["net.2"]


@pytest.mark.slow
def test_headroom_before_overflow_under_trainer():
    model = OverflowModule(third_scale=5000.0, lr=0.0)  # outputs in [20000, 60000] for inputs in [0.5, 1.5]
    cb = TraceCallback()
    fit_fp16(model, cb)
    kinds = [f.kind for f in cb.findings]
    assert "nonfinite" not in kinds
    hr = [f for f in cb.findings if f.kind == "fp16_headroom"]
    assert [f.where for f in hr] == ["net.2"]  # net.3 (ReLU) only passes the values on
    peak = cb.tracer.report().peaks[0]
    assert peak.name == "net.2" and 0.5 * FP16_MAX < peak.out_maxabs < FP16_MAX
    assert f"{peak.out_maxabs:.4g}" in hr[0].evidence
    assert "bfloat16" in hr[0].fix


def test_no_headroom_finding_in_fp32():
    net = make_net(5000.0)
    with ModuleTracer(net) as t:
        net(torch.ones(4, 8))
    assert t.report().peaks[0].out_maxabs == pytest.approx(40000.0)
    assert t.check(0) == []


# ---------------------------------------------------------------------------- behaviour
def test_tracer_does_not_change_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).half()
    x = torch.randn(2, 3, 8, 8).half()
    ref = net(x)
    t = ModuleTracer(net).attach()
    got = net(x)
    t.detach()
    assert torch.equal(ref, got)
    assert len(t.report().peaks) == 5
    assert net(x).equal(ref)  # hooks removed


def test_inference_mode_and_reuse_of_previous_output():
    net = make_net(2.0)
    x = torch.ones(3, 8)
    with ModuleTracer(net) as t:
        with torch.inference_mode():
            net(x)
        net(x)
    rep = t.report()
    assert rep.steps == [0, 1]
    peaks = {p.name: p for p in rep.peaks}
    assert peaks["2"].in_maxabs == 1.0 and peaks["2"].out_maxabs == 16.0
    assert peaks["3"].in_maxabs == 16.0  # reused from net.2's output statistics


def test_fast_mode_same_origin_and_headroom():
    net = make_net(20000.0).half()
    x = torch.ones(4, 8).half()
    with ModuleTracer(net, exact=False) as t:
        net(x)
    rep = t.report()
    assert rep.origin.name == "2" and rep.origin.out_nonfinite == 1 and rep.origin.out_maxabs == 0
    (f,) = t.check(0)
    assert f.kind == "nonfinite" and "not measured" in f.evidence
    net = make_net(5000.0).half()
    with ModuleTracer(net, exact=False) as t:
        net(x)
    assert [f.where for f in t.check(0)] == ["2"]
    assert t.report().peaks[0].out_maxabs == 40000.0


def test_inplace_module_input_is_seen_before_modification():
    """ReLU(inplace=True) overwrites its input: the pre-hook records the input before that."""
    net = nn.Sequential(nn.Identity(), nn.ReLU(inplace=True))
    x = torch.tensor([[-7.0, 2.0]])
    with ModuleTracer(net) as t:
        net(x.clone())
    relu = [p for p in t.report().peaks if p.name == "1"][0]
    assert relu.in_maxabs == 7.0 and relu.out_maxabs == 2.0


def test_nan_does_not_hide_finite_maxabs_and_counts():
    class Poison(nn.Module):
        def forward(self, x):
            return x * torch.tensor([1.0, float("nan"), float("inf"), 1.0])

    net = nn.Sequential(nn.Identity(), Poison(), nn.Identity())
    with ModuleTracer(net) as t:
        net(torch.tensor([[3.0, 1.0, 1.0, -5.0]]))
    rep = t.report()
    assert rep.origin.name == "1" and rep.origin.type == "Poison"
    assert rep.origin.out_nonfinite == 2 and rep.origin.out_maxabs == 5.0
    assert rep.origin.in_maxabs == 5.0


def test_nonfinite_in_batch_is_reported_as_input():
    net = make_net(1.0)
    with ModuleTracer(net) as t:
        net(torch.tensor([[float("nan")] + [1.0] * 7]))
    rep = t.report()
    assert rep.origin is None and rep.nonfinite_input.name == "0"
    (f,) = [f for f in t.check(3) if f.kind == "nonfinite"]
    assert f.where == "0" and "batch" in f.evidence


def test_tuple_and_dict_outputs_and_named_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x, *, scale=1.0):
            return {"h": self.a(x) * scale, "aux": (self.b(x), torch.arange(3))}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.block(x, scale=100.0)["h"])

    net = Net()
    with pytest.raises(ValueError, match="no module named 'blok'"):
        ModuleTracer(net, modules=["blok"])
    t = ModuleTracer(net, modules=["block", "block.*"])
    assert t.names == ["block", "block.a", "block.b"]
    with t:
        net(torch.ones(2, 4))
    peaks = {p.name: p for p in t.report().peaks}
    assert set(peaks) == {"block", "block.a", "block.b"}
    x = torch.ones(2, 4)
    with torch.no_grad():
        ha, hb = net.block.a(x).abs().max().item(), net.block.b(x).abs().max().item()
    assert peaks["block.a"].out_maxabs == pytest.approx(ha)
    # the block's output is a dict of a tensor and a tuple (tensor, int tensor): float leaves only
    assert peaks["block"].out_maxabs == pytest.approx(max(100 * ha, hb), rel=1e-6)
    assert peaks["block"].in_maxabs == 1.0


def test_child_row_comes_before_parent_row():
    class Bad(nn.Module):
        def forward(self, x):
            return x / 0.0

    outer = nn.Sequential(nn.Identity(), nn.Sequential(nn.Identity(), Bad()))
    with ModuleTracer(outer, modules=["1", "1.*"]) as t:
        outer(torch.ones(1, 2))
    assert t.report().origin.name == "1.1"


def test_auto_step_ring_and_reuse():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared)  # the same module called twice per step
    t = ModuleTracer(net, history=3).attach()
    assert len(t.names) == 2  # named_modules() lists a shared module once
    for _ in range(5):
        net(torch.ones(1, 4))
    rep = t.report()
    assert rep.steps == [2, 3, 4]
    assert [c for c in t._slot_seq[t._slot]] == [0, 1, 0]
    t.detach()


def test_growth_and_dropped_calls():
    lin = nn.Linear(2, 2)
    t = ModuleTracer(lin, auto_step=False, max_calls_per_step=4).attach()
    t.start_step(0)
    for _ in range(6):
        lin(torch.ones(1, 2))
    t.detach()
    assert t.dropped_calls == 2
    assert len(t._slot_seq[t._slot]) == 4


def test_tracer_flag_and_check_nonfinite_every_step_pattern():
    net = make_net(1.0)
    t = ModuleTracer(net, auto_step=False).attach()
    t.start_step(0)
    net(torch.ones(1, 8))
    assert not t.nonfinite_flag().item()
    t.start_step(1)
    net(torch.full((1, 8), float("inf")))
    assert t.nonfinite_flag().item()
    t.detach()


# ---------------------------------------------------------------------------- no host sync
def _forbid_sync(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("host sync on the per-step path")

    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@pytest.mark.parametrize("exact", [True, False])
def test_hooks_do_not_sync(monkeypatch, exact):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).half()
    x = torch.randn(2, 3, 8, 8).half()
    x[0, 0, 0, 0] = float("nan")
    t = ModuleTracer(net, auto_step=False, exact=exact).attach()
    stats = RangeStats(channel_dim=1)
    with monkeypatch.context() as m:
        _forbid_sync(m)
        for step in range(4):  # covers buffer allocation, step close, latch and growth-free reuse
            t.start_step(step)
            y = net(x)
            stats.update(y)
            flag = t.nonfinite_flag()
            tap_flag = nonfinite_flag(stats)
        with pytest.raises(AssertionError):
            bool(flag)  # the patch is active
    t.detach()
    assert flag.item() and tap_flag.item()
    assert t.report().nonfinite_input.name == "0"


# ---------------------------------------------------------------------------- per-tap flags, black images
def test_nonfinite_taps_and_flag():
    a, b = RangeStats(channel_dim=1), RangeStats(channel_dim=1)
    a.update(torch.ones(1, 3, 2, 2))
    b.update(torch.tensor([[1.0, float("nan")]]))
    assert nonfinite_taps({"a": a, "b": b, "c": RangeStats()}) == ["b"]
    assert nonfinite_flag([a, b]).item() and not nonfinite_flag(a).item()
    assert not nonfinite_flag([]).item()


def test_nan_image_finding():
    s = RangeStats(channel_dim=1, bounds="symmetric")
    x = torch.zeros(2, 3, 4, 4)
    x[0, 1, :2] = float("nan")
    s.update(x, detail=True)
    f = nan_image_finding("vae.decoder output", s.compute(), step=7)
    assert f.kind == "nonfinite" and f.severity == "error" and f.step == 7
    assert "8 NaN" in f.evidence and "black image" in f.evidence and "invalid value encountered in cast" in f.evidence
    assert "channel(s) 1" in f.evidence
    ok = RangeStats(channel_dim=1)
    ok.update(torch.zeros(1, 3, 2, 2), detail=True)
    assert nan_image_finding("x", ok.compute()) is None
    flag_only = RangeStats(channel_dim=1)
    flag_only.update(x)  # no detail counts: the every-step flag is enough
    assert "non-finite values seen" in nan_image_finding("x", flag_only.compute()).evidence


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hooks_do_not_sync_on_cuda():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).cuda().half()
    x = torch.randn(2, 3, 8, 8, device="cuda").half()
    t = ModuleTracer(net, auto_step=False).attach()
    t.start_step(0)
    net(x)  # first step: allocation and the one-off copy of the call order
    t.start_step(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 5):
            t.start_step(step)
            net(x)
            t.nonfinite_flag()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    t.detach()
    assert not t.report().nonfinite
