"""What the engine places on a model (rangewatch/engine/model_hooks.py), as a collaborator without Lightning or an
engine: the module hooks feed tensors and come off, an unknown submodule leaves nothing behind and names near misses,
and the tracer's findings at a check and when the run fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rangewatch import ConfigError, RangeMismatchError
from rangewatch.engine.model_hooks import ModelHooks
from rangewatch.engine.numerics_tracing import NumericsTracing
from rangewatch.engine.reporter import FindingsReporter
from rangewatch.engine.surroundings import Surroundings


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.decoder = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.decoder(torch.log(self.encoder(x).abs() - 10))  # log of negatives: NaN made after the encoder


def _hooks(said=None):
    env = Surroundings(lambda level, text: (said if said is not None else []).append((level, text)))
    rep = FindingsReporter("log", env)
    fed = []
    hooks = ModelHooks(rep, env, NumericsTracing(), lambda name, t: fed.append((name, tuple(t.shape))),
                       lambda name, e: fed.append((name, repr(e))))
    return hooks, rep, fed


def test_module_hooks_feed_their_tensors_until_detached():
    net, x = Net(), torch.rand(2, 3, 8, 8)
    hooks, _, fed = _hooks()
    assert hooks.hooked is None
    hooks.attach_watchers(net, losses=False, trace_modules=None, history=4, headroom_share=0.5, exact=True, origin=None)
    assert hooks.attach_taps(net, {"encoder": {"input"}, "decoder": {"output"}}) == []
    assert hooks.hooked == {"encoder": ("input",), "decoder": ("output",)}
    net(x)
    assert fed == [("encoder:input", (2, 3, 8, 8)), ("decoder:output", (2, 3, 8, 8))]
    hooks.detach()
    net(x)
    assert len(fed) == 2 and hooks.hooked is None and not hooks.attached


def test_an_unknown_submodule_leaves_nothing_behind_and_names_near_misses():
    net = Net()
    hooks, _, fed = _hooks()
    hooks.attach_watchers(net, losses=False, trace_modules="all", history=4, headroom_share=0.5, exact=True, origin=None)
    missing = hooks.attach_taps(net, {"encoder": {"input"}, "encodr": {"input"}})
    assert missing == ["encodr"]
    err = hooks.unknown(net, missing, "cfg.yaml")
    assert isinstance(err, ConfigError)
    assert str(err).endswith("cfg.yaml: RangeWatch: no submodule named 'encodr' (did you mean 'encoder', 'decoder'?) in Net; "
                             "named submodules include: encoder, decoder")
    net(torch.rand(1, 3, 8, 8))
    assert fed == [] and hooks._numerics.tracer is None  # no hook, no tracer left


def _traced_step(said):
    """Hooks with the tracer on every module, after one training forward that makes NaN."""
    net = Net()
    hooks, rep, _ = _hooks(said)
    hooks.attach_watchers(net, losses=False, trace_modules="all", history=4, headroom_share=0.5, exact=True, origin=None)
    hooks._numerics.start_step(0)
    net(torch.rand(1, 3, 8, 8))
    return net, hooks, rep


def test_the_tracer_names_where_nan_starts_at_a_check_and_when_the_run_fails():
    said = []
    net, hooks, _ = _traced_step(said)
    assert hooks.check(0, trace=False, gather=None) == []  # a validation check: the tracer is not read
    found = hooks.check(0, trace=True, gather=None)
    assert [(f.kind, f.where) for f in found if f.kind == "nonfinite"] == [("nonfinite", "decoder")]
    hooks._numerics.start_step(1)
    net(torch.rand(1, 3, 8, 8))
    hooks.abort(RangeMismatchError([]))  # rangewatch stopped the run itself: nothing more said
    assert said == [] and hooks._numerics.tracer is not None  # taken off by the detach that follows


def test_a_failed_run_still_names_the_nan_origin():
    said = []
    net, hooks, rep = _traced_step(said)
    hooks.abort(RuntimeError("loss is NaN"))
    assert [f.where for f in rep.log.findings if f.kind == "nonfinite"] == ["decoder"]
    assert [lvl for lvl, _ in said] == ["warn"] and "decoder" in said[0][1]
    with pytest.raises(ConfigError, match="option 'trace_modules'"):
        hooks.attach_watchers(net, losses=False, trace_modules=["nope"], history=4, headroom_share=0.5, exact=True, origin=None)
