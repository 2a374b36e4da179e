"""Taps and tracers a front end judges itself (rangewatch/engine/judged_taps.py, the front-end tracers of
rangewatch/engine/numerics_tracing.py), through the engine's public API, without Lightning: the judge gets the
window's statistics, its findings are reported once, a failing judge or feed is one internal finding that switches
only its tap off, every check starts a new window, nothing is written per tap, and the engine places, steps and
takes off a front end's tracers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rangewatch import RangeMismatchError, Watch
from rangewatch.checks.latents import LatentMonitor
from rangewatch.findings.finding import mismatch_finding
from rangewatch.stats.range_stats import RangeStats


def engine(said: list | None = None, **kw) -> Watch:
    opts = dict(policy="log", watch_visualization=False, derive_expectations=False)
    opts.update(kw)
    return Watch(messages=(lambda level, text: said.append((level, text))) if said is not None else (lambda level, text: None), **opts)


def stats() -> RangeStats:
    return RangeStats(channel_dim=1, sync_on_compute=False)


def too_bright(where: str, top: float):
    return mismatch_finding(where, observed=f"values up to {top:.3g}", expected="at most 1", evidence="the judge's",
                            fix="divide by 255", severity="error")


def per_channel(*xs: torch.Tensor) -> np.ndarray:
    """(C, n) values of tensors (N, C, H, W), channel by channel: the reference the judges' summaries must match."""
    return np.concatenate([x.double().numpy().transpose(1, 0, 2, 3).reshape(x.shape[1], -1) for x in xs], axis=1)


