"""Issue 12, idioms 1, 2, 4, 5, 6, 7: CompVis latent-diffusion / taming training code with the default
``RangeWatch()``, under both Lightning namespaces.

The code under test is written the way those repositories write it (tests/compvis: a tiny copy with
the same module paths): ``AutoencoderKL(pl.LightningModule)`` with encoder / decoder / quant_conv and
``get_input`` turning the data classes' NHWC ``image / 127.5 - 1`` into NCHW; CompVis ``main.py``'s
``DataModuleFromConfig`` and ``ImageLogger`` (``log_images()`` -> ``make_grid`` -> ``(grid + 1) / 2``
-> ``add_image`` in ``on_train_batch_end``, listed after RangeWatch).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from helpers.idioms import compvis_module, decoded, events, fit, loud, namespace, weights
from helpers.photos import photo
from rangewatch import RangeMismatchError, RangeWatch
from rangewatch.expect.models import derive_expectations

NAMES = ["astronaut", "chelsea", "coffee", "rocket"]
NAMESPACES = ["lightning.pytorch", "pytorch_lightning"]


def datamodule(pl, unit: bool = False, size: int = 16, batch_size: int = 2):
    from ldm.data.base import ImagePaths, ImagePathsUnit

    class DataModuleFromConfig(pl.LightningDataModule):  # CompVis main.py, trimmed
        def __init__(self, batch_size, train, num_workers=0):
            super().__init__()
            self.batch_size = batch_size
            self.dataset_configs = {"train": train}
            self.num_workers = num_workers

        def setup(self, stage=None):
            self.datasets = {k: cfg() for k, cfg in self.dataset_configs.items()}

        def train_dataloader(self):
            return DataLoader(self.datasets["train"], batch_size=self.batch_size, num_workers=self.num_workers, shuffle=True)

    cls = ImagePathsUnit if unit else ImagePaths
    return DataModuleFromConfig(batch_size, lambda: cls([photo(n) for n in NAMES], size=size))


def image_logger(pl, batch_frequency: int = 2, rescale: bool = True, max_images: int = 2, log_steps: bool = True):
    """CompVis main.py's ImageLogger (TensorBoard branch). ``rescale=False`` is the seed bug: the
    ``(grid + 1.0) / 2.0`` line left out, so add_image clips the [-1, 1] grid's negatives to black."""
    import numpy as np
    import torchvision

    class ImageLogger(pl.Callback):
        def __init__(self):
            super().__init__()
            self.batch_freq = batch_frequency
            self.max_images = max_images
            self.log_steps = [2 ** n for n in range(int(np.log2(self.batch_freq)) + 1)] if log_steps else [self.batch_freq]
            self.clamp = True
            self.calls: list[tuple[str, int]] = []

        def _tensorboard(self, pl_module, images, batch_idx, split):
            for k in images:
                grid = torchvision.utils.make_grid(images[k])
                if rescale:
                    grid = (grid + 1.0) / 2.0  # -1,1 -> 0,1; c,h,w
                tag = f"{split}/{k}"
                pl_module.logger.experiment.add_image(tag, grid, global_step=pl_module.global_step)
                self.calls.append((tag, pl_module.global_step))

        def log_img(self, pl_module, batch, batch_idx, split="train"):
            check_idx = pl_module.global_step
            if self.check_frequency(check_idx) and hasattr(pl_module, "log_images") and self.max_images > 0:
                is_train = pl_module.training
                if is_train:
                    pl_module.eval()
                with torch.no_grad():
                    images = pl_module.log_images(batch, split=split)
                for k in images:
                    N = min(images[k].shape[0], self.max_images)
                    images[k] = images[k][:N]
                    if isinstance(images[k], torch.Tensor):
                        images[k] = images[k].detach().cpu()
                        if self.clamp:
                            images[k] = torch.clamp(images[k], -1.0, 1.0)
                self._tensorboard(pl_module, images, pl_module.global_step, split)
                if is_train:
                    pl_module.train()

        def check_frequency(self, check_idx):
            if ((check_idx % self.batch_freq) == 0 or (check_idx in self.log_steps)) and check_idx > 0:
                try:
                    self.log_steps.pop(0)
                except IndexError:
                    pass
                return True
            return False

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.global_step > 0:
                self.log_img(pl_module, batch, batch_idx, split="train")

    return ImageLogger()


def autoencoder(ns: str = "pytorch_lightning"):
    def build():
        return compvis_module(ns).AutoencoderKL(learning_rate=1e-3)

    return build


