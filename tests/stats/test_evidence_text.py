"""Every kind of evidence sentence is true of the data: each is checked against data that has the property
(measured here with numpy) and data that does not."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from rangewatch import RangeStats, infer_convention

G = torch.Generator().manual_seed(0)


def _rand(*shape):
    return torch.rand(*shape, generator=G)


def eight_bit(x):
    return (x.clamp(0, 1) * 255).round() / 255


DATA = {
    # name: (tensor, exact piles on 0 and 1, values running up to the bounds, on the 8-bit grid)
    "rand": lambda: _rand(8, 3, 64, 64),  # min ~5e-6, max ~0.99997: dense up to 0 and 1, nothing exactly on them
    "clipped_8bit": lambda: eight_bit(_rand(8, 3, 64, 64) * 1.2 - 0.1),  # 8% of each channel clamped to 0 and to 1
    "narrow": lambda: _rand(8, 3, 64, 64) * 0.8 + 0.1,  # far from every bound
    "unclipped_8bit": lambda: eight_bit(_rand(8, 3, 64, 64) * 0.9 + 0.05),  # on the grid, not on a bound
}


def _unit_space(x):
    return x.permute(1, 0, 2, 3).reshape(3, -1).double().numpy()


def _exact_on_bounds(v):
    """Per channel and bound: values exactly on 0 / 1 (float32 rounding aside)."""
    return [(int((np.abs(c) < 2e-6).sum()), int((np.abs(c - 1) < 2e-6).sum())) for c in v]


@pytest.mark.parametrize("name", list(DATA))
def test_exactly_on_the_bounds_only_when_values_are_exactly_there(name):
    x = DATA[name]()
    inf = infer_convention(x)
    v = _unit_space(x)
    exact = _exact_on_bounds(v)
    claims_exact = "sit exactly on" in inf.evidence
    claims_clipping = "clipped" in inf.evidence
    has_piles = sum(a >= 3 for a, b in exact) + sum(b >= 3 for a, b in exact)
    if claims_exact:
        m = re.search(r"(\d+) of 6 per-channel bounds \(([^)]*)\) hold values that sit exactly on", inf.evidence)
        n = int(m.group(1))
        assert n <= has_piles, (n, exact, inf.evidence)
        named = re.findall(r"channel (\d) (min|max)", m.group(2))  # each bound it names holds a pile there
        assert named and all(exact[int(i)][side == "max"] >= 3 for i, side in named), (named, exact, inf.evidence)
    else:
        assert not claims_clipping, inf.evidence
    if name == "rand":  # the case in the issue: min 5e-06, max 0.99997
        assert has_piles == 0 and not claims_exact and not claims_clipping, inf.evidence
        assert "run densely up to the [0,1] bounds" in inf.evidence and inf.name == "unit"
        assert v.min() > 0 and v.max() < 1  # "none lie beyond" is true
    if name == "clipped_8bit":
        assert has_piles == 6 and claims_exact, inf.evidence


@pytest.mark.parametrize("name", list(DATA))
def test_running_up_to_a_bound_is_said_only_when_nothing_lies_beyond_and_values_reach_it(name):
    x = DATA[name]()
    inf = infer_convention(x)
    v = _unit_space(x)
    if "run densely up to" in inf.evidence:
        assert (v >= 0).all() and (v <= 1).all()
        reach = [min(c.min(), 1 - c.max()) for c in v]
        assert min(reach) < 3 / 255, reach  # the values come within the band inside the bound
    if name == "narrow":
        assert "run densely up to" not in inf.evidence and "exactly on" not in inf.evidence, inf.evidence


@pytest.mark.parametrize("name", list(DATA))
def test_the_8bit_grid_share_is_the_measured_one(name):
    x = DATA[name]()
    inf = infer_convention(x)
    m = re.search(r"(\d+)% of the values map back onto the 8-bit grid k/255", inf.evidence)
    v = _unit_space(x).ravel() * 255
    on = float((np.abs(v - np.round(v)) < 0.02).mean())
    if name in ("clipped_8bit", "unclipped_8bit"):
        assert on == 1.0
    if m:
        assert abs(int(m.group(1)) / 100 - on) <= 0.02, (m.group(0), on)
    else:
        assert on < 0.5 or name == "unclipped_8bit" and inf.name != "unit", (name, on, inf.evidence)
    if name in ("rand", "narrow"):
        assert m is None


def test_the_share_outside_is_the_measured_one():
    x = eight_bit(_rand(8, 3, 64, 64)) * 2 - 1
    x[:, :, :2, :] = torch.randn(8, 3, 2, 64, generator=G) * 2  # noise past the bounds, as random erasing leaves
    inf = infer_convention(x)
    m = re.search(r"([\d.]+)% of the values lie outside them", inf.evidence)
    v = x.double().numpy()
    outside = float(((v < -1 - 0.02) | (v > 1 + 0.02)).mean())  # _SPILL_OUT in unit space, 0.02 in [-1, 1]
    if m:
        assert abs(float(m.group(1)) / 100 - outside) < 0.005, (m.group(0), outside)
    clean = infer_convention(eight_bit(_rand(8, 3, 64, 64)) * 2 - 1)
    assert "lie outside them" not in clean.evidence


def test_extremes_only_verdict_says_how_close_the_extremes_are():
    for x, near in ((_rand(4, 3, 32, 32), True), (_rand(4, 3, 32, 32) * 0.8 + 0.1, False)):
        st = RangeStats()
        st.update(x)
        inf = infer_convention(st.compute())  # a bare summary: extremes only
        lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
        hits = int((lo.abs() < 2.5e-4).sum() + ((hi - 1).abs() < 2.5e-4).sum())
        if "per-channel extremes lie within" in inf.evidence:
            n = int(re.search(r"(\d+) of 6 per-channel extremes lie within", inf.evidence).group(1))
            assert n == hits and near
        else:
            assert hits == 0 and not near
        assert "exactly" not in inf.evidence


# ------------------------------------------------------------------ a constant fill is no clipped floor
def _photo_like(seed: int, n: int = 8, size: int = 48) -> torch.Tensor:
    """Smooth 8-bit colour images in [0, 1] whose channels differ (gradients plus blobs)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        w = torch.rand(3, 3, generator=g)
        img = torch.stack([w[c, 0] * xx + w[c, 1] * yy + w[c, 2] * torch.sin(6 * xx * (c + 1)) for c in range(3)])
        img = (img - img.amin(dim=(1, 2), keepdim=True)) / (img.amax(dim=(1, 2), keepdim=True) - img.amin(dim=(1, 2), keepdim=True))
        out.append(img)
    return eight_bit(torch.stack(out))


