"""predict_transform / predict_dataset on real pipelines, each checked by running it on a real photo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.datasets import VisionDataset
from torchvision.transforms import v2

from helpers.photos import photo
from rangewatch.expect.conventions import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, get_convention, list_conventions
from rangewatch.expect.transforms import Prediction, convention_for_normalize, predict_dataset, predict_transform




def pil(name: str = "astronaut", side: int = 96) -> Image.Image:
    img = Image.fromarray(photo(name))
    return img.resize((side, side), Image.BILINEAR)


def as_chw(out) -> torch.Tensor:
    if isinstance(out, Image.Image):
        out = torch.from_numpy(np.asarray(out)).permute(2, 0, 1)
    if hasattr(out, "pixel_values"):  # transformers BatchFeature
        out = out["pixel_values"]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    out = out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
    while out.dim() > 3:
        out = out[0]
    return out


def check_runs_in(out, name, tol: float = 0.02) -> None:
    """The pipeline's real output sits inside the per-channel bounds of ``name`` (or the convention itself) and uses most of them."""
    x = as_chw(out)
    conv = get_convention(name)
    if conv.integer:
        assert x.dtype == torch.uint8, f"{name} predicted, got {x.dtype}"
    else:
        assert x.is_floating_point(), f"{name} predicted, got {x.dtype}"
    x = x.double()
    lo, hi = conv.bounds(x.shape[0])
    cmin, cmax = x.amin(dim=(1, 2)), x.amax(dim=(1, 2))
    for c in range(x.shape[0]):
        span = hi[c] - lo[c]
        assert cmin[c] >= lo[c] - tol * span, f"channel {c}: min {cmin[c]:.4f} below {name} bound {lo[c]:.4f}"
        assert cmax[c] <= hi[c] + tol * span, f"channel {c}: max {cmax[c]:.4f} above {name} bound {hi[c]:.4f}"
    # and the photo (pixels at 0 and 255) nearly reaches both ends (colour jitter may pull them in a bit):
    # data in a narrower convention read in a wider one would leave a third or more of the range unused
    u_lo = min((cmin[c] - lo[c]) / (hi[c] - lo[c]) for c in range(x.shape[0]))
    u_hi = max((cmax[c] - lo[c]) / (hi[c] - lo[c]) for c in range(x.shape[0]))
    assert u_lo <= 0.2 and u_hi >= 0.8, f"output [{cmin.min():.3f}, {cmax.max():.3f}] does not fill {name} bounds {lo}..{hi}"


# ---------------------------------------------------------------------------- torchvision pipelines
def _pipelines():
    yield "v1 imagenet", T.Compose([T.Resize(80), T.CenterCrop(64), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), "imagenet"
    yield "v1 ToTensor", T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]), "unit"
    yield "v1 vae [-1,1]", T.Compose([T.Resize(64), T.ToTensor(), T.Normalize([0.5], [0.5])]), "symmetric"
    yield "v2 clip", v2.Compose([v2.ToImage(), v2.Resize(64, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]), "clip"
    yield "v2 dict dtype", v2.Compose([v2.ToImage(), v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]), "unit"
    yield "v2 no scale", v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)]), "float255"
    yield "v2 uint8", v2.Compose([v2.RandomHorizontalFlip(), v2.ToImage(), v2.RandomCrop(64)]), "uint8"
    yield "nested + RandomApply", T.Compose(
        [
            T.Compose([T.Resize(72), T.RandomApply([T.ColorJitter(0.2, 0.2), T.GaussianBlur(3)], p=0.5), T.CenterCrop(64)]),
            T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]),
        ]
    ), "symmetric"
    yield "RandomChoice crops", T.Compose([T.RandomChoice([T.CenterCrop(64), T.RandomCrop(64)]), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), "imagenet"
    yield "RandomOrder + rounded clip", T.Compose(
        [
            T.RandomOrder([T.RandomHorizontalFlip(), T.RandomVerticalFlip()]),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize([0.481, 0.458, 0.408], [0.269, 0.261, 0.276]),
        ]
    ), "clip"
    yield "Normalize twice", T.Compose([T.ToTensor(), T.Normalize(0.5, 0.5), T.Normalize(-1.0, 2.0)]), "unit"
    yield "0-255 constants", v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32), v2.Normalize([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])]), "imagenet"
    yield "v2 nested RandomApply colour", v2.Compose(
        [v2.ToImage(), v2.RandomApply([v2.ColorJitter(0.3), v2.RandomGrayscale(0.2)], p=0.8), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    ), "symmetric"
    yield "Lambda before ToTensor", T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), "imagenet"
    yield "ToPILImage round trip", T.Compose([T.ToTensor(), T.ToPILImage(), T.PILToTensor()]), "uint8"


