"""Issue 12, idioms 5 and 6: previews made outside ``validation_step`` with the default ``RangeWatch()``.

- Lightning's own GAN example (``examples/pytorch/domain_templates/generative_adversarial_net.py``):
  a Tanh generator on MNIST-style ``Normalize((0.5,), (0.5,))`` data, ``make_grid`` of its output
  logged with ``add_image`` in ``training_step`` and in ``on_train_epoch_end``, as published (the
  negatives of the [-1, 1] grid are clipped to black by TensorBoard).
- A basicsr-style restoration model ported to Lightning: ``feed_data`` / ``get_current_visuals`` /
  ``tensor2img`` + ``calculate_psnr`` in ``validation_step``, the saved preview in
  ``on_validation_epoch_end`` (CodeFormer's [-1, 1] data and the default ``min_max=(0, 1)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from helpers.idioms import decoded, events, loud, namespace, weights
from helpers.photos import photo
import rangewatch.previews.measure as vis_measure
from rangewatch import RangeMismatchError, RangeWatch

GRAY = ["camera", "moon", "coins", "page", "grass", "gravel", "cell", "camera"]


# ---------------------------------------------------------------------------- the GAN example
class GrayPhotos(Dataset):
    """MNIST stand-in: real grayscale photos at 28x28 through the example's own transform."""

    def __init__(self, transform, n=8):
        from PIL import Image

        self.images = [Image.fromarray(photo(GRAY[i % len(GRAY)])).resize((28, 28), Image.BILINEAR) for i in range(n)]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


def gan_classes(pl, normalize_preview: bool):
    from torchvision import transforms

    class MNISTDataModule(pl.LightningDataModule):
        def __init__(self, batch_size: int = 4, num_workers: int = 0):
            super().__init__()
            self.batch_size = batch_size
            self.num_workers = num_workers
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

        def setup(self, stage=None):
            self.mnist_train = GrayPhotos(self.transform)

        def train_dataloader(self):
            return DataLoader(self.mnist_train, batch_size=self.batch_size, num_workers=self.num_workers)

    class Generator(nn.Module):
        def __init__(self, latent_dim: int = 16, img_shape: tuple = (1, 28, 28)):
            super().__init__()
            self.img_shape = img_shape

            def block(in_feat, out_feat, normalize=True):
                layers = [nn.Linear(in_feat, out_feat)]
                if normalize:
                    layers.append(nn.BatchNorm1d(out_feat, 0.8))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                return layers

            self.model = nn.Sequential(
                *block(latent_dim, 32, normalize=False), *block(32, 64), nn.Linear(64, int(np.prod(img_shape))), nn.Tanh(),
            )

        def forward(self, z):
            img = self.model(z)
            return img.view(img.size(0), *self.img_shape)

    class Discriminator(nn.Module):
        def __init__(self, img_shape=(1, 28, 28)):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(int(np.prod(img_shape)), 64), nn.LeakyReLU(0.2, inplace=True), nn.Linear(64, 1))

        def forward(self, img):
            return self.model(img.view(img.size(0), -1))

    def grid_of(sample_imgs):
        if normalize_preview:  # the fix: tell make_grid the real range
            return torchvision.utils.make_grid(sample_imgs, normalize=True, value_range=(-1, 1))
        return torchvision.utils.make_grid(sample_imgs)  # as published: a [-1, 1] grid into add_image

    class GAN(pl.LightningModule):
        def __init__(self, latent_dim: int = 16, lr: float = 0.0002, b1: float = 0.5, b2: float = 0.999):
            super().__init__()
            self.save_hyperparameters()
            self.automatic_optimization = False
            data_shape = (1, 28, 28)
            self.generator = Generator(latent_dim=self.hparams.latent_dim, img_shape=data_shape)
            self.discriminator = Discriminator(img_shape=data_shape)
            self.validation_z = torch.randn(8, self.hparams.latent_dim)
            self.losses: list[tuple[float, float]] = []
            self.steps: list[int] = []
            self.epoch_end_steps: list[int] = []

        def forward(self, z):
            return self.generator(z)

        @staticmethod
        def adversarial_loss(y_hat, y):
            return F.binary_cross_entropy_with_logits(y_hat, y)

        def training_step(self, batch):
            imgs, _ = batch
            self.steps.append(self.global_step)
            optimizer_g, optimizer_d = self.optimizers()
            z = torch.randn(imgs.shape[0], self.hparams.latent_dim)
            z = z.type_as(imgs)
            self.toggle_optimizer(optimizer_g)
            self.generated_imgs = self(z)
            sample_imgs = self.generated_imgs[:6]
            grid = grid_of(sample_imgs)
            self.logger.experiment.add_image("train/generated_images", grid, self.current_epoch)
            valid = torch.ones(imgs.size(0), 1).type_as(imgs)
            g_loss = self.adversarial_loss(self.discriminator(self(z)), valid)
            self.manual_backward(g_loss)
            optimizer_g.step()
            optimizer_g.zero_grad()
            self.untoggle_optimizer(optimizer_g)
            self.toggle_optimizer(optimizer_d)
            real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
            fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
            fake_loss = self.adversarial_loss(self.discriminator(self(z).detach()), fake)
            d_loss = (real_loss + fake_loss) / 2
            self.manual_backward(d_loss)
            optimizer_d.step()
            optimizer_d.zero_grad()
            self.untoggle_optimizer(optimizer_d)
            self.losses.append((float(g_loss.detach()), float(d_loss.detach())))

        def configure_optimizers(self):
            lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
            opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
            opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
            return [opt_g, opt_d], []

        def on_train_epoch_end(self):
            z = self.validation_z.type_as(self.generator.model[0].weight)
            sample_imgs = self(z)
            grid = grid_of(sample_imgs)
            self.epoch_end_steps.append(self.global_step)
            for logger in self.loggers:
                logger.experiment.add_image("generated_images", grid, self.current_epoch)

    return GAN, MNISTDataModule


