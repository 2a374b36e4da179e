"""Issue 12, idioms 1, 3 and 8: the ``pytorch_lightning`` package, batch containers, internal-error
messages -- each with real ``pytorch_lightning`` and ``lightning`` Trainers."""

from __future__ import annotations

import dataclasses
import logging
from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from helpers.idioms import compvis_module, events, loud, namespace
from helpers.photos import photo_batch
from rangewatch import RangeWatch
from rangewatch.taps.batches import MAX_DEPTH, MAX_ITEMS, find_images

NAMESPACES = ["lightning.pytorch", "pytorch_lightning"]


def trainer(pl, tmp_path=None, **kw):
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb") if tmp_path else False
    return quiet.trainer(namespace=pl, **{"max_steps": 2, "limit_val_batches": 0, "logger": logger, **kw})


# ---------------------------------------------------------------------------- idiom 1: pytorch_lightning
def test_rangewatch_is_a_callback_of_both_namespaces():
    import lightning.pytorch as lp
    import pytorch_lightning as ptl

    w = RangeWatch()
    assert isinstance(w, lp.Callback) and isinstance(w, ptl.Callback)
    mro = type(w).__mro__
    assert mro.index(lp.Callback) < mro.index(ptl.Callback)  # lightning.pytorch's hooks first; both define the same ones
    from lightning.pytorch.utilities.model_helpers import is_overridden as lp_overridden
    from pytorch_lightning.utilities.model_helpers import is_overridden as ptl_overridden

    # each Trainer finds its stateful callbacks this way: RangeWatch's state goes into either's checkpoints
    assert lp_overridden("state_dict", w, parent=lp.Callback) and ptl_overridden("state_dict", w, parent=ptl.Callback)


class PhotoFolder(Dataset):
    """torchvision ImageFolder-style: PIL photos through ``self.transform`` (ToTensor: [0, 1])."""

    def __init__(self, transform, n=4):
        from torchvision.transforms.functional import to_pil_image

        self.images = [to_pil_image(x) for x in photo_batch(n, 32)]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.transform(self.images[i])}


def ldm_classes(pl, ns, normalize: bool, moves_batches: bool = False):
    from torchvision import transforms

    AutoencoderKL = compvis_module(ns).AutoencoderKL

    class FirstStage(pl.LightningModule):
        """LatentDiffusion-style: the CompVis AE as first_stage_model, fed CHW batches."""

        def __init__(self):
            super().__init__()
            self.first_stage_model = AutoencoderKL()

        def training_step(self, batch, batch_idx):
            x = batch["image"]
            xrec, posterior = self.first_stage_model(x)
            return (x - xrec).abs().mean() + 1e-6 * posterior.kl().mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    steps = [transforms.ToTensor()] + ([transforms.Normalize([0.5] * 3, [0.5] * 3)] if normalize else [])

    class PhotoDataModule(pl.LightningDataModule):
        def setup(self, stage=None):
            self.train_dataset = PhotoFolder(transforms.Compose(steps))

        def train_dataloader(self):
            return DataLoader(self.train_dataset, batch_size=4)

    if moves_batches:
        class MovingDataModule(PhotoDataModule):
            def on_after_batch_transfer(self, batch, dataloader_idx):
                return batch

        return FirstStage, MovingDataModule
    return FirstStage, PhotoDataModule


@pytest.mark.slow
@pytest.mark.parametrize("ns", NAMESPACES)
def test_loader_prediction_and_tensorboard_under_either_namespace(tmp_path, ns, caplog):
    pl = namespace(ns)
    Model, DM = ldm_classes(pl, ns, normalize=False)
    w = RangeWatch(policy="log")
    with caplog.at_level(logging.INFO):
        t = trainer(pl, tmp_path, callbacks=[w])
        t.fit(Model(), datamodule=DM())
    assert [f for f in w.findings if f.kind == "internal"] == []
    assert "need a TensorBoardLogger" not in caplog.text
    # the loader's ToTensor() predicts [0, 1] before step 0; the CompVis AE expects [-1, 1]
    early = [f for f in w.findings if f.where == "train dataloader -> first_stage_model.encoder:input"]
    assert len(early) == 1 and early[0].observed == "unit" and early[0].expected == "symmetric", w.findings
    assert "ToTensor" in early[0].evidence and "x * 2 - 1" in early[0].fix
    seen = [f for f in w.findings if f.kind == "mismatch" and f.where == "first_stage_model.encoder:input"]
    assert len(seen) == 1 and seen[0].step == 0
    acc = events(t.logger.log_dir)
    assert "rangewatch_channels/first_stage_model.encoder:input/min/c0" in acc.Tags()["scalars"]
    # histograms and the findings text need a TensorBoardLogger: that of either namespace is recognised
    assert any(t.startswith("rangewatch/first_stage_model.encoder:input/hist") for t in acc.Tags()["histograms"])
    assert any(t.startswith("rangewatch/findings") for t in acc.Tags()["tensors"])