def test_the_judge_gets_its_window_and_its_findings_are_reported_once():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(2, 3, 4, 5, generator=g) * s for s in (1.0, 3.0, 0.5))
    w = engine()
    seen = []

    def judge(window, judging):
        seen.append(({k: s.compute() for k, s in window.items()}, judging.step, judging.context))
        top = max((float(s.compute().max.max()) for s in window.values()), default=0.0)
        return [too_bright("x", 2.0)] if top > 1 else []

    w.judged.tap("x", stats, judge)
    for key, t in ((0, a), (0, b), (1, c)):
        assert w.judged.feed("x", t, key=key)
    assert sorted(w.judged.window("x")) == [0, 1]
    fresh = w.judged.check(["x"], step=7, context="call 1")
    (window, step, context), = seen
    assert (step, context) == (7, "call 1") and sorted(window) == [0, 1]
    ref = per_channel(a, b)
    np.testing.assert_allclose(window[0].min.numpy(), ref.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(window[0].max.numpy(), ref.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(window[0].mean.numpy(), ref.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(window[1].max.numpy(), per_channel(c).max(axis=1), rtol=1e-6)
    assert [f.kind for f in fresh] == ["mismatch"] and w.findings == fresh

    # a new window: empty after the check, and the next check sees only what was fed since
    assert dict(w.judged.window("x")) == {}
    d = torch.full((1, 3, 2, 2), 4.0)
    w.judged.feed("x", d, key=0)
    assert w.judged.check(["x"], step=8) == []  # the same finding again: reported once
    assert sorted(seen[1][0]) == [0] and seen[1][0][0].min.tolist() == [4.0, 4.0, 4.0]
    assert [f.kind for f in w.findings] == ["mismatch"]


def test_judges_run_in_the_order_named_and_see_what_the_earlier_ones_found():
    w = engine()
    order = []

    def first(window, judging):
        order.append("first")
        return [too_bright("first", 3.0)] if window else []

    def second(window, judging):  # reads its sibling's window and what "first" found
        order.append("second")
        sibling = judging.windows["side"]
        assert sorted(sibling) == ["k"]
        return [] if judging.found.get("first") else [too_bright("second", 3.0)]

    w.judged.tap("first", stats, first)
    w.judged.tap("second", stats, second)
    w.judged.tap("side", stats, None)  # fed for "second", judged by nobody
    w.judged.feed("first", torch.full((1, 3, 2, 2), 3.0))
    w.judged.feed("side", torch.zeros(1, 3, 2, 2), key="k")
    fresh = w.judged.check(["first", "second", "side", "unknown"], step=1)
    assert order == ["first", "second"] and [f.where for f in fresh] == ["first"]
    assert dict(w.judged.window("side")) == {}  # named in the check: a new window too


def test_a_failing_judge_is_one_internal_finding_and_only_its_tap_is_switched_off():
    said: list = []
    w = engine(said)
    calls = {"bad": 0, "good": 0}

    def bad(window, judging):
        calls["bad"] += 1
        raise RuntimeError("judge broke")

    def good(window, judging):
        calls["good"] += 1
        return [too_bright("good", float(s.compute().max.max())) for s in window.values()]

    w.judged.tap("bad", stats, bad, where="front:bad", consequence="that check is off")
    w.judged.tap("good", stats, good)
    for _ in range(2):
        w.judged.feed("bad", torch.ones(1, 3, 2, 2))
        w.judged.feed("good", torch.full((1, 3, 2, 2), 2.0))
        w.judged.check(["bad", "good"], step=1)
    assert calls == {"bad": 1, "good": 2}  # the failing judge is not run again; the other goes on
    assert not w.judged.feed("bad", torch.ones(1, 3, 2, 2))  # switched off
    internal = [f for f in w.findings if f.kind == "internal"]
    assert [f.where for f in internal] == ["front:bad"] and "judge broke" in internal[0].observed
    assert [f.where for f in w.findings if f.kind == "mismatch"] == ["good"]
    warned = [t for level, t in said if "internal error" in t]
    assert warned == ["rangewatch: internal error at front:bad while judging bad (RuntimeError: judge broke); that check is off"]


def test_a_failing_feed_is_one_internal_finding_and_switches_only_that_tap_off():
    said: list = []
    w = engine(said)
    # SDXL latents have 4 channels: the monitor refuses a 3-channel tensor (ValueError), an error of the feed
    w.judged.tap("latents", lambda: LatentMonitor("sdxl_latent", sync_on_compute=False), lambda window, j: [],
                 where="front:latents", what="watching the latents")
    w.judged.tap("image", stats, lambda window, j: [too_bright("image", 2.0)] if window else [])
    assert not w.judged.feed("latents", torch.zeros(1, 3, 8, 8))
    assert not w.judged.feed("latents", torch.zeros(1, 4, 8, 8))  # stays off, said once
    assert w.judged.feed("image", torch.full((1, 3, 2, 2), 2.0))
    fresh = w.judged.check(["latents", "image"], step=0)
    assert [f.where for f in fresh] == ["image"]
    assert [(f.kind, f.where) for f in w.findings if f.kind == "internal"] == [("internal", "front:latents")]
    assert [t.split(" (")[0] for _, t in said if "internal error" in t] == [
        "rangewatch: internal error at front:latents while watching the latents"]
    with pytest.raises(KeyError):
        w.judged.feed("never registered", torch.zeros(1))


def test_policy_raise_stops_after_the_report_and_still_starts_new_windows():
    w = engine(policy="raise")
    w.judged.tap("x", stats, lambda window, j: [too_bright("x", 2.0)] if window else [])
    w.judged.feed("x", torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(RangeMismatchError):
        w.judged.check(["x"], step=0)
    assert [f.where for f in w.findings] == ["x"] and dict(w.judged.window("x")) == {}


def test_judged_taps_write_no_per_tap_scalars_or_histograms(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from helpers.idioms import events

    writer = SummaryWriter(str(tmp_path))
    w = engine(loggers=[writer], histograms=True)
    x = torch.rand(2, 3, 8, 8) * 2
    w.begin_step(0, detail=True)
    w.tensor("plain:input", x, channel_dim=1)  # an ordinary engine tap: its scalars and histograms are written
    w.end_step()
    w.judged.tap("judged:input", stats, lambda window, j: [too_bright("judged:input", 2.0)])
    w.judged.feed("judged:input", x, detail=True)
    assert [f.where for f in w.judged.check(["judged:input"], step=0)] == ["judged:input"]
    writer.close()
    acc = events(tmp_path)
    tags = acc.Tags()
    written = [t for kind in ("scalars", "histograms") for t in tags[kind]]
    assert any("plain" in t for t in written), written  # the reader sees the ordinary tap's writes
    assert not [t for t in written if "judged" in t], written


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)  # NaN where its input is negative


def net() -> nn.Sequential:
    """A conv whose output has negative values, then a log of them (module "1" makes the NaN), then a conv."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Log(), nn.Conv2d(4, 3, 1))


def hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_front_end_tracer_is_stepped_by_the_front_end_judged_by_it_and_taken_off_by_the_engine():
    model, x = net(), torch.rand(2, 3, 8, 8)
    w = engine()
    judged = []

    def judge(window, judging):  # what the tracer itself reports at each check, de-duplication aside
        found = window[None].check(judging.step)
        judged.append((judging.step, [f.kind for f in found]))
        return found

    w.judged.trace("net", model, judge, enabled=False)
    assert hooked(model)
    model(x)  # before the front end steps it: not recorded
    assert w.judged.check(["net"], step=0) == [] and judged == [(0, [])]
    w.judged.trace_step("net", 3)
    model(x)
    w.judged.trace_pause("net")
    fresh = w.judged.check(["net"], step=3)
    assert [f.kind for f in fresh] == ["nonfinite"] and fresh[0].where == "1"
    model(x)  # paused, and the check started a new window: the tracer reports nothing
    w.judged.check(["net"], step=4)
    assert judged[1:] == [(3, ["nonfinite"]), (4, [])]
    w.judged.trace_step("net", 5)
    model(x)  # stepped again: recorded again
    w.judged.check(["net"], step=5)
    assert judged[-1] == (5, ["nonfinite"])
    w.judged.untrace("net")
    assert not hooked(model)
    assert w.judged.check(["net"], step=6) == [] and len(judged) == 4  # no longer a judged tap


def test_a_front_end_tracer_with_auto_step_and_one_whose_judge_fails():
    said: list = []
    w = engine(said)
    auto, broken, x = net(), net(), torch.rand(2, 3, 8, 8)
    w.judged.trace("auto", auto, lambda window, j: window[None].check(j.step), auto_step=True)
    w.judged.trace("broken", broken, lambda window, j: 1 / 0, where="front:broken")
    auto(x)  # stepped by its own forward
    broken(x)
    fresh = w.judged.check(["broken", "auto"], step=1)
    assert [f.kind for f in fresh] == ["nonfinite"] and fresh[0].where == "1"
    assert [f.where for f in w.findings if f.kind == "internal"] == ["front:broken"]
    assert not hooked(broken) and hooked(auto)  # the failing tracer's hooks are taken off, the other stays
    w.close()  # the engine takes its front ends' tracers off
    assert not hooked(auto)
