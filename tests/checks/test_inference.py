"""Convention inference on the real photos scikit-image ships, through real torchvision transforms."""

import random

import pytest
import torch
from torchvision.transforms import v2

from helpers.photos import all_names, as_tensor
from rangewatch import get_convention, infer_convention

CONVS = ["uint8", "float255", "unit", "symmetric", "imagenet", "clip"]


def apply(conv: str, t: torch.Tensor) -> torch.Tensor:
    """torchvision's own transforms with the catalogue's constants: CHW uint8 -> the convention."""
    if conv == "uint8":
        return t
    if conv == "float255":
        return v2.ToDtype(torch.float32, scale=False)(t)
    u = v2.ToDtype(torch.float32, scale=True)(t)
    if conv == "unit":
        return u
    c = get_convention(conv)
    ch = t.shape[0]
    return v2.Normalize(mean=list(c.mean_for(ch)), std=list(c.std_for(ch)))(u)


def samples(kind: str, x: torch.Tensor, rng: random.Random):
    if kind == "whole":
        yield x
    elif kind == "crop":
        h, w = x.shape[-2:]
        for _ in range(8):
            s = rng.randint(16, min(h, w))
            i, j = rng.randint(0, h - s), rng.randint(0, w - s)
            yield x[..., i : i + s, j : j + s]
    else:  # bicubic resizing of the normalised tensor, as loaders do; overshoots the bounds
        h, w = x.shape[-2:]
        for f in (0.5, 1.7):
            yield v2.functional.resize(x, [int(h * f), int(w * f)], interpolation=v2.InterpolationMode.BICUBIC, antialias=False)


@pytest.fixture(scope="module")
def table():
    rng = random.Random(0)
    out = {}
    for conv in CONVS:
        for kind in ("whole", "crop", "resize"):
            ok = n = conf_wrong = conf = top2 = 0
            for name in all_names():
                x = apply(conv, as_tensor(name, 4096 if kind == "whole" else 384))
                for s in samples(kind, x, rng):
                    inf = infer_convention(s[None], channel_dim=1)
                    n += 1
                    ok += inf.name == conv
                    conf += inf.confident
                    conf_wrong += inf.confident and inf.name != conv
                    top2 += conv in [c for c, _ in inf.candidates[:2]] or inf.name == conv
            out[conv, kind] = dict(n=n, top1=ok / n, confident=conf / n, confident_wrong=conf_wrong / n, top2=top2 / n)
    return out


@pytest.mark.slow  # the whole-photo sweep (every photo at full size, every convention): minutes on 2 cores
def test_accuracy_table(table):
    total = sum(r["n"] for r in table.values())
    print(f"\nconvention inference on {total} real-photo samples (scikit-image), per convention:")
    print(f"{'convention':10s} {'kind':7s} {'n':>4s} {'top1':>6s} {'top2':>6s} {'confident':>9s} {'conf-wrong':>10s}")
    for (conv, kind), r in table.items():
        print(f"{conv:10s} {kind:7s} {r['n']:4d} {r['top1']:6.3f} {r['top2']:6.3f} {r['confident']:9.2f} {r['confident_wrong']:10.3f}")
    assert total >= 500
    for (conv, kind), r in table.items():
        if kind == "whole":
            assert r["top1"] >= 0.98, (conv, r)
        assert r["confident_wrong"] < 0.01, (conv, kind, r)


def test_grayscale_and_rgba_included():
    names = all_names()
    assert "logo" in names and any(as_tensor(n).shape[0] == 1 for n in names)
    assert as_tensor("logo").shape[0] == 4


@pytest.mark.parametrize("conv", ["unit", "symmetric", "imagenet", "clip", "float255"])
def test_evidence_names_the_bounds(conv):
    x = apply(conv, as_tensor("astronaut", 4096))[None]
    inf = infer_convention(x)
    assert inf.name == conv and inf.confident
    assert "sit exactly on" in inf.evidence
    lo = get_convention(conv).bounds(3)[0]
    assert f"{lo[0]:.3f}" in inf.evidence


def test_ambiguous_crop_is_not_confident():
    # a real photo squeezed into [0.3, 0.7]: as [0,1] data or as [-1,1] data, the values fit both
    u = v2.ToDtype(torch.float32, scale=True)(as_tensor("astronaut"))
    x = (u * 0.4 + 0.3)[None]
    inf = infer_convention(x)
    assert not inf.confident, inf
    top2 = [c for c, _ in inf.candidates[:2]]
    assert "unit" in top2 and "symmetric" in top2, inf.candidates


@pytest.mark.parametrize(
    "what,x",
    [
        ("standard normal noise", torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))),
        ("sd latent (unscaled)", torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1)) * 5.5),
        ("token ids", torch.randint(0, 49408, (8, 77))),
        ("a mask", torch.rand(2, 1, 16, 16) > 0.5),
        ("all NaN", torch.full((1, 3, 4, 4), float("nan"))),
    ],
)
def test_unknown_rather_than_guess(what, x):
    inf = infer_convention(x, channel_dim=1)
    assert inf.name == "unknown", (what, inf)
    assert not inf.confident


def test_empty_tensor():
    inf = infer_convention(torch.empty(0, 3, 8, 8))
    assert inf.name == "unknown" and "no values" in inf.evidence