PIPELINES = list(_pipelines())


@pytest.mark.parametrize("label,pipeline,expected", PIPELINES, ids=[p[0] for p in PIPELINES])
def test_torchvision_pipeline_prediction_matches_real_output(label, pipeline, expected):
    pred = predict_transform(pipeline, where="dataset.transform")
    assert pred.convention == expected, (pred, pred.steps)
    assert "in dataset.transform" in pred.source
    assert pred.steps
    torch.manual_seed(0)
    check_runs_in(pipeline(pil()), pred.convention)


def test_at_least_ten_pipelines():
    assert len(PIPELINES) >= 10


def test_source_names_the_constants():
    pred = predict_transform(PIPELINES[0][1], where="dataset.transform")
    assert pred.source == "ToTensor() -> Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) in dataset.transform"
    exp = pred.expectation()
    assert exp is not None and exp.origin == "transform" and exp.target == "batch" and exp.convention == "imagenet"


def test_rounded_constants_note():
    pred = predict_transform(dict(PIPELINES_BY_LABEL)["RandomOrder + rounded clip"])
    assert pred.convention == "clip"
    assert any("after rounding" in n for n in pred.notes)


PIPELINES_BY_LABEL = [(p[0], p[1]) for p in PIPELINES]


def test_lambda_after_tensor_is_unknown_and_said_so():
    pipeline = T.Compose([T.ToTensor(), T.Lambda(lambda x: x * 2 - 1)])
    pred = predict_transform(pipeline, where="dataset.transform")
    assert pred.convention == "unknown" and not pred.known and pred.expectation() is None
    assert any("Lambda" in n and "cannot see what it does" in n and "dataset.transform" in n for n in pred.notes)
    # rightly so: ignoring the Lambda would have said "unit", the real output is [-1, 1]
    check_runs_in(pipeline(pil()), "symmetric")


def test_lambda_before_tensor_conversion_is_noted_as_assumption():
    pred = predict_transform(dict(PIPELINES_BY_LABEL)["Lambda before ToTensor"])
    assert pred.convention == "imagenet"
    assert any("assumed ToTensor()" in n for n in pred.notes)
    assert pred.source.startswith("ToTensor()")  # the Lambda did not decide anything


def test_random_apply_of_a_value_change_is_unknown():
    pipeline = T.Compose([T.ToTensor(), T.RandomApply([T.Normalize(0.5, 0.5)], p=0.5)])
    pred = predict_transform(pipeline)
    assert pred.convention == "unknown"
    assert any("only some samples" in n for n in pred.notes)
    outs = {tuple(round(v, 2) for v in (as_chw(pipeline(pil())).min().item(),)) for _ in range(20)}
    assert len(outs) == 2  # really two conventions in one dataset


def test_random_choice_disagreeing_is_unknown():
    pred = predict_transform(T.Compose([T.ToTensor(), T.RandomChoice([T.Normalize(0.5, 0.5), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])]))
    assert pred.convention == "unknown"
    assert any("RandomChoice" in n for n in pred.notes)


def test_custom_normalize_carries_a_shared_convention():
    before = list_conventions()
    mean, std = (0.2, 0.3, 0.4), (0.25, 0.2, 0.3)
    pipeline = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    pred = predict_transform(pipeline)
    assert pred.convention == "norm_m0p2-0p3-0p4_s0p25-0p2-0p3"
    assert any("custom convention norm_m0p2-0p3-0p4_s0p25-0p2-0p3" in n for n in pred.notes)
    conv = pred.conv  # carried on the prediction (and its expectation), not registered
    assert conv.mean == mean and conv.std == std and pred.expectation().conv is conv
    assert list_conventions() == before
    check_runs_in(pipeline(pil()), conv)
    # the same constants elsewhere get the same name
    assert convention_for_normalize(mean, std, source="x")[0] == pred.convention


