"""basicsr for real: the CodeFormer stage-2 "dark preview" bug (tensor2img with its default
min_max=(0, 1) on [-1, 1] outputs) caught inside a real Lightning run, with the corrected
preview read back from the TensorBoard event file."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from rangewatch.compat.basicsr import FUNCTIONAL_TENSOR, enable_basicsr_compat, import_basicsr

enable_basicsr_compat()
basicsr = pytest.importorskip("basicsr", reason="basicsr is not installed (`pip install basicsr`); compat was enabled first")

import lightning as L  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from basicsr.utils import img_util  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402  (module attribute: patched while a watch is on)
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from helpers import fit as quiet  # noqa: E402
from helpers import events  # noqa: E402
from helpers.events import decode_png, read_events  # noqa: E402
from helpers.photos import as_tensor  # noqa: E402
from rangewatch.visualization import VisualizationWarning, is_patched, log_previews, watch_visualization  # noqa: E402

ORIG = {"tensor2img": img_util.tensor2img, "tensor2img_fast": img_util.tensor2img_fast}
SIZE = 48
NAMES = ("astronaut", "coffee")


def photo_u8(name: str) -> torch.Tensor:
    return TF.center_crop(as_tensor(name, max_side=SIZE * 3 // 2), [SIZE, SIZE]).contiguous()


def to_sym(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255 * 2 - 1  # Normalize(0.5, 0.5): what CodeFormer trains on


def panel(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    return events.panel(grid, row, col, SIZE, SIZE)


# ----------------------------------------------------------------------------- compat
def test_enable_basicsr_compat_adds_the_alias_once_and_edits_no_file(monkeypatch):
    import torchvision.transforms as T
    import torchvision.transforms.functional as functional

    tv_dir = os.path.dirname(importlib.util.find_spec("torchvision").origin)
    shipped = os.path.exists(os.path.join(tv_dir, "transforms", "functional_tensor.py"))
    # start from a process state without the alias (monkeypatch puts everything back afterwards)
    monkeypatch.delitem(sys.modules, FUNCTIONAL_TENSOR, raising=False)
    monkeypatch.delattr(T, "functional_tensor", raising=False)
    first, second = enable_basicsr_compat(), enable_basicsr_compat()
    assert second is False  # idempotent
    if shipped:  # old torchvision still has the module: nothing to do
        assert first is False and FUNCTIONAL_TENSOR not in sys.modules
    else:
        assert first is True and sys.modules[FUNCTIONAL_TENSOR] is functional
        from torchvision.transforms.functional_tensor import rgb_to_grayscale  # what basicsr imports

        assert rgb_to_grayscale is functional.rgb_to_grayscale
    assert os.path.exists(os.path.join(tv_dir, "transforms", "functional_tensor.py")) == shipped  # no file written


def test_import_basicsr_returns_the_package_and_explains_absence(monkeypatch):
    assert import_basicsr() is basicsr
    monkeypatch.setitem(sys.modules, "basicsr", None)  # Python's own way to make a package unimportable
    with pytest.raises(ImportError, match="pip install basicsr"):
        import_basicsr()


# ----------------------------------------------------------------------------- the dark-preview bug
class PairData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.gt = [photo_u8(n) for n in NAMES]

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        gt = to_sym(self.gt[i])
        return {"lq": gt.clone(), "gt": gt}


class BasicSRStyle(L.LightningModule):
    """A basicsr-style restoration model: net_g, an L1 pixel loss, and a validation that turns the
    [-1, 1] output into an image with basicsr's tensor2img, image by image."""

    def __init__(self, min_max: tuple[int, int] | None = None, watch=None) -> None:
        super().__init__()
        self.net_g = nn.Conv2d(3, 3, 1)
        with torch.no_grad():  # starts as the identity: the output is the photo, in [-1, 1]
            self.net_g.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.net_g.bias.zero_()
        self.min_max = min_max
        self.watch = watch
        self.outputs: list[torch.Tensor] = []
        self.sr_imgs: list[np.ndarray] = []
        self.logged: list[str] = []

    def training_step(self, batch, batch_idx):
        return F.l1_loss(self.net_g(batch["lq"]), batch["gt"])

    def validation_step(self, batch, batch_idx):
        output = self.net_g(batch["lq"])
        self.outputs.append(output.detach().clone())
        for i in range(output.size(0)):
            visual = output[i : i + 1].detach().cpu()
            if self.min_max is None:
                sr_img = tensor2img(visual)  # CodeFormer stage 2: the default min_max=(0, 1)
            else:
                sr_img = tensor2img(visual, min_max=self.min_max)
            self.sr_imgs.append(sr_img)

    def on_validation_epoch_end(self) -> None:
        if self.watch is not None:  # what the RangeWatch callback does at logging steps
            self.logged += log_previews(self.logger.experiment, self.watch, step=self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def run_fit(tmp_path, model: BasicSRStyle) -> TensorBoardLogger:
    logger = TensorBoardLogger(tmp_path)
    loader = torch.utils.data.DataLoader(PairData(), batch_size=2)
    quiet.fit(model, loader, loader, logger=logger, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
              num_sanity_val_steps=2)  # Lightning's default sanity check: validation runs before training too
    logger.experiment.flush()
    return logger


@pytest.mark.slow
def test_dark_preview_caught_in_a_real_run_with_corrected_preview(tmp_path):
    model = BasicSRStyle()
    with pytest.warns(VisualizationWarning, match=r"tensor2img\(x, min_max=\(-1, 1\)\)"):
        with watch_visualization(context="validation preview") as watch:
            model.watch = watch
            logger = run_fit(tmp_path, model)
    assert not is_patched() and tensor2img is ORIG["tensor2img"]

    # exactly one finding, naming the call and the fix
    assert len(watch.findings) == 1
    (f,) = watch.findings
    assert f.kind == "clipping" and "`tensor2img`" in f.where and "validation_step" in f.where
    assert f.fix == "call `tensor2img(x, min_max=(-1, 1))`"
    assert "to black" in f.evidence and "symmetric" in f.observed and "min_max=(0, 1)" in f.expected
    # sanity check + validation, two images each: four calls, all clamped by the same share
    out = model.outputs[-1].numpy()  # (2, 3, H, W) in [-1, 1]
    assert len(model.sr_imgs) == 4
    for rec in watch.records:
        assert rec.call == "tensor2img" and rec.assumed_range == (0.0, 1.0) and rec.convention == "symmetric"
    for rec, img in zip(watch.records[-2:], out):
        assert rec.below_fraction == pytest.approx((img < 0).mean(), abs=1e-9) and rec.above_fraction == 0
    assert "validation preview `tensor2img`" in watch.records[0].message and "min_max=(-1, 1)" in watch.records[0].message

    # previews written at the sanity check (step 0) and after training (step 1)
    tag = "rangewatch/preview/tensor2img_in_validation_step/broken_min_max_0_1-vs-corrected_symmetric"
    assert model.logged.count(tag) == 2
    acc = read_events(logger.log_dir)
    events = acc.Images(tag)
    assert [e.step for e in events] == [0, 1]
    from rangewatch.visualization import Preview

    grid = Preview.unlabel(decode_png(events[-1].encoded_image_string), SIZE)  # the labelled, enlarged grid -> make_grid's
    assert grid.shape == (2 + 2 * (SIZE + 2), 2 + 2 * (SIZE + 2), 3)

    gt_photos = [photo_u8(n).numpy().transpose(1, 2, 0).astype(np.float64) for n in NAMES]
    for i in range(2):
        broken, corrected = panel(grid, i, 0), panel(grid, i, 1)
        # left: exactly what the user's call produced (tensor2img returns BGR)
        np.testing.assert_array_equal(broken, model.sr_imgs[2 + i][..., ::-1])
        # independent numpy computation of both panels from the model's output
        x = out[i].transpose(1, 2, 0).astype(np.float64)
        broken_np = np.round(np.clip(x, 0, 1) * 255)
        corrected_np = np.round(np.clip((x + 1) / 2, 0, 1) * 255)
        assert np.abs(broken.astype(np.float64) - broken_np).max() <= 1
        assert np.abs(corrected.astype(np.float64) - corrected_np).max() <= 1
        # brightness: corrected within 2% of the ground truth, broken visibly darker
        gt_mean = gt_photos[i].mean()
        assert abs(corrected.mean() - gt_mean) / gt_mean < 0.02
        assert broken.mean() < 0.6 * gt_mean, (broken.mean(), gt_mean)

    hist_tags = [t for t in acc.Tags()["histograms"] if "/histogram_clamp_0_1/" in t]
    assert len(hist_tags) == 3
    h = acc.Histograms(hist_tags[0])[-1].histogram_value
    assert h.num == 2 * SIZE * SIZE  # channel 0 of the two validation images
    below = sum(c for c, lim in zip(h.bucket, h.bucket_limit) if lim <= 0)
    assert below == pytest.approx((out[:, 0] < 0).sum(), abs=0.01 * h.num)
    assert any(t.startswith("rangewatch/preview/tensor2img_in_validation_step/finding") for t in acc.Tags()["tensors"])


@pytest.mark.slow
def test_correct_min_max_gives_no_finding(tmp_path):
    model = BasicSRStyle(min_max=(-1, 1))
    with watch_visualization() as watch:
        model.watch = watch
        run_fit(tmp_path, model)
    assert watch.findings == [] and model.logged == []
    assert len(model.sr_imgs) == 4
    assert all(r.clamped_fraction == 0 and r.convention == "symmetric" and not r.flagged for r in watch.records)
    # the images are the photos again
    np.testing.assert_array_equal(model.sr_imgs[-2][..., ::-1], photo_u8(NAMES[0]).numpy().transpose(1, 2, 0))


# ----------------------------------------------------------------------------- observing without changing
def tensor2img_cases():
    x = to_sym(torch.stack([photo_u8(n) for n in NAMES]))
    return [
        ((x[:1].clone(),), {}),
        ((x.clone(),), {}),  # 4-D batch: basicsr makes a grid
        ((x[0].clone(),), {"min_max": (-1, 1)}),
        ((x[0, 0].clone(),), {}),  # 2-D
        ((x[:, :1].clone(),), {"rgb2bgr": False}),  # one channel
        (([x[0].clone(), x[1].clone()],), {"out_type": np.float32}),  # list
        ((photo_u8(NAMES[0]),), {}),  # uint8 into the default min_max: all white
    ]


def test_tensor2img_results_are_bit_identical_and_names_everywhere_are_patched():
    import basicsr.models.sr_model as sr_model
    import basicsr.utils as butils

    plain_cases, watched_cases = tensor2img_cases(), tensor2img_cases()
    plain = [ORIG["tensor2img"](*a, **k) for a, k in plain_cases]
    with watch_visualization(warn=False) as watch:
        for mod in (img_util, butils, sr_model, sys.modules[__name__]):
            assert mod.tensor2img is not ORIG["tensor2img"] and mod.tensor2img.__wrapped__ is ORIG["tensor2img"]
        watched = [tensor2img(*a, **k) for a, k in watched_cases]
    for mod in (img_util, butils, sr_model, sys.modules[__name__]):
        assert mod.tensor2img is ORIG["tensor2img"]
    assert img_util.tensor2img_fast is ORIG["tensor2img_fast"]

    for p, w in zip(plain, watched):
        for pi, wi in zip(p if isinstance(p, list) else [p], w if isinstance(w, list) else [w]):
            assert pi.dtype == wi.dtype and np.array_equal(pi, wi)
    # basicsr clamps CPU float inputs in place; that side effect is unchanged too
    for (pa, _), (wa, _) in zip(plain_cases, watched_cases):
        for pt, wt in zip(pa[0] if isinstance(pa[0], list) else [pa[0]], wa[0] if isinstance(wa[0], list) else [wa[0]]):
            assert torch.equal(pt, wt)

    assert len(watch.records) == len(watched_cases)
    fixes = sorted({f.fix for f in watch.findings})
    assert fixes == ["call `tensor2img(x, min_max=(-1, 1))`", "call `tensor2img(x, min_max=(0, 255))`"]
    uint8_rec = watch.records[-1]
    assert uint8_rec.convention == "uint8" and uint8_rec.above_fraction > 0.9


def test_tensor2img_fast_preview_uses_the_data_before_its_in_place_clamp(tmp_path):
    x = to_sym(photo_u8(NAMES[0]))[None]
    expected = ORIG["tensor2img_fast"](x.clone())
    with watch_visualization(warn=False) as watch:
        arg = x.clone()
        got = img_util.tensor2img_fast(arg)
    np.testing.assert_array_equal(expected, got)
    assert arg.min() == 0  # basicsr clamped the caller's tensor in place, as it always does
    (f,) = watch.findings
    assert f.fix == "call `tensor2img_fast(x, min_max=(-1, 1))`"
    (rec,) = watch.records
    prev = rec.preview
    assert prev is not None and torch.equal(prev.images[0], x[0])  # kept before the call mutated it
    np.testing.assert_array_equal(prev.broken(0).numpy().transpose(1, 2, 0), got[..., ::-1])  # truncation like the call
    np.testing.assert_array_equal(prev.corrected(0).numpy().transpose(1, 2, 0), photo_u8(NAMES[0]).numpy().transpose(1, 2, 0))


def test_basicsr_can_be_left_alone():
    with watch_visualization(warn=False, basicsr=False) as watch:
        assert img_util.tensor2img is ORIG["tensor2img"] and tensor2img is ORIG["tensor2img"]
        tensor2img(to_sym(photo_u8(NAMES[0])))
    assert watch.records == [] and not is_patched()
