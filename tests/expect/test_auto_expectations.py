"""RangeWatch() with no expect=: expectations read from real diffusers / timm / transformers objects
and from the data loaders' torchvision transforms, under real Trainer runs."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from helpers import fit as quiet
from helpers.models import LibraryModules
from helpers.photos import PhotoSet, photo_batch
from rangewatch import RangeWatch, get_convention

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not

TINY_VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8)


def tiny_vae():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.AutoencoderKL(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=8, sample_size=32,
    )


def unit_photos(n=4, size=32):
    return photo_batch(n, size).float() / 255


def Pipeline(mods: dict[str, nn.Module], norms: dict[str, str]) -> LibraryModules:
    """Real library modules; each gets the [0,1] ``batch[0]`` through its own normalisation (``norms``)."""
    return LibraryModules({k: mods[k] for k in norms}, key=0, prep=lambda k, u: get_convention(norms[k]).from_unit(u))


def fit(model, x, **kw):
    w = RangeWatch(policy="log", **kw)
    quiet.fit(model, DataLoader(TensorDataset(x), batch_size=len(x)), callbacks=[w], max_steps=1)
    return w


def mismatches(w):
    return {f.where: f for f in w.findings if f.kind == "mismatch"}


def test_autoencoderkl_unit_input_flagged_without_expect():
    w = fit(Pipeline({"vae": tiny_vae()}, {"vae": "unit"}), unit_photos())
    m = mismatches(w)
    assert set(m) == {"vae.encoder:input"}
    f = m["vae.encoder:input"]
    assert (f.observed, f.expected) == ("unit", "symmetric")
    assert "x * 2 - 1" in f.fix and "AutoencoderKL" in f.source


def test_autoencoderkl_symmetric_input_silent():
    w = fit(Pipeline({"vae": tiny_vae()}, {"vae": "symmetric"}), unit_photos())
    assert mismatches(w) == {}
    assert w.expectations["vae.encoder:input"].origin == "model"


def test_timm_backbone_clip_input_flagged():
    timm = pytest.importorskip("timm")
    w = fit(Pipeline({"backbone": timm.create_model("resnet18", pretrained=False)}, {"backbone": "clip"}), unit_photos())
    f = mismatches(w)["backbone:input"]
    assert (f.observed, f.expected) == ("clip", "imagenet")
    assert "pretrained_cfg" in f.source
    w = fit(Pipeline({"backbone": timm.create_model("resnet18", pretrained=False)}, {"backbone": "imagenet"}), unit_photos())
    assert mismatches(w) == {}


def test_derivation_can_be_turned_off():
    w = fit(Pipeline({"vae": tiny_vae()}, {"vae": "unit"}), unit_photos(), derive_expectations=False)
    assert mismatches(w) == {} and w.expectations == {}


def test_declared_expectation_wins():
    w = fit(Pipeline({"vae": tiny_vae()}, {"vae": "unit"}), unit_photos(), expect={"vae.encoder": "unit"})
    assert mismatches(w) == {}


@pytest.mark.parametrize(
    "norms,flagged",
    [
        ({"vae": "symmetric", "image_encoder": "clip", "dino": "imagenet"}, set()),
        ({"vae": "symmetric", "image_encoder": "imagenet", "dino": "clip"}, {"image_encoder:input", "dino:input"}),
        ({"vae": "clip", "image_encoder": "symmetric", "dino": "imagenet"}, {"vae.encoder:input", "image_encoder:input"}),
    ],
)
def test_multi_norm_with_real_encoders(norms, flagged):
    timm = pytest.importorskip("timm")
    tr = pytest.importorskip("transformers")
    mods = {
        "vae": tiny_vae(),
        "image_encoder": tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(**TINY_VIT)),
        "dino": timm.create_model("resnet18", pretrained=False),
    }
    w = fit(Pipeline(mods, norms), unit_photos())
    assert set(mismatches(w)) == flagged
    assert {k: e.convention for k, e in w.expectations.items()} == {
        "vae.encoder:input": "symmetric", "vae.decoder:output": "symmetric", "image_encoder:input": "clip", "dino:input": "imagenet",
    }


def fit_loader(model, ds, **kw):
    w = RangeWatch(policy="log", **kw)
    quiet.fit(model, DataLoader(ds, batch_size=4), callbacks=[w], max_steps=1)
    return w


class Direct(LibraryModules):
    """Feeds the batch straight into the VAE."""

    def __init__(self):
        super().__init__({"vae": tiny_vae()}, key=None)


def test_transform_prediction_warns_before_step_0():
    from torchvision import transforms as T

    w = fit_loader(Direct(), PhotoSet(T.Compose([T.ToTensor()])))
    early = [f for f in w.findings if f.where == "train dataloader -> vae.encoder:input"]
    assert len(early) == 1 and early[0].step == 0 and early[0].severity == "info"
    assert (early[0].observed, early[0].expected) == ("unit", "symmetric") and "ToTensor" in early[0].evidence
    # and the batches confirm it at the encoder
    assert "vae.encoder:input" in mismatches(w)


def test_transform_prediction_disagrees_with_batches():
    # a Lambda hidden inside a nested Compose after a visible Normalize: the inspection predicts [-1,1]
    # only if it trusts the Normalize; here the Lambda undoes it and the batches show [0,1]
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])

    class Sneaky(Dataset):
        def __init__(self):
            self.inner = PhotoSet(pipeline)
            self.transform = pipeline

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (self.inner[i] + 1) / 2  # a step the inspection cannot see

    w = fit_loader(Direct(), Sneaky())
    assert w.engine.loader_expectations["train"].convention == "symmetric"
    f = mismatches(w)["batch"]
    assert (f.observed, f.expected) == ("unit", "symmetric") and "Normalize" in f.source


def test_gpu_side_preprocessing_is_not_a_false_mismatch():
    class OnDevice(Direct):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch.float() / 127.5 - 1  # uint8 -> [-1,1] after the loader, as GPU pipelines do

    w = fit_loader(OnDevice(), PhotoSet(v2.Compose([v2.ToImage()])))
    assert w.engine.loader_expectations == {}
    assert mismatches(w) == {}


def test_image_processor_given_by_the_user_wins():
    tr = pytest.importorskip("transformers")
    enc = tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(**TINY_VIT))
    proc = tr.SiglipImageProcessor()  # 0.5/0.5: this encoder is fed [-1,1]
    w = fit(Pipeline({"image_encoder": enc}, {"image_encoder": "symmetric"}), unit_photos(), image_processors={"image_encoder": proc})
    assert w.expectations["image_encoder:input"].convention == "symmetric"
    assert mismatches(w) == {}
    w = fit(Pipeline({"image_encoder": enc}, {"image_encoder": "symmetric"}), unit_photos())
    assert set(mismatches(w)) == {"image_encoder:input"}  # the CLIP default says clip