# ---------------------------------------------------------------------------- idiom 4: derivation
def test_compvis_family_expectations_by_class_and_module_of_origin():
    import pytorch_lightning as ptl
    from ldm.models.autoencoder import AutoencoderKL, VQModel
    from sgm.models.autoencoder import AutoencodingEngine
    from taming.models.vqgan import VQModel as TamingVQ
    from taming.models.vqgan import VQSegmentationModel

    class LatentDiffusion(ptl.LightningModule):  # ldm.models.diffusion.ddpm: the AE is first_stage_model
        def __init__(self):
            super().__init__()
            self.first_stage_model = AutoencoderKL()
            self.model = torch.nn.Conv2d(2, 2, 1)

    class MyKL(AutoencoderKL):  # a subclass in user code keeps the fact
        pass

    cases = {
        "ldm.models.autoencoder.AutoencoderKL": (AutoencoderKL(), ""),
        "ldm.models.autoencoder.VQModel": (VQModel(), ""),
        "taming.models.vqgan.VQModel": (TamingVQ(), ""),
        "sgm.models.autoencoder.AutoencodingEngine": (AutoencodingEngine(), ""),
        "ldm.models.autoencoder.AutoencoderKL ": (LatentDiffusion(), "first_stage_model."),
        "ldm.models.autoencoder.AutoencoderKL  ": (MyKL(), ""),
    }
    for qual, (m, prefix) in cases.items():
        got = derive_expectations(m)
        assert set(got) == {f"{prefix}encoder:input", f"{prefix}decoder:output"}, (qual, got)
        for e in got.values():
            assert e.convention == "symmetric" and e.origin == "model"
            assert qual.strip() in e.source  # says which class, from which module
        assert "127.5 - 1" in got[f"{prefix}encoder:input"].source or "x * 2 - 1" in got[f"{prefix}encoder:input"].source
    # same class name, another module: not the CompVis class; and a segmentation VQ takes no pixels
    Lookalike = type("AutoencoderKL", (torch.nn.Module,), {"__module__": "mylib.models"})
    m = Lookalike()
    m.encoder, m.decoder = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 3, 1)
    assert derive_expectations(m) == {}
    assert derive_expectations(VQSegmentationModel()) == {}


