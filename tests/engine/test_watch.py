"""The engine, :class:`rangewatch.Watch`, driven directly as a hand-written loop drives it: no Lightning.

The model is a latent-diffusion training module the way diffusers' training scripts write one: a frozen
random-init ``diffusers.AutoencoderKL`` (``vae.encode(x).latent_dist.sample() * scaling_factor``) and a
trainable denoiser; the data are real photos (scikit-image) in [0, 1], which the VAE's metadata says
should be in [-1, 1] (diffusers' ``VaeImageProcessor`` maps [0, 1] to [-1, 1] before ``encode``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers.photos import photo_batch
from rangewatch import RangeMismatchError, Watch

diffusers = pytest.importorskip("diffusers")


class LatentTrainer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vae = diffusers.AutoencoderKL(
            block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
            latent_channels=4, norm_num_groups=8, sample_size=32,
        ).requires_grad_(False)
        self.unet = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(pixel_values).latent_dist.sample() * self.vae.config.scaling_factor
        return self.unet(z)


def unit_photos(n: int = 4, size: int = 32) -> torch.Tensor:
    return photo_batch(n, size).float() / 255


def watch(**kw) -> tuple[Watch, list[tuple[str, str]]]:
    said: list[tuple[str, str]] = []
    opts = dict(policy="log", watch_visualization=False, messages=lambda level, text: said.append((level, text)))
    return Watch(**{**opts, **kw}), said


def run(w: Watch, model: nn.Module, x: torch.Tensor, steps: int) -> list[list]:
    """The loop: begin_step, batch, forward, end_step; the findings each end_step returned."""
    out = []
    for step in range(steps):
        w.begin_step(step)
        w.batch({"pixel_values": x})
        model(x)
        out.append(w.end_step())
    return out


def test_unit_photos_into_the_vae_are_one_mismatch_at_the_first_check():
    model = LatentTrainer()
    w, said = watch(check_first_n=2, log_every_n_steps=4)
    w.attach(model)
    per_step = run(w, model, unit_photos(), 6)
    w.close()
    assert [[(f.kind, f.where, f.observed, f.expected) for f in fs] for fs in per_step] == [
        [("mismatch", "vae.encoder:input", "unit", "symmetric")], [], [], [], [], []]  # reported once
    (f,) = w.findings
    assert f.step == 0 and f.source.startswith("diffusers AutoencoderKL at vae") and "* 2 - 1" in f.fix
    assert w.expectations["vae.encoder:input"].origin == "model"
    assert {"batch.pixel_values", "vae.encoder:input"} <= set(w.taps)
    assert any("watching 2 taps" in text for _, text in said)


def test_photos_in_the_vae_range_give_no_finding():
    model = LatentTrainer()
    w, _ = watch(check_first_n=2)
    w.attach(model)
    assert run(w, model, unit_photos() * 2 - 1, 3) == [[], [], []]
    w.close()
    assert w.findings == [] and w.taps["vae.encoder:input"].inferred.name == "symmetric"


def test_check_steps_are_the_first_n_then_every_interval():
    w, _ = watch(check_first_n=2, log_every_n_steps=4, derive_expectations=False)
    x = unit_photos(2, 16)
    got = []
    for step in range(10):
        got.append(w.begin_step(step))
        w.batch(x)
        w.end_step()
    assert got == [True, True, False, False, True, False, False, False, True, False]  # steps 0, 1, then 4, 8
    assert w.train_batches == 10


def test_window_statistics_equal_numpy_and_restart_after_a_check():
    """A tap's window, read with summaries() before the step's check, against numpy float64; after the
    check the next window holds only the batches fed since (``moments_every_step``: mean and std between
    checks too)."""
    w, _ = watch(check_first_n=1, log_every_n_steps=3, derive_expectations=False, moments_every_step=True)
    x, y = unit_photos(4, 16), unit_photos(4, 16).flip(0) * 2 - 1
    for step, batch in enumerate([x, y, y]):  # checks at steps 0 and 3
        w.begin_step(step)
        w.batch({"image": batch})
        if step == 2:
            s = w.summaries()["batch.image"]
        w.end_step()
    ref = torch.cat([y, y]).double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)  # steps 1 and 2: channels first
    np.testing.assert_array_equal(s.count.numpy(), np.full(3, ref.shape[1]))
    np.testing.assert_array_equal(s.min.double().numpy(), ref.min(axis=1))
    np.testing.assert_array_equal(s.max.double().numpy(), ref.max(axis=1))
    np.testing.assert_allclose(s.mean.double().numpy(), ref.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.std.double().numpy(), ref.std(axis=1), rtol=1e-4)


def test_tensor_taps_and_policy_raise():
    """A tensor handed over by name, declared ``sdxl_latent``, scaled twice: policy="raise" stops the
    loop at the check with the finding."""
    w, _ = watch(expect={"latents": "sdxl_latent"}, policy="raise", check_first_n=1, derive_expectations=False)
    z = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.13025  # unit std scaled again
    w.begin_step(0)
    w.tensor("latents", z, channel_dim=1)
    with pytest.raises(RangeMismatchError) as err:
        w.end_step()
    (f,) = err.value.findings
    assert (f.kind, f.where) == ("latent_scale", "latents:input") and "twice" in f.observed, f
    assert f in w.findings


def test_watching_changes_no_output_and_draws_no_random_number():
    x = unit_photos()
    ref_model = LatentTrainer()
    torch.manual_seed(5)
    ref = [ref_model(x) for _ in range(3)]
    ref_rng = torch.get_rng_state()
    model = LatentTrainer()
    w, _ = watch(check_first_n=2)
    w.attach(model)
    torch.manual_seed(5)
    got = []
    for step in range(3):
        w.begin_step(step)
        w.batch({"pixel_values": x})
        got.append(model(x))
        w.end_step()
    assert torch.equal(torch.get_rng_state(), ref_rng)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    w.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # close takes every hook off