def test_unknown_callable_is_unknown():
    class Brighten:
        def __call__(self, x):
            return x * 1.5

    pred = predict_transform(T.Compose([T.ToTensor(), Brighten()]))
    assert pred.convention == "unknown"
    assert any("Brighten" in n for n in pred.notes)


def test_normalize_on_uint8_is_flagged():
    pred = predict_transform(v2.Compose([v2.ToImage(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    assert pred.convention == "unknown"
    assert any("integer" in n and "imagenet" in n for n in pred.notes)


def test_none_transform():
    assert predict_transform(None).convention == "unknown"


# ---------------------------------------------------------------------------- datasets
class PhotoDataset(VisionDataset):
    """A real (tiny) torchvision dataset over scikit-image photos."""

    def __init__(self, names=("astronaut", "coffee", "rocket"), transform=None, transforms=None):
        super().__init__(root="", transform=transform, transforms=transforms)
        self.names = list(names)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        img = pil(self.names[i])
        if self.transforms is not None:
            img, _ = self.transforms(img, 0)
        return img


class Wrapped(torch.utils.data.Dataset):
    """A wrapper applying its own transform on top of the wrapped dataset's output."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.transform(self.dataset[i])


IMNET = T.Compose([T.Resize(64), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_dataset_transform():
    ds = PhotoDataset(transform=IMNET)
    pred = predict_dataset(ds)
    assert pred is not None and pred.convention == "imagenet"
    assert pred.source.endswith("in dataset.transform")
    check_runs_in(ds[0], "imagenet")


def test_subset_and_dataloader():
    ds = Subset(PhotoDataset(transform=IMNET), [0, 2])
    pred = predict_dataset(ds)
    assert pred.convention == "imagenet" and "dataset.dataset.transform" in pred.source
    dl = DataLoader(ds, batch_size=2)
    pred2 = predict_dataset(dl)
    assert pred2.convention == "imagenet"
    check_runs_in(next(iter(dl)), "imagenet")


def test_lightning_combined_loader():
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.utilities import CombinedLoader

    a = DataLoader(PhotoDataset(transform=IMNET), batch_size=2)
    b = DataLoader(Subset(PhotoDataset(transform=IMNET), [1]), batch_size=1)
    pred = predict_dataset(CombinedLoader({"a": a, "b": b}, "max_size_cycle"), where="trainer.train_dataloader")
    assert pred.convention == "imagenet" and "trainer.train_dataloader[0].dataset.transform" in pred.source


def test_concat_agreeing_and_disagreeing():
    vae = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize(0.5, 0.5)])
    vae_v2 = v2.Compose([v2.ToImage(), v2.Resize(64), v2.CenterCrop(64), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    ok = ConcatDataset([PhotoDataset(transform=vae), PhotoDataset(["chelsea"], transform=vae_v2)])
    pred = predict_dataset(ok)
    assert pred.convention == "symmetric"
    check_runs_in(ok[0], "symmetric")
    bad = ConcatDataset([PhotoDataset(transform=vae), PhotoDataset(transform=T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor()]))])
    pred = predict_dataset(bad)
    assert pred.convention == "unknown"
    assert any("disagree" in n for n in pred.notes)
    # and they really do disagree
    assert as_chw(bad[0]).min() < -0.5 and as_chw(bad[3]).min() >= 0


def test_joint_transforms_and_standard_transform():
    ds = PhotoDataset(transforms=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    assert predict_dataset(ds).convention == "unit"
    check_runs_in(ds[0], "unit")
    ds2 = PhotoDataset(transform=T.ToTensor())  # VisionDataset wraps it in a StandardTransform
    assert predict_dataset(ds2).convention == "unit"


def test_wrapper_transform_runs_after_inner():
    ds = Wrapped(PhotoDataset(transform=T.Compose([T.Resize(64), T.ToTensor()])), T.Normalize(CLIP_MEAN, CLIP_STD))
    pred = predict_dataset(ds)
    assert pred.convention == "clip", pred.steps
    check_runs_in(ds[0], "clip")


def test_dataset_without_transform():
    assert predict_dataset(PhotoDataset()) is None
    assert predict_dataset(torch.utils.data.TensorDataset(torch.zeros(2, 3))) is None


def test_lightning_datamodule():
    L = pytest.importorskip("lightning.pytorch")

    class DM(L.LightningDataModule):
        def __init__(self, val_transform):
            super().__init__()
            self.train_dataset = PhotoDataset(transform=T.Compose([T.RandomResizedCrop(64), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(0.5, 0.5)]))
            self.val_dataset = PhotoDataset(transform=val_transform)

    good = DM(T.Compose([T.Resize(64), T.ToTensor(), T.Normalize(0.5, 0.5)]))
    pred = predict_dataset(good)
    assert pred.convention == "symmetric" and "train_dataset" in pred.source
    bad = DM(T.Compose([T.Resize(64), T.ToTensor()]))
    pred = predict_dataset(bad)
    assert pred.convention == "unknown" and any("val_dataset" in n for n in pred.notes)


# ---------------------------------------------------------------------------- library pre-processing
def test_clip_image_processor_defaults():
    transformers = pytest.importorskip("transformers")
    proc = transformers.CLIPImageProcessor()
    pred = predict_transform(proc, where="image_processor")
    assert pred.convention == "clip"
    assert "CLIPImageProcessor(do_rescale=True, rescale_factor=1/255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN" in pred.source
    check_runs_in(proc(images=pil("coffee", 256), return_tensors="pt"), "clip")


def test_siglip_image_processor_defaults():
    transformers = pytest.importorskip("transformers")
    proc = transformers.SiglipImageProcessor()
    assert predict_transform(proc).convention == "symmetric"
    check_runs_in(proc(images=pil("coffee", 256), return_tensors="pt"), "symmetric")


def test_bit_image_processor_class_default_vs_dinov2_config():
    transformers = pytest.importorskip("transformers")
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    # BitImageProcessor's class default is OPENAI_CLIP mean/std (transformers source) ...
    bit = transformers.BitImageProcessor()
    assert predict_transform(bit).convention == "clip"
    check_runs_in(bit(images=pil("coffee", 256), return_tensors="pt"), "clip")
    # ... facebook/dinov2-* ship it configured with ImageNet constants
    dino = transformers.BitImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD, size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    assert predict_transform(dino).convention == "imagenet"
    check_runs_in(dino(images=pil("coffee", 256), return_tensors="pt"), "imagenet")


def test_processor_without_rescale_and_normalize():
    transformers = pytest.importorskip("transformers")
    proc = transformers.CLIPImageProcessor(do_normalize=False)
    assert predict_transform(proc).convention == "unit"
    check_runs_in(proc(images=pil("coffee", 256), return_tensors="pt"), "unit")
    proc = transformers.ViTImageProcessor()
    assert predict_transform(proc).convention == "symmetric"
    check_runs_in(proc(images=pil("coffee", 256), return_tensors="pt"), "symmetric")


def test_timm_create_transform():
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    m = timm.create_model("resnet18", pretrained=False)
    tf = create_transform(**resolve_data_config({}, model=m))
    pred = predict_transform(tf)
    assert pred.convention == "imagenet", pred.steps
    check_runs_in(tf(pil("coffee", 256)), "imagenet")
    train_tf = create_transform(**resolve_data_config({}, model=m), is_training=True)
    assert predict_transform(train_tf).convention == "imagenet"
    torch.manual_seed(0)
    x = train_tf(pil("coffee", 256))
    assert x.min() >= get_convention("imagenet").bounds(3)[0][0] - 0.05
    m2 = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1)
    tf2 = create_transform(**resolve_data_config({}, model=m2))
    assert predict_transform(tf2).convention == "symmetric"
    check_runs_in(tf2(pil("coffee", 256)), "symmetric")


def test_open_clip_preprocess():
    open_clip = pytest.importorskip("open_clip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, train_pre, val_pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    pred = predict_transform(val_pre, where="open_clip preprocess")
    assert pred.convention == "clip", pred.steps
    check_runs_in(val_pre(pil("coffee", 256)), "clip")
    assert predict_transform(train_pre).convention == "clip"


def test_diffusers_vae_image_processor():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.image_processor import VaeImageProcessor

    proc = VaeImageProcessor()
    assert predict_transform(proc).convention == "symmetric"
    check_runs_in(proc.preprocess(pil("coffee", 64)), "symmetric")


def test_prediction_str():
    p = Prediction("unit", "ToTensor() in transform", [], ["a note"])
    assert str(p) == "unit: ToTensor() in transform (a note)"