# ---------------------------------------------------------------------------- a correct run: silent, identical
@pytest.mark.slow
@pytest.mark.parametrize("ns", NAMESPACES)
def test_compvis_autoencoder_correct_run_silent_and_loss_identical(tmp_path, ns):
    pl = namespace(ns)
    w = RangeWatch()
    logger_cb = image_logger(pl, rescale=True)
    model, logger, losses = fit(pl, autoencoder(ns), lambda: datamodule(pl), [w, logger_cb], tmp_path / "with", log_every_n_steps=1)
    ref_model, _, ref_losses = fit(pl, autoencoder(ns), lambda: datamodule(pl), [image_logger(pl, rescale=True)], tmp_path / "without", log_every_n_steps=1)
    assert losses == ref_losses and len(losses) == 4
    for k, v in weights(model).items():
        assert torch.equal(v, weights(ref_model)[k]), k
    assert loud(w.findings) == [] and [f for f in w.findings if f.kind == "internal"] == [], w.findings
    assert w.expectations["encoder:input"].convention == "symmetric"
    assert "ldm.models.autoencoder.AutoencoderKL" in w.expectations["encoder:input"].source
    assert logger_cb.calls, "the ImageLogger logged previews"
    acc = events(logger.log_dir)
    scalars = acc.Tags()["scalars"]
    # the NHWC float batch is tapped with its 3 channels on the last dim (not 16 "channels" on dim 1)
    assert {"rangewatch_channels/batch.image/min/c0", "rangewatch_channels/batch.image/min/c2"} <= set(scalars)
    assert "rangewatch/batch.image/min/c3" not in scalars
    mins = [e.value for e in acc.Scalars("rangewatch_channels/batch.image/min/c0")]
    assert min(mins) < -0.5  # the real photos' [-1, 1] values
    assert "rangewatch_channels/encoder:input/min/c0" in scalars and "rangewatch_channels/decoder:output/min/c0" in scalars
    # TensorBoard-only data reaches the TensorBoardLogger of either namespace: the custom-scalars layout
    # (histograms are for taps with a finding by default; this run has none)
    assert "custom_scalars__config__" in acc.Tags()["tensors"], "the layout reaches the TensorBoardLogger of either namespace"
    assert acc.Tags()["histograms"] == []
    assert not [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview")]


# ---------------------------------------------------------------------------- seed bug: [0, 1] data into the AE
@pytest.mark.slow
@pytest.mark.parametrize("ns", NAMESPACES)
def test_compvis_unit_data_caught_at_first_batch(tmp_path, ns):
    pl = namespace(ns)
    w = RangeWatch()
    # a batch of all four photos: two 16x16 crops alone may not decide between [0,1] and clipped data
    fit(pl, autoencoder(ns), lambda: datamodule(pl, unit=True, batch_size=4), [w], tmp_path, max_steps=2)
    mism = [f for f in w.findings if f.kind == "mismatch" and f.where == "encoder:input"]
    assert len(mism) == 1, w.findings
    f = mism[0]
    assert f.step == 0 and f.observed == "unit" and f.expected == "symmetric"
    assert "x * 2 - 1" in f.fix
    assert "ldm.models.autoencoder.AutoencoderKL" in f.source
    assert [g for g in w.findings if g.kind == "internal"] == []
    with pytest.raises(RangeMismatchError):
        fit(pl, autoencoder(ns), lambda: datamodule(pl, unit=True, batch_size=4), [RangeWatch(policy="raise")], None, max_steps=2)


@pytest.mark.slow
def test_declared_nhwc_batch_read_channels_last(tmp_path):
    ns = "pytorch_lightning"
    pl = namespace(ns)
    w = RangeWatch(expect={"batch.image": "symmetric"}, derive_expectations=False)
    fit(pl, autoencoder(ns), lambda: datamodule(pl, unit=True, batch_size=4), [w], tmp_path, max_steps=1)
    f = [f for f in w.findings if f.where == "batch.image"]
    assert len(f) == 1 and f[0].kind == "mismatch" and f[0].observed == "unit", w.findings
    assert "channels-last (N, H, W, C)" in f[0].evidence and "(4, 16, 16, 3)" in f[0].evidence


# ---------------------------------------------------------------------------- idioms 5 + 6: ImageLogger previews
@pytest.mark.slow
@pytest.mark.parametrize("ns", NAMESPACES)
def test_image_logger_without_rescale_caught_at_first_preview(tmp_path, ns):
    pl = namespace(ns)
    w = RangeWatch(policy="log")
    cb = image_logger(pl, rescale=False)
    model, logger, _ = fit(pl, autoencoder(ns), lambda: datamodule(pl), [w, cb], tmp_path)
    first_step = cb.calls[0][1]
    assert first_step == 1
    clip = [f for f in w.findings if f.kind == "clipping" and f.observed == "symmetric"]
    assert clip, w.findings
    f = clip[0]
    assert "add_image" in f.where and "training preview" in f.where and "_tensorboard" in f.where
    assert f.step == first_step  # reported at the step the call was made
    assert "(x + 1) / 2" in f.fix and "make_grid(x, normalize=True, value_range=(-1, 1))" in f.fix
    assert "to black" in f.evidence
    # TensorBoard: the user's own preview is the clipped one; rangewatch's corrected one sits at the same step
    acc = events(logger.log_dir)
    tags = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/") and "corrected_symmetric" in t]
    assert tags, acc.Tags()["images"]
    steps = {s for t in tags for s, _ in decoded(acc, t)}
    assert first_step in steps
    [(_, user)] = [(s, img) for s, img in decoded(acc, "train/inputs") if s == first_step]
    assert user.mean() < 100  # dark: the negatives are black


@pytest.mark.slow
def test_image_logger_last_preview_of_the_run_is_reported(tmp_path):
    ns = "pytorch_lightning"
    pl = namespace(ns)
    w = RangeWatch(policy="log")
    cb = image_logger(pl, rescale=False, batch_frequency=4, log_steps=False)  # only at the last step
    fit(pl, autoencoder(ns), lambda: datamodule(pl), [w, cb], tmp_path, max_steps=4)
    assert [s for _, s in cb.calls] == [4, 4, 4]
    clip = [f for f in w.findings if f.kind == "clipping" and f.observed == "symmetric"]
    assert clip and all(f.step == 4 for f in clip), w.findings
    with pytest.raises(RangeMismatchError):  # policy="raise" stops the run even for the last one
        fit(pl, autoencoder(ns), lambda: datamodule(pl), [RangeWatch(policy="raise"), image_logger(pl, rescale=False, batch_frequency=4, log_steps=False)],
            tmp_path / "raise", max_steps=4)


# ---------------------------------------------------------------------------- idiom 7: module aliases
@pytest.mark.slow
def test_module_alias_names_resolve(tmp_path):
    ns = "pytorch_lightning"
    pl = namespace(ns)
    from ldm.models.autoencoder import AutoencoderKL

    class AliasKL(AutoencoderKL):
        """LatentDiffusion-style wrapper code: the AE under `vae`, its parts under short names."""

        def __init__(self):
            super().__init__()
            self.vae = torch.nn.Module()
            self.vae.encoder, self.vae.decoder = self.encoder, self.decoder
            self.decoder_alias = self.vae.decoder

    def build():
        m = AliasKL()
        return m

    w = RangeWatch(expect={"vae.encoder": "symmetric"}, modules=["decoder_alias"], derive_expectations=False)
    _, logger, _ = fit(pl, build, lambda: datamodule(pl, unit=True, batch_size=4), [w], tmp_path, max_steps=1)
    scalars = events(logger.log_dir).Tags()["scalars"]
    assert "rangewatch_channels/decoder_alias:output/min/c0" in scalars
    mism = [f for f in w.findings if f.kind == "mismatch" and f.where == "vae.encoder:input"]
    assert len(mism) == 1 and mism[0].step == 0 and "x * 2 - 1" in mism[0].fix, w.findings
