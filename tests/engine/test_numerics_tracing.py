"""The engine's module tracer as a collaborator (rangewatch/engine/numerics_tracing.py), without Lightning or an
engine: placing it, stepping and pausing it, its check and its NaN/Inf flag."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rangewatch import ConfigError
from rangewatch.engine.numerics_tracing import NumericsTracing


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.log(self.stem(x).abs() - 10))  # log of negatives: NaN made in forward, after stem


def test_nothing_is_placed_without_trace_modules():
    n = NumericsTracing()
    assert n.attach(Net(), None, history=4, headroom_share=0.5, exact=True) == [] and n.tracer is None
    flag = torch.tensor(False)
    assert n.nonfinite_flag(flag) is flag and n.check(0) == ([], [])


def test_an_unknown_module_names_the_option_and_the_file():
    with pytest.raises(ConfigError, match=r"cfg\.yaml: option 'trace_modules' = \['nope'\]"):
        NumericsTracing().attach(Net(), ["nope"], history=4, headroom_share=0.5, exact=True, origin="cfg.yaml")


def test_the_tracer_names_where_nan_starts_and_pauses_for_validation():
    net = Net()
    n = NumericsTracing()
    n.attach(net, "all", history=4, headroom_share=0.5, exact=True)
    assert n.tracer is not None
    x = torch.rand(2, 3, 8, 8)
    n.start_step(0)
    net(x)
    assert bool(n.nonfinite_flag(torch.tensor(False)))
    found, _ = n.check(0)
    assert [f.kind for f in found] == ["nonfinite"] and "head" in found[0].where
    n.start_step(1)
    n.pause()  # validation forwards: not traced
    net(x)
    assert not bool(n.nonfinite_flag(torch.tensor(False)))  # nothing traced since the last check
    n.start_step(2)
    net(x)
    assert bool(n.nonfinite_flag(torch.tensor(False)))  # traced again
    n.detach()
    assert n.tracer is None and not net.head._forward_hooks and not net.head._forward_pre_hooks