def fit_gan(tmp_path, ns, normalize_preview, callbacks, max_steps=4, **kw):
    pl = namespace(ns)
    pl.seed_everything(0)
    GAN, DM = gan_classes(pl, normalize_preview)
    model = GAN()
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    quiet.fit(model, datamodule=DM(), namespace=pl, callbacks=callbacks, logger=logger, max_steps=max_steps,
              deterministic=True, **kw)  # (no validation loader: no sanity steps either way)
    return model, logger


@pytest.mark.slow
@pytest.mark.parametrize("ns", ["lightning.pytorch", "pytorch_lightning"])
def test_gan_previews_normalised_silent_and_loss_identical(tmp_path, ns):
    w = RangeWatch()
    model, _ = fit_gan(tmp_path / "with", ns, True, [w])
    ref, _ = fit_gan(tmp_path / "without", ns, True, [])
    assert model.losses == ref.losses and len(model.losses) >= 2
    for k, v in weights(model).items():
        assert torch.equal(v, weights(ref)[k]), k
    assert loud(w.findings) == [] and [f for f in w.findings if f.kind == "internal"] == [], w.findings


@pytest.mark.slow
@pytest.mark.parametrize("ns", ["lightning.pytorch", "pytorch_lightning"])
def test_gan_example_previews_caught_in_training_step_and_epoch_end(tmp_path, ns):
    w = RangeWatch(policy="log")
    model, logger = fit_gan(tmp_path, ns, False, [w])
    clip = [f for f in w.findings if f.kind == "clipping"]
    step_f = [f for f in clip if "training_step" in f.where]
    end_f = [f for f in clip if "on_train_epoch_end" in f.where]
    assert len(step_f) == 1 and len(end_f) == 1, w.findings
    assert step_f[0].step == model.steps[0] == 0  # the first preview, at the step it was made
    assert end_f[0].step == model.epoch_end_steps[0]
    for f in (step_f[0], end_f[0]):
        assert "add_image" in f.where and "training preview" in f.where
        assert "to black" in f.evidence
        assert f.observed == "symmetric", f
        assert "(x + 1) / 2" in f.fix and "value_range=(-1, 1)" in f.fix
    # the corrected previews are in the event file at the steps of the calls
    acc = events(logger.log_dir)
    previews = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/") and "corrected_symmetric" in t]
    assert any("training_step" in t for t in previews) and any("on_train_epoch_end" in t for t in previews), previews
    [t_step] = [t for t in previews if "training_step" in t]
    (s0, grid), *_ = decoded(acc, t_step)
    assert s0 == 0
    h = grid.shape[0]
    # left panel: as TensorBoard shows it (negatives black); right: (x + 1) / 2 -- brighter on average
    assert grid[:, : grid.shape[1] // 2].mean() < grid[:, grid.shape[1] // 2:].mean() and h > 28


@pytest.mark.slow
def test_gan_preview_cost_bounded_to_check_steps_and_first_calls(tmp_path, monkeypatch):
    measured: list[str] = []
    real = vis_measure.measure

    def counting(call):
        if call.name == "add_image":
            measured.append(call.name)
        return real(call)

    monkeypatch.setattr(vis_measure, "measure", counting)
    w = RangeWatch(policy="log", check_first_n=1, log_every_n_steps=6)
    model, _ = fit_gan(tmp_path, "lightning.pytorch", False, [w], max_steps=16)  # 8 batches of 2 optimizer steps, 4 epochs
    calls = len(model.steps) + len(model.epoch_end_steps)
    judged_steps = [i for i, s in enumerate(model.steps) if i < 1 or s % 6 == 0]
    expected = len(set(judged_steps) | {0}) + len(model.epoch_end_steps)  # + each epoch end (one per epoch)
    assert calls == 12 and len(measured) == expected < calls, (model.steps, measured)


@pytest.mark.slow
def test_gan_preview_policy_raise_stops_at_first_preview(tmp_path):
    with pytest.raises(RangeMismatchError) as exc:
        fit_gan(tmp_path, "pytorch_lightning", False, [RangeWatch(policy="raise")])
    assert any(f.kind == "clipping" and f.step == 0 for f in exc.value.findings)


# ---------------------------------------------------------------------------- basicsr-style restoration
@pytest.fixture(scope="module")
def basicsr():
    from rangewatch.compat.basicsr import enable_basicsr_compat

    enable_basicsr_compat()
    return pytest.importorskip("basicsr", reason="basicsr (the [basicsr] extra) is not installed")


class FFHQPairs(Dataset):
    """basicsr FFHQ-style pairs: HWC float [0, 1] -> img2tensor -> normalize(mean 0.5, std 0.5) in place."""

    def __init__(self, n=4, size=32):
        from PIL import Image

        names = ["astronaut", "chelsea", "coffee", "rocket"]
        self.imgs = [np.asarray(Image.fromarray(photo(names[i % 4])).resize((size, size), Image.BICUBIC)).astype(np.float32) / 255.0 for i in range(n)]

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        from basicsr.utils import img2tensor
        from torchvision.transforms.functional import normalize

        img_gt = img2tensor(self.imgs[i].copy(), bgr2rgb=False, float32=True)  # basicsr reads a fresh array each time
        normalize(img_gt, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
        noise = torch.randn(img_gt.shape, generator=torch.Generator().manual_seed(i)) * 0.05
        img_lq = (img_gt + noise).clamp(-1, 1)  # a denoising pair
        return {"lq": img_lq, "gt": img_gt, "lq_path": f"{i:08d}.png"}


def sr_classes(pl, min_max):
    class FFHQDataModule(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(FFHQPairs(), batch_size=2)

        def val_dataloader(self):
            return DataLoader(FFHQPairs(n=2), batch_size=1)

    class SRModel(pl.LightningModule):
        """basicsr SRModel, ported: feed_data / test / get_current_visuals / nondist_validation."""

        def __init__(self):
            super().__init__()
            self.net_g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(8, 3, 3, padding=1))
            nn.init.zeros_(self.net_g[2].weight)
            nn.init.zeros_(self.net_g[2].bias)
            self.cri_pix = nn.L1Loss()
            self.psnr: list[float] = []
            self.train_losses: list[float] = []
            self.saved_steps: list[int] = []

        def forward(self, x):
            return x + self.net_g(x)  # residual restoration: the output is in the data's [-1, 1]

        def feed_data(self, data):
            self.lq, self.gt = data["lq"], data["gt"]

        def training_step(self, batch, batch_idx):
            self.feed_data(batch)
            self.output = self(self.lq)
            l_pix = self.cri_pix(self.output, self.gt)
            self.train_losses.append(float(l_pix.detach()))
            return l_pix

        def get_current_visuals(self):
            return {"lq": self.lq.detach().cpu(), "result": self.output.detach().cpu(), "gt": self.gt.detach().cpu()}

        def validation_step(self, batch, batch_idx):
            from basicsr.metrics import calculate_psnr
            from basicsr.utils import tensor2img

            self.feed_data(batch)
            with torch.no_grad():
                self.output = self(self.lq)
            visuals = self.get_current_visuals()
            kw = {} if min_max is None else {"min_max": min_max}
            sr_img = tensor2img([visuals["result"]], **kw)
            gt_img = tensor2img([visuals["gt"]], **kw)
            self.psnr.append(calculate_psnr(sr_img, gt_img, crop_border=0))

        def on_validation_epoch_end(self):
            from basicsr.utils import tensor2img

            # the fixed preview sample of each validation epoch (tensor2img clamps a CPU tensor in place, so
            # a fresh forward: the visuals of validation_step were clamped by its own tensor2img)
            kw = {} if min_max is None else {"min_max": min_max}
            with torch.no_grad():
                out = self(self.preview_lq)
            self.saved = tensor2img(out.detach().cpu(), **kw)  # basicsr saves this with imwrite
            self.saved_steps.append(self.global_step)

        def on_validation_start(self):
            self.preview_lq = FFHQPairs(n=1)[0]["lq"][None].to(self.device)

        def configure_optimizers(self):
            return torch.optim.Adam(self.net_g.parameters(), lr=1e-3)

    return SRModel, FFHQDataModule


def fit_sr(tmp_path, min_max, callbacks, ns="pytorch_lightning"):
    pl = namespace(ns)
    pl.seed_everything(0)
    SRModel, DM = sr_classes(pl, min_max)
    model = SRModel()
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    quiet.fit(model, datamodule=DM(), namespace=pl, callbacks=callbacks, logger=logger, max_steps=4, val_check_interval=2,
              limit_val_batches=2, deterministic=True)
    return model, logger


@pytest.mark.slow
def test_basicsr_style_right_min_max_silent_and_loss_identical(tmp_path, basicsr):
    w = RangeWatch()
    model, _ = fit_sr(tmp_path / "with", (-1, 1), [w])
    ref, _ = fit_sr(tmp_path / "without", (-1, 1), [])
    assert model.train_losses == ref.train_losses and model.psnr == ref.psnr and len(model.psnr) == 4
    assert loud(w.findings) == [] and [f for f in w.findings if f.kind == "internal"] == [], w.findings


@pytest.mark.slow
def test_basicsr_style_default_min_max_caught_in_validation_step_and_epoch_end(tmp_path, basicsr):
    w = RangeWatch(policy="log")
    model, logger = fit_sr(tmp_path, None, [w])
    clip = [f for f in w.findings if f.kind == "clipping" and f.observed == "symmetric"]
    in_step = [f for f in clip if "validation_step" in f.where]
    at_end = [f for f in clip if "on_validation_epoch_end" in f.where]
    assert in_step and len(at_end) == 1, w.findings
    assert all("min_max=(-1, 1)" in f.fix and "tensor2img" in f.where for f in in_step + at_end)
    assert in_step[0].step == 2 and at_end[0].step == model.saved_steps[0] == 2  # the first validation, at its step
    acc = events(logger.log_dir)
    previews = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/") and "on_validation_epoch_end" in t]
    assert previews and 2 in {s for s, _ in decoded(acc, previews[0])}, acc.Tags()["images"]