def _erase_then_resize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """torchvision's RandomErasing(value=0) on the normalised tensor, then an antialiased bilinear resize."""
    from torchvision.transforms import v2 as T

    torch.manual_seed(seed)
    t = T.Compose([T.RandomErasing(p=1.0, value=0), T.Resize(32, antialias=True)])
    return torch.stack([t(img) for img in x])


@pytest.mark.parametrize("bs", [1, 8])
def test_bright_symmetric_data_with_an_erased_rectangle_is_not_called_unit(bs):
    # bright (high-key) content in [-1, 1]: nothing below 0.1, white clipped at 1; the erased rectangle puts exact
    # zeros in every channel and the resize a ramp from 0 up to the content: read as [0, 1] it has "piles" at 0 and 1
    for seed in range(6):
        bright = _photo_like(seed, bs) * 0.45 + 0.55
        bright[..., :6, :] = 1.0  # clipped highlights
        x = _erase_then_resize(eight_bit(bright) * 2 - 1, seed)
        v = _unit_space(x)
        assert v.min() == 0.0 and v.max() == 1.0  # the extremes that misled the verdict
        inf = infer_convention(x)
        assert not (inf.confident and inf.name != "symmetric"), inf
        assert "symmetric" in inf.compatible, inf


def test_clipped_unit_photos_stay_unit_and_channel_specific_piles_still_count():
    # [0, 1] photos whose channels clip at different pixels: the zeros are clipping, not a fill
    x = _photo_like(0, 8) * 1.2 - 0.1
    inf = infer_convention(eight_bit(x))
    assert inf.name == "unit" and inf.confident, inf
    assert "sit exactly on" in inf.evidence
    # the same photos after an erased rectangle and a resize: never confidently wrong
    y = _erase_then_resize(eight_bit(x), 0)
    got = infer_convention(y)
    assert not (got.confident and got.name != "unit"), got
