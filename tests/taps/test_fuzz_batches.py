"""A standing guard (issue 14): fuzzed batch structures through real short Lightning fits.

Hypothesis draws a batch (dicts, tuples, lists, namedtuples, dataclasses, nested; float32/64, fp16,
bf16, uint8, bool, int64 token ids; NCHW, channels-last, NHWC, 2-D..5-D, empty, NaN/Inf-filled,
sparse COO, nested/jagged tensors) and RangeWatch options, and runs the same tiny model for a few
steps with and without RangeWatch. rangewatch may find things and, under ``policy="raise"``, stop the
run with a RangeMismatchError; anything else raised, an internal error filed against itself, or a
changed loss is a bug.

Default size: ``RANGEWATCH_FUZZ_EXAMPLES`` (default 12) examples, about 30-60 s on two cores; set it to
a few hundred for a longer hunt (``RANGEWATCH_FUZZ_EXAMPLES=400 pytest tests/taps/test_fuzz_batches.py``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import namedtuple
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from rangewatch import RangeMismatchError, RangeWatch

EXAMPLES = int(os.environ.get("RANGEWATCH_FUZZ_EXAMPLES", "12"))
STEPS = 2

Pair = namedtuple("Pair", ["image", "cond"])


@dataclasses.dataclass
class Sample:
    pixels: Any
    extra: Any = None


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.bool, torch.int64]
SHAPES = [(2, 3, 16, 16), (2, 1, 8, 8), (2, 4, 8, 8), (2, 16, 16, 3), (2, 3, 4, 8, 8), (2, 4, 3, 8, 8), (2, 7, 8),
          (2, 10), (0, 3, 16, 16), (1, 3, 9, 11), (2, 16, 8, 8), (3,), ()]


@st.composite
def leaves(draw) -> torch.Tensor:
    kind = draw(st.sampled_from(["dense", "dense", "dense", "dense", "channels_last", "nonfinite", "sparse", "nested", "tokens", "view"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "nested":
        c = draw(st.sampled_from([1, 3]))
        layout = draw(st.sampled_from([torch.jagged, torch.strided]))
        parts = [torch.rand(c, 8, 8 + k, generator=g) for k in range(2)]
        if layout == torch.jagged:  # jagged nested tensors take one ragged dim
            parts = [torch.rand(5 + k, c, generator=g) for k in range(2)]
        return torch.nested.nested_tensor(parts, layout=layout)
    if kind == "tokens":
        return torch.randint(0, 50_000, (2, draw(st.integers(1, 12))), generator=g)
    shape = draw(st.sampled_from(SHAPES))
    dtype = draw(st.sampled_from(DTYPES))
    lo, hi = draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-3.0, 3.0), (-7e4, 7e4)]))
    x = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    if kind == "nonfinite" and x.numel():
        x.view(-1)[:: max(1, x.numel() // 7)] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        if draw(st.booleans()):
            x.fill_(float("nan"))
    if dtype == torch.bool:
        t = x > (lo + hi) / 2
    elif dtype in (torch.uint8, torch.int64):
        t = x.nan_to_num(0.0, 0.0, 0.0).clamp(0, 255).to(dtype)
    else:
        t = x.to(dtype)
    if kind == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    if kind == "view" and t.dim() >= 2 and t.shape[-1] > 1:
        t = t[..., ::2]  # a non-contiguous view
    if kind == "sparse" and t.dim() >= 2 and t.dtype not in (torch.bool, torch.float16, torch.bfloat16):
        t = t.to_sparse()
    return t


def structures(depth: int = 0):
    leaf = leaves()
    if depth >= 2:
        return leaf
    child = structures(depth + 1)
    keys = st.sampled_from(["image", "x", "lq", "gt", "mask", "label", "input_ids", "latents", "pixel_values", "cond", "meta"])
    return st.one_of(
        leaf,
        st.dictionaries(keys, child, min_size=1, max_size=4),
        st.lists(child, min_size=1, max_size=3),
        st.lists(child, min_size=1, max_size=3).map(tuple),
        st.tuples(child, child).map(lambda p: Pair(*p)),
        st.tuples(child, child).map(lambda p: Sample(*p)),
    )


options = st.fixed_dictionaries({
    "policy": st.sampled_from(["warn", "log", "raise"]),
    "trace_modules": st.sampled_from([None, "all"]),
    "check_nonfinite_every_step": st.booleans(),
    "moments_every_step": st.booleans(),
    "expect": st.sampled_from([None, {"batch.image": "symmetric"}, {"batch[0]": "unit"}, {"enc": "imagenet"}]),
    "check_first_n": st.sampled_from([0, 1, 3]),
})


# ---------------------------------------------------------------------------------------------- the fit
class _Same(Dataset):
    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, i: int) -> Any:
        return self.batch


def _dense_floats(obj: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        if not obj.is_nested and obj.layout == torch.strided and obj.is_floating_point() and obj.numel():
            out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _dense_floats(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _dense_floats(v, out)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _dense_floats(getattr(obj, f.name), out)
    return out


class Tiny(pl.LightningModule):
    """The loss depends on every dense float leaf of the batch (so a changed batch changes it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Conv2d(3, 2, 3, padding=1)
        self.w = nn.Parameter(torch.ones(()))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        s = sum((t.double().nan_to_num(0.0, 0.0, 0.0).mean() for t in _dense_floats(batch, [])), torch.zeros((), dtype=torch.float64))
        z = self.enc(torch.ones(1, 3, 8, 8) * s.float().clamp(-10, 10)).mean()
        loss = (self.w * z - 1).pow(2)
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(batch: Any, watch: RangeWatch | None) -> Tiny:
    model = Tiny()
    loader = DataLoader(_Same(batch), batch_size=None, collate_fn=lambda b: b)
    quiet.fit(model, loader, callbacks=[watch] if watch else [], max_steps=STEPS, limit_val_batches=0)
    return model


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(batch=structures(), opts=options)
def test_fuzzed_batches_never_break_a_fit(batch, opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = run(batch, None)
        watch = RangeWatch(**opts)
        try:
            got = run(batch, watch)
        except RangeMismatchError as e:
            assert opts["policy"] == "raise", e
            return
    assert got.losses == ref.losses
    bad = [f for f in watch.findings if f.kind == "internal"]
    assert not bad, [str(f) for f in bad]
