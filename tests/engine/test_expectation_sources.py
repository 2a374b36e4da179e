"""The engine's expectation sources as a collaborator (rangewatch/engine/expectations.py), without Lightning or an
engine: declared keys as tap names, which expectation applies to a tap, the model's metadata (a real diffusers VAE,
random init), a tensor named as latents bound to that VAE, and a loader prediction that contradicts a module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from rangewatch.engine.expectations import ExpectationSources, tap_name_for_key
from rangewatch.engine.reporter import FindingsReporter
from rangewatch.engine.surroundings import Surroundings


def _sources(expect, said=None):
    env = Surroundings(lambda level, text: (said if said is not None else []).append(text))
    rep = FindingsReporter("log", env)
    return ExpectationSources(expect, rep, env), rep


def test_declared_keys_become_tap_names_and_validation_taps_share_them():
    assert [tap_name_for_key(k) for k in ("batch.image", "val/batch.image", "vae.encoder", "unet:output")] == [
        "batch.image", "val/batch.image", "vae.encoder:input", "unet:output"]
    src, _ = _sources({"batch.image": "symmetric", "vae.encoder": "unit", "unet:output": "symmetric"})
    assert {k: (e.convention, e.origin, e.target) for k, e in src.expectations.items()} == {
        "batch.image": ("symmetric", "declared", "batch"),
        "vae.encoder:input": ("unit", "declared", "input"),
        "unet:output": ("symmetric", "declared", "output"),
    }
    assert src.for_tap("val/batch.image") is src.expectations["batch.image"]
    assert src.for_tap("val/vae.encoder:input") is src.expectations["vae.encoder:input"]
    assert src.for_tap("batch.mask") is None and src.for_tap("other:input") is None
    assert src.hooked_sides({"batch.image": "symmetric", "vae.encoder": "unit"}, ["unet"]) == {
        "vae.encoder": {"input"}, "unet": {"input", "output"}}


def test_a_loader_prediction_that_contradicts_a_module_input_is_a_finding():
    torchvision = pytest.importorskip("torchvision")
    from torchvision import transforms as T

    said = []
    src, _ = _sources({"net.stem": "imagenet"}, said)
    data = torchvision.datasets.FakeData(size=2, image_size=(3, 16, 16),
                                         transform=T.Compose([T.ToTensor(), T.Normalize(0.5, 0.5)]))  # [-1, 1]
    [f] = src.predict_loaders(DataLoader(data, batch_size=2))
    assert (f.kind, f.where, f.observed, f.expected, f.severity) == (
        "mismatch", "train dataloader -> net.stem:input", "symmetric", "imagenet", "info")
    assert src.loader["train"].convention == "symmetric" and src.loader_noise["train"] == 0.0
    assert src.for_tap("batch.image") is src.loader["train"] and src.for_tap("val/batch.image") is None
    assert said == ["rangewatch loader predictions: train: symmetric (" + src.loader["train"].source + ")"]


def test_the_vae_metadata_is_read_once_and_binds_a_tensor_named_latents():
    diffusers = pytest.importorskip("diffusers")

    class Trainer(nn.Module):  # as training scripts hold them: a frozen VAE beside the trained net
        def __init__(self):
            super().__init__()
            self.vae = diffusers.AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                               up_block_types=("UpDecoderBlock2D",), latent_channels=4,
                                               norm_num_groups=8, sample_size=32)
            self.net = nn.Conv2d(4, 4, 3, padding=1)

    said = []
    src, rep = _sources({"vae.encoder": "unit"}, said)  # declared wins over the VAE's own [-1, 1]
    model = Trainer()
    src.derive(model)
    assert src.expectations["vae.encoder:input"].origin == "declared"
    assert src.expectations["vae.decoder:output"].convention == "symmetric" and src.derived_keys == {"vae.decoder:output"}
    assert set(src.vae_latents) == {"vae"} and src.derived_names() == {"vae.decoder"}
    src.derived_keys.clear()
    src.derive(model)  # once per fit
    assert src.derived_keys == set()
    assert src.bind_latent("latents:input", torch.zeros(2, 4, 8, 8)) == 1
    assert src.expectations["latents:input"].convention == "sd15_latent"
    assert "for the tensor named 'latents'" in src.expectations["latents:input"].source
    assert src.bind_latent("noise:input", torch.zeros(2, 4, 8, 8)) is None  # not a latents name
    assert src.bind_latent("model_input:input", torch.zeros(2, 64, 16)) is None  # packed tokens: said, not guessed
    assert "packed token latents must be unpacked first" in rep.notes["latents model_input:input"]
