"""The engine's taps as a collaborator (rangewatch/engine/tapset.py), without Lightning or an engine: the taps a batch
and module tensors make, what their statistics hold (checked against numpy), a declared convention that does not fit,
validation taps, what cannot be watched, and a saved window resumed."""

from __future__ import annotations

import numpy as np
import torch

from helpers.photos import photo_batch
from rangewatch.engine.reporter import FindingsReporter
from rangewatch.engine.surroundings import Surroundings
from rangewatch.engine.tapset import TapSet
from rangewatch.expect.expectation import Expectation


def _tapset(expect=None, said=None):
    env = Surroundings(lambda level, text: (said if said is not None else []).append(text))
    rep = FindingsReporter("log", env)
    expect = expect or {}
    return TapSet(rep, env, expect.get, ["batch.latents"], {"enc:input": 3}), rep


def test_a_batch_makes_its_image_taps_with_per_channel_statistics():
    taps, _ = _tapset()
    x = photo_batch(4, 16).float() / 255  # [0, 1] photos, (4, 3, 16, 16)
    taps.detail = True
    taps.feed_batch({"image": x, "label": torch.arange(4), "latents": torch.randn(4, 4, 2, 2)}, "", None, ())
    assert sorted(taps.taps) == ["batch.image", "batch.latents"]  # declared latents are fed though not image-like
    s = taps.taps["batch.image"].stats.compute()
    ref = x.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(s.range_min.numpy(), ref.min(1)) and np.allclose(s.range_max.numpy(), ref.max(1))
    assert np.allclose(s.mean.numpy(), ref.mean(1), atol=1e-6)
    assert taps.taps["batch.image"].fed and taps.taps["batch.image"].channel_dim == 1


def test_declared_latents_in_a_batch_keep_their_channel_axis_over_steps():
    """A declared path that is not image-like (16-channel latents under a key find_images does not take, read as
    (N, T, C, H, W)): its channels found on dim 2 at the first batch, and every later batch counted into the same
    per-channel statistics (numpy reference)."""
    exp = Expectation("sd3_latent", "declared in RangeWatch(expect={'batch.z': 'sd3_latent'})", "declared", "batch")
    env = Surroundings(lambda level, text: None)
    taps = TapSet(FindingsReporter("log", env), env, {"batch.z": exp}.get, ["batch.z"], {})
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(2, 3, 16, 4, 4, generator=g) for _ in range(3)]
    for z in zs:
        taps.feed_batch({"z": z}, "", None, ())
    assert list(taps.taps) == ["batch.z"]
    tap = taps.taps["batch.z"]
    assert tap.channel_dim == 2 and not tap.disabled
    s = tap.stats.compute()
    ref = np.concatenate([z.numpy().transpose(2, 0, 1, 3, 4).reshape(16, -1) for z in zs], axis=1)
    assert s.count.tolist() == [ref.shape[1]] * 16
    assert np.allclose(s.min.numpy(), ref.min(1)) and np.allclose(s.max.numpy(), ref.max(1))


def test_a_declared_convention_that_does_not_fit_is_a_finding_for_the_next_check():
    exp = Expectation("imagenet", "declared in RangeWatch(expect={'batch.image': 'imagenet'})", "declared", "batch")
    taps, _ = _tapset({"batch.image": exp})
    taps.feed("batch.image", torch.rand(2, 2, 8, 8), 1)  # 2 channels: ImageNet constants are for 1, 3 or 4
    [f] = taps.early
    assert (f.kind, f.where, f.observed, f.severity) == ("mismatch", "batch.image", "2 channels", "error")
    assert f.expected == "imagenet (1 channel, or 3 or 4 channels)"
    assert taps.taps["batch.image"].misfit and taps.taps["batch.image"].bounds is None  # watched without it


def test_module_tensors_validation_taps_and_tensors_that_cannot_be_watched():
    said = []
    taps, rep = _tapset(said=said)
    taps.on_module_tensor("enc:input", torch.rand(2, 3, 8, 8))
    assert taps.taps["enc:input"].channel_dim == 1  # the module's declared in_channels
    taps.phase, taps.validation = "val/", False
    taps.on_module_tensor("enc:input", torch.rand(2, 3, 8, 8))
    assert "val/enc:input" not in taps.taps  # validation forwards are not watched
    taps.validation = True
    taps.on_module_tensor("enc:input", torch.rand(2, 3, 8, 8))
    assert "val/enc:input" in taps.taps and taps.taps["enc:input"].stats.compute().count.sum() == 2 * 3 * 8 * 8  # the training tap: its own values only
    taps.phase = ""
    taps.on_module_tensor("ids:input", torch.arange(8).reshape(2, 4))
    taps.on_module_tensor("ids:input", torch.arange(8).reshape(2, 4))
    assert taps.taps["ids:input"].disabled and list(rep.notes) == ["ids:input"]  # said once
    assert rep.notes["ids:input"] == "ids:input carries a torch.int64 tensor of shape (2, 4): not image-like, not watched"
    taps.on_module_error("enc:input", RuntimeError("hook failed"))
    assert taps.taps["enc:input"].disabled and [f.kind for f in rep.log.findings] == ["internal"]


def test_a_saved_window_is_resumed_when_its_tap_is_first_seen_again():
    taps, _ = _tapset()
    taps.detail = True
    taps.feed("batch.image", torch.full((2, 3, 4, 4), -0.5), 1)
    taps.taps["batch.image"].steps_checked = 2
    saved = taps.state_dict()
    assert saved["batch.image"]["steps_checked"] == 2 and saved["batch.image"]["channel_dim"] == 1
    again, _ = _tapset()
    again.load(saved)
    assert again.taps == {} and list(again.pending) == ["batch.image"]
    again.detail = True
    again.feed("batch.image", torch.full((2, 3, 4, 4), 0.75), 1)
    s = again.taps["batch.image"].stats.compute()
    assert again.taps["batch.image"].steps_checked == 2 and again.pending == {}
    assert s.range_min.tolist() == [-0.5] * 3 and s.range_max.tolist() == [0.75] * 3  # both windows' values
    again.reset(again.taps["batch.image"])
    assert not again.taps["batch.image"].fed


def test_a_latent_tap_copies_its_preview_sample_at_check_steps_only():
    """Ordinary steps keep the preview sample the window already holds (no copy of the step's latents); a check step
    takes its own latents' first samples, which is what the latent preview of that check shows."""
    from rangewatch import Watch

    watch = Watch(expect={"latents": "sd15_latent"}, check_first_n=1, log_every_n_steps=3, policy="log",
                  watch_visualization=False, derive_expectations=False)
    gen = torch.Generator().manual_seed(0)
    held = []
    for step in range(7):
        check = watch.begin_step(step)
        z = torch.randn(2, 4, 8, 8, generator=gen) * 0.9  # SD latents after the 0.18215 factor: std about 1
        watch.tensor("latents", z)
        mon = watch.taps["latents:input"].latent
        last, k = mon.last, mon.preview_samples
        assert check == (step == 0 or step % 3 == 0)
        if check or len(held) == 0 or held[-1][0]:  # a check step, or the first latents after a check: copied
            np.testing.assert_array_equal(last.numpy(), z[:k].numpy())
            assert last.data_ptr() != z.data_ptr()  # a copy, not a view the loop could change
        else:  # an ordinary step: the sample held is kept, the same storage, not this step's latents
            assert last.data_ptr() == held[-1][1]
            assert not torch.equal(last, z[:k])
        held.append((check, last.data_ptr()))
        watch.end_step()
    watch.close()