@pytest.mark.slow
@pytest.mark.parametrize("ns", NAMESPACES)
def test_batch_moving_hooks_of_either_namespace_are_read(ns, caplog):
    pl = namespace(ns)
    Model, DM = ldm_classes(pl, ns, normalize=True, moves_batches=True)
    w = RangeWatch(policy="log")
    with caplog.at_level(logging.INFO):
        trainer(pl, callbacks=[w]).fit(Model(), datamodule=DM())
    assert [f for f in w.findings if f.kind == "internal"] == [], w.findings  # no "Expected a parent"
    assert "MovingDataModule.on_after_batch_transfer changes batches after the loader" in caplog.text
    assert loud(w.findings) == []


@pytest.mark.slow
def test_pytorch_lightning_checkpoint_keeps_rangewatch_state(tmp_path):
    import pytorch_lightning as ptl

    Model, DM = ldm_classes(ptl, "pytorch_lightning", normalize=False)
    w = RangeWatch(policy="log")
    t = trainer(ptl, max_steps=1, callbacks=[w])
    t.fit(Model(), datamodule=DM())
    t.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["callbacks"][w.state_key]["findings"], ckpt["callbacks"].keys()
    w2 = RangeWatch(policy="log")
    trainer(ptl, max_steps=2, callbacks=[w2]).fit(Model(), datamodule=DM(), ckpt_path=tmp_path / "last.ckpt")
    assert [f.key for f in w2.findings if f.kind == "mismatch"] == [f.key for f in w.findings if f.kind == "mismatch"]


# ---------------------------------------------------------------------------- idiom 3: batch containers
@dataclasses.dataclass
class Sample:
    image: torch.Tensor
    caption: list


Pair = namedtuple("Pair", ["lq", "gt"])


def test_find_images_walks_containers_and_names_what_it_skips():
    img = torch.zeros(2, 3, 16, 16)
    notes: list = []
    found = find_images(Sample(img, ["a cat"]), notes=notes)
    assert [(f.path, f.channel_dim) for f in found] == [("batch.image", 1)]
    found = find_images(Pair(img, img + 1))
    assert [f.path for f in found] == ["batch.lq", "batch.gt"]
    per_sample = [torch.rand(3, 20 + i, 16) for i in range(20)]  # detection-style: sizes differ, more than 16
    found = find_images((per_sample, [{"boxes": torch.zeros(1, 4)}] * 20))
    assert {f.path for f in found} == {"batch[0][*]"} and len(found) == 20
    assert all(f.tensor.shape[0] == 1 and f.channel_dim == 1 for f in found)
    assert torch.equal(found[19].tensor[0], per_sample[19])
    crops = [torch.rand(2, 3, 16, 16) for _ in range(MAX_ITEMS + 4)]  # multi-crop: a list of batches
    notes = []
    found = find_images({"crops": crops}, notes=notes)
    assert len(found) == MAX_ITEMS
    assert notes == [(f"batch.crops[{MAX_ITEMS}:]", f"a list of {MAX_ITEMS + 4} items: only the first {MAX_ITEMS} are walked")]
    deep: dict = {"image": img}
    for _ in range(MAX_DEPTH + 1):
        deep = {"x": deep}
    notes = []
    assert find_images(deep, notes=notes) == []
    assert len(notes) == 1 and notes[0][0].startswith("batch.x.x") and "deeper than 6" in notes[0][1]
    assert find_images([1, 2, "a"] * 10, notes=(notes := [])) == [] and notes == []  # nothing with tensors: no note
    nhwc = find_images({"image": torch.zeros(2, 16, 16, 3)})
    assert [(f.path, f.channel_dim) for f in nhwc] == [("batch.image", 3)]
    assert find_images({"feat": torch.zeros(2, 16, 16, 64)}) == []  # channels-last float needs 3 channels


def detection_collate(batch):
    return tuple(zip(*batch))  # torchvision detection references


class Detector(nn.Module):
    def forward(self, images):
        return torch.stack([im.mean() for im in images])


def container_classes(pl, kind: str, nan: bool):
    class ContainerData(Dataset):
        def __init__(self):
            self.x = photo_batch(4, 16).float() / 255
            if nan:
                self.x[1, 0, 2, 3] = float("nan")

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.x[i], {"labels": torch.tensor([1])}

    def collate(batch):
        images = torch.stack([b[0] for b in batch])
        if kind == "dataclass":
            return Sample(images, ["a photo"] * len(batch))
        if kind == "namedtuple":
            return Pair(images, images)
        if kind == "per_sample":
            return detection_collate(batch)
        return {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"image": images}}}}}}}}  # deeper than 6

    class DM(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(ContainerData(), batch_size=2, collate_fn=collate)

    class Model(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))
            self.detector = Detector()

        def training_step(self, batch, batch_idx):
            return self.w * 0.0 + 1.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    return Model, DM


