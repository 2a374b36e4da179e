"""Reading data registers nothing: a loader's ``Normalize(mean=0.3, std=0.2)`` (constants that match no
catalogue entry) is carried as a :class:`~rangewatch.expect.conventions.Convention` on the prediction and
the expectation, and the verdicts are what a registered name gave: the data-vs-model mismatch at the VAE
encoder names the Normalize constants in its fix."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import rangewatch
from helpers.photos import PhotoSet


def tiny_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=8, sample_size=32,
    ).eval()


def test_custom_normalize_in_a_loader_registers_nothing_and_keeps_the_verdict():
    before = rangewatch.list_conventions()
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.3] * 3, [0.2] * 3)])
    loader = DataLoader(PhotoSet(pipeline), batch_size=4)
    vae = tiny_vae()
    w = rangewatch.watch(vae=vae, policy="log", watch_visualization=False, check_first_n=2)
    w.predict_loaders(loader)
    for _ in range(2):
        for batch in loader:
            w.batch(batch)
            with torch.no_grad():
                vae.encode(batch)
            w.step()
    state = w.state_dict()
    w.close()
    assert rangewatch.list_conventions() == before  # nothing registered
    loader_exp = w.loader_expectations["train"]
    # the carried convention is the Normalize itself: x = (u - 0.3) / 0.2, so [0, 1] spans [-1.5, 3.5]
    assert loader_exp.convention == "norm_m0p3_s0p2"
    lo, hi = loader_exp.conv.bounds(3)
    assert lo == pytest.approx((-1.5,) * 3) and hi == pytest.approx((3.5,) * 3)
    found = {f.where: f for f in w.findings if f.kind == "mismatch"}
    early = found["train dataloader -> vae.encoder:input"]
    assert (early.observed, early.expected) == ("norm_m0p3_s0p2", "symmetric")
    assert "Normalize(mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])" in early.fix
    at_encoder = found["vae.encoder:input"]
    assert (at_encoder.observed, at_encoder.expected, at_encoder.severity) == ("norm_m0p3_s0p2", "symmetric", "error")
    assert "Normalize(mean=[0.3, 0.3, 0.3], std=[0.2, 0.2, 0.2])" in at_encoder.fix
    assert "batch" not in found  # the batches follow the loader's own (carried) convention
    assert w.taps["batch"].inferred.name == "norm_m0p3_s0p2"
    assert state["taps"]["batch"]["bounds"] == "norm_m0p3_s0p2"  # saved by name


def test_a_resumed_window_counts_against_the_carried_convention():
    """A saved window names its bounds; on resume the name is the loader's carried (unregistered) convention."""
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.3] * 3, [0.2] * 3)])
    loader = DataLoader(PhotoSet(pipeline), batch_size=4)
    w = rangewatch.watch(policy="log", watch_visualization=False, check_first_n=1, log_every_n_steps=100)
    w.predict_loaders(loader)
    batch = next(iter(loader))
    w.batch(batch)
    w.step()
    w.batch(batch)  # an open window: saved with the state
    state = w.state_dict()
    w.close()
    again = rangewatch.watch(policy="log", watch_visualization=False, check_first_n=1, log_every_n_steps=100)
    again.predict_loaders(loader)
    again.load_state_dict(state)
    again.batch(batch)
    again.step()
    assert not any("cannot be read" in n for n in again.notes), again.notes
    bounds = again.taps["batch"].stats.bounds
    assert bounds.name == "norm_m0p3_s0p2" and bounds.mean == (0.3,) * 3 and bounds.std == (0.2,) * 3
    again.close()
