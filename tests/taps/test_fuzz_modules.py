"""A standing guard (issue 14): odd tensor kinds through hooked modules and the tracer.

A module ``side`` is handed a fuzzed tensor (dense in any dtype and layout, empty, 0-d, NaN/Inf,
complex, sparse COO/CSR, nested strided/jagged, meta, a non-contiguous view, one that requires grad)
and returns it (so its output hook sees it too), or a plain tensor. Module taps
(``RangeWatch(modules=["side"])``) and the tracer (``trace_modules="all"``, also a bare
:class:`~rangewatch.checks.numerics.ModuleTracer`) must never raise into the model, never change its output,
and never file an internal error against themselves.

Size: ``RANGEWATCH_FUZZ_EXAMPLES`` (default 12) fits, and 10x as many bare-tracer forwards.
"""

from __future__ import annotations

import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from rangewatch import RangeWatch
from rangewatch.checks.numerics import ModuleTracer

EXAMPLES = int(os.environ.get("RANGEWATCH_FUZZ_EXAMPLES", "12"))

KINDS = ["dense", "empty", "scalar", "nonfinite", "complex", "coo", "csr", "nested", "jagged", "meta", "view",
         "channels_last", "grad", "int", "bool", "fp16_inf", "seq"]


@st.composite
def odd_tensors(draw) -> torch.Tensor:
    kind = draw(st.sampled_from(KINDS))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    shape = draw(st.sampled_from([(2, 3, 16, 16), (2, 4, 8, 8), (2, 7, 8), (2, 5), (1, 16, 4, 4)]))
    x = torch.rand(shape, generator=g) * 4 - 2
    if kind == "empty":
        return torch.empty(0, *shape[1:])
    if kind == "scalar":
        return torch.tensor(draw(st.floats(allow_nan=True, allow_infinity=True)))
    if kind == "nonfinite":
        x.view(-1)[::3] = draw(st.sampled_from([float("nan"), float("inf")]))
        return x
    if kind == "complex":
        return torch.complex(x, x)
    if kind == "coo":
        return x.to_sparse()
    if kind == "csr":
        return x.reshape(shape[0], -1).to_sparse_csr()
    if kind == "nested":
        return torch.nested.nested_tensor([torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 12, generator=g)])
    if kind == "jagged":
        return torch.nested.nested_tensor([torch.rand(5, 8, generator=g), torch.rand(7, 8, generator=g)], layout=torch.jagged)
    if kind == "meta":
        return torch.empty(shape, device="meta")
    if kind == "view":
        return x[..., ::2] if x.shape[-1] > 1 else x.t()
    if kind == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "grad":
        return x.requires_grad_()
    if kind == "int":
        return (x * 100).long()
    if kind == "bool":
        return x > 0
    if kind == "fp16_inf":
        return (x * 4e4).half()
    if kind == "seq":
        return torch.rand(2, draw(st.integers(1, 9)), 8, generator=g)
    return x


class Side(nn.Module):
    """Returns what it gets (``echo``) or a plain tensor; never looks at the values."""

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.echo = echo
        self.lin = nn.Identity()

    def forward(self, t):
        return t if self.echo else self.lin(torch.zeros(2, 3))


class _Steps(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return {"image": torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i))}


class Model(pl.LightningModule):
    def __init__(self, tensors: list[torch.Tensor], echo: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tensors = tensors
        self.side = Side(echo)
        self.enc = nn.Conv2d(3, 2, 3, padding=1)
        self.outs: list = []
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        out = self.side(self.tensors[batch_idx % len(self.tensors)])
        self.outs.append(out)
        loss = self.enc(batch["image"]).pow(2).mean()
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(model: Model, watch: RangeWatch | None) -> None:
    quiet.fit(model, DataLoader(_Steps(), batch_size=None), callbacks=[watch] if watch else [], max_steps=2,
              limit_val_batches=0)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(tensors=st.lists(odd_tensors(), min_size=1, max_size=2), echo=st.booleans(), trace=st.booleans(),
       sides=st.sampled_from([["side"], ["side:output"], ["side", "side.lin"]]))
def test_odd_tensors_through_hooked_modules_in_a_fit(tensors, echo, trace, sides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Model(tensors, echo)
        _fit(ref, None)
        model = Model(tensors, echo)
        watch = RangeWatch(modules=sides, trace_modules="all" if trace else None, log_every_n_steps=1)
        _fit(model, watch)
    assert model.losses == ref.losses
    for a, b in zip(model.outs, ref.outs):
        assert type(a) is type(b) and a.layout == b.layout
    assert all(a is t for a, t in zip(model.outs, tensors)) if echo else True
    bad = [f for f in watch.findings if f.kind == "internal"]
    assert not bad, [str(f) for f in bad]


@settings(max_examples=EXAMPLES * 10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(t=odd_tensors(), exact=st.booleans(), echo=st.booleans())
def test_odd_tensors_through_a_bare_tracer(t, exact, echo):
    model = nn.Sequential(Side(echo), nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ModuleTracer(model, "all", exact=exact) as tracer:
            out = model(t)
            out2 = model(t)
        rep = tracer.report()
        tracer.check(0)
    if echo:
        assert out is t and out2 is t
    assert isinstance(rep.format(), str)