@pytest.mark.slow
@pytest.mark.parametrize("kind,path", [("dataclass", "batch.image"), ("namedtuple", "batch.lq"), ("per_sample", "batch[0][*]")])
def test_nan_in_container_batches_caught_at_first_batch(kind, path):
    pl = namespace("pytorch_lightning")
    Model, DM = container_classes(pl, kind, nan=True)
    w = RangeWatch(policy="log")
    trainer(pl, max_steps=2, callbacks=[w]).fit(Model(), datamodule=DM())
    nf = [f for f in w.findings if f.kind == "nonfinite" and f.where == path]
    assert len(nf) == 1 and nf[0].step == 0 and "NaN 1" in nf[0].evidence, w.findings
    w_ok = RangeWatch(policy="log")
    Model, DM = container_classes(pl, kind, nan=False)
    trainer(pl, max_steps=2, callbacks=[w_ok]).fit(Model(), datamodule=DM())
    assert loud(w_ok.findings) == [], w_ok.findings


@pytest.mark.slow
def test_too_deep_batch_said_once(caplog):
    pl = namespace("lightning.pytorch")
    Model, DM = container_classes(pl, "deep", nan=True)
    w = RangeWatch(policy="log")
    with caplog.at_level(logging.INFO):
        trainer(pl, max_steps=2, callbacks=[w]).fit(Model(), datamodule=DM())
    lines = [r.getMessage() for r in caplog.records if "is not watched" in r.getMessage()]
    assert lines == ["rangewatch: batch.a.b.c.d.e.f.g is not watched: nested deeper than 6 levels: not walked "
                     "(name it in batch_keys or flatten the batch)"], lines


# ---------------------------------------------------------------------------- idiom 8: internal errors
@pytest.mark.slow
def test_internal_errors_say_what_failed_and_only_taps_are_switched_off(monkeypatch):
    import rangewatch.expect.transforms as ti
    from rangewatch.stats.range_stats import RangeStats

    def broken(*a, **k):
        raise RuntimeError("boom in the loader")

    monkeypatch.setattr(ti, "predict_dataset", broken)
    real_update = RangeStats.update

    def update(self, t, *a, **k):
        if t.shape[-1] == 17:
            raise RuntimeError("odd tensor")
        return real_update(self, t, *a, **k)

    monkeypatch.setattr(RangeStats, "update", update)
    pl = namespace("pytorch_lightning")

    class Odd(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.rand(3, 16, 16), "odd": torch.rand(3, 16, 17)}

    class DM(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Odd(), batch_size=2)

    Model, _ = container_classes(pl, "dataclass", nan=False)
    w = RangeWatch(policy="log")
    with pytest.warns(UserWarning) as rec:
        trainer(pl, max_steps=1, callbacks=[w]).fit(Model(), datamodule=DM())
    internal = {f.where: f for f in w.findings if f.kind == "internal"}
    assert set(internal) == {"transform inspection", "batch.odd"}, w.findings
    ti_f = internal["transform inspection"]
    assert "predicting what the data loaders produce" in ti_f.evidence and "switched" not in ti_f.evidence
    assert "boom in the loader" in ti_f.observed
    assert "switched this tap off" in internal["batch.odd"].evidence
    texts = [str(r.message) for r in rec if "internal error" in str(r.message)]
    assert any("transform inspection while predicting" in t and "no tap is switched off" in t for t in texts), texts
    assert any("batch.odd" in t and "this tap is switched off" in t for t in texts), texts


@pytest.mark.slow
def test_pytorch_lightning_trainer_rank_reaches_rangewatch_warnings(recwarn):
    """Under a pytorch_lightning Trainer, rangewatch's (lightning.pytorch) rank-zero warnings follow
    that Trainer's rank: a rank-1 process stays quiet."""
    from unittest import mock

    import pytorch_lightning as ptl
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.utilities import rank_zero_warn

    from rangewatch.compat.namespaces import sync_rank_zero

    t = quiet.trainer(namespace=ptl)
    before = rank_zero_only.rank
    try:
        with mock.patch.object(ptl.Trainer, "global_rank", new_callable=mock.PropertyMock, return_value=1):
            sync_rank_zero(t)
        assert rank_zero_only.rank == 1
        rank_zero_warn("rangewatch: must not show on rank 1")
        assert not [w for w in recwarn if "must not show" in str(w.message)]
        sync_rank_zero(t)
        assert rank_zero_only.rank == 0
    finally:
        rank_zero_only.rank = before
