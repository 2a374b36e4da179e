"""Issue 25, previews of 5-D video: TensorBoard's ``SummaryWriter.add_video`` observed (a float video is taken
as [0, 1]: ``x * 255`` clipped, pytorch/pytorch torch/utils/tensorboard/summary.py ``video``), its corrected
preview (first / middle / last frame of the first clip) read back from real event files, a video passed to an
image call (one note, never an internal error) and the latent preview of 5-D video latents in both layouts."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.utils as tvu
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from helpers import fit as quiet
from helpers.events import decode_png, panel, read_events
from helpers.photos import as_tensor
from rangewatch import RangeWatch, log_latents
from rangewatch.expect.conventions import get_convention
from rangewatch.visualization import Preview, log_previews, watch_visualization

T, SIZE = 7, 32
FRAMES = [0, 3, 6]  # first, middle, last of 7


def clip_u8(name: str, t: int = T, size: int = SIZE) -> torch.Tensor:
    """(T, 3, size, size) uint8: a camera panning over a real photo, one pixel row/column per frame."""
    img = as_tensor(name, max_side=3 * size)
    return torch.stack([img[:, 2 * i : 2 * i + size, i : i + size] for i in range(t)]).contiguous()


def video_u8(names=("astronaut", "coffee")) -> torch.Tensor:
    """(N, T, C, H, W) uint8, the layout add_video takes."""
    return torch.stack([clip_u8(n) for n in names])


def assert_preview_matches(acc, tag: str, video: np.ndarray, frames=FRAMES, event: int = 0) -> None:
    """The side-by-side preview: one row per frame of clip 0; left as TensorBoard's add_video converts a float
    video (``x * 255`` clipped, cast to uint8), right ``(x + 1) / 2`` -- both computed here with numpy."""
    grid = Preview.unlabel(decode_png(acc.Images(tag)[event].encoded_image_string), SIZE)
    assert grid.shape == (2 + len(frames) * (SIZE + 2), 2 + 2 * (SIZE + 2), 3)
    for row, t in enumerate(frames):
        x = video[0, t].transpose(1, 2, 0).astype(np.float64)  # (H, W, C)
        broken = np.clip(x * 255, 0, 255).astype(np.uint8)
        corrected = np.round(np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(panel(grid, row, 0, SIZE, SIZE), broken)
        assert np.abs(panel(grid, row, 1, SIZE, SIZE).astype(int) - corrected.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- plain SummaryWriter
def test_add_video_of_symmetric_video_clipped_share_and_preview(tmp_path):
    u8 = video_u8()
    x = u8.float() / 127.5 - 1  # (N, T, C, H, W) in [-1, 1], as video trainers read frames
    writer = SummaryWriter(tmp_path)
    with watch_visualization(warn=False) as w:
        writer.add_video("val/clip", x, 3, fps=4)
    (f,) = w.findings
    assert f.kind == "clipping" and "`add_video`" in f.where and f.observed == "symmetric"
    assert "pass `(x + 1) / 2` to `add_video`" in f.fix
    (rec,) = w.records
    xn = x.numpy().astype(np.float64)
    assert rec.below_fraction == pytest.approx((xn < 0).mean(), abs=1e-9)  # numpy: what add_video clips to black
    assert rec.above_fraction == pytest.approx((xn > 1).mean(), abs=1e-9) == 0
    tags = log_previews(writer, w, step=3)
    writer.close()
    assert tags[0].endswith("/add_video_in_test_add_video_of_symmetric_video_clipped_share_and_preview/"
                            "broken_unit_0_1-vs-corrected_symmetric")
    acc = read_events(tmp_path)
    assert_preview_matches(acc, tags[0], xn)
    # the right column is the photo again: (x + 1) / 2 undoes / 127.5 - 1
    grid = Preview.unlabel(decode_png(acc.Images(tags[0])[0].encoded_image_string), SIZE)
    for row, t in enumerate(FRAMES):
        np.testing.assert_array_equal(panel(grid, row, 1, SIZE, SIZE), u8[0, t].numpy().transpose(1, 2, 0))
    [text] = [t for t in acc.Tags()["tensors"] if t.startswith("rangewatch/preview/") and "/finding" in t]
    assert "frames shown (one per row): 0, 3, 6 of the first clip's 7" in acc.Tensors(text)[0].tensor_proto.string_val[0].decode()


def test_add_video_of_unit_and_uint8_video_is_silent(tmp_path):
    u8 = video_u8()
    writer = SummaryWriter(tmp_path)
    with watch_visualization(warn=False) as w:
        writer.add_video("unit", u8.float() / 255, 0)
        writer.add_video("u8", u8, 0)
    writer.close()
    assert w.findings == []
    assert [(r.call, r.mode, r.clamped_fraction) for r in w.records] == [("add_video", "clamp", 0.0), ("add_video", "none", 0.0)]
    assert not w.has_previews


def test_video_passed_to_make_grid_is_one_note_and_the_call_is_unchanged():
    v = video_u8().float().permute(0, 2, 1, 3, 4) / 255  # (N, C, T, H, W)
    with pytest.raises(RuntimeError) as plain:
        tvu.make_grid(v)
    with watch_visualization(warn=False) as w:
        for _ in range(2):
            with pytest.raises(RuntimeError) as watched:
                tvu.make_grid(v)  # torchvision's own error, unchanged
    assert str(watched.value) == str(plain.value)
    (f,) = w.findings
    assert f.kind == "note" and f.severity == "info" and "`make_grid`" in f.where and "(2, 3, 7, 32, 32)" in f.observed
    assert "add_video" in f.fix and w.records == []


def test_plain_loop_add_video_found_by_watch(tmp_path):
    """A plain loop with ``rangewatch.watch``: a Conv3d video model on (N, C, T, H, W) clips, the reconstruction
    logged every few steps with ``writer.add_video`` in [-1, 1]."""
    import rangewatch

    torch.manual_seed(0)
    clips = (video_u8().float() / 127.5 - 1).permute(0, 2, 1, 3, 4)  # (N, C, T, H, W)
    model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv3d(8, 3, 3, padding=1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    writer = SummaryWriter(tmp_path)
    logged = []
    with rangewatch.watch(model, logger=writer, policy="log", log_every_n_steps=2) as w:
        for step in range(3):
            w.batch(clips)
            out = clips + model(clips)
            loss = F.mse_loss(out, clips)
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.step()
            if step == 0:
                v = out.detach().clamp(-1, 1).permute(0, 2, 1, 3, 4)  # add_video takes (N, T, C, H, W)
                logged.append(v)
                writer.add_video("train/reconstruction", v, step)
    writer.close()
    clip = [f for f in w.findings if f.kind == "clipping"]
    assert len(clip) == 1 and "add_video" in clip[0].where and "(x + 1) / 2" in clip[0].fix, w.findings
    assert [f for f in w.findings if f.kind == "internal"] == []
    acc = read_events(tmp_path)
    [tag] = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/add_video") and "corrected_symmetric" in t]
    assert_preview_matches(acc, tag, logged[0].numpy().astype(np.float64))


# ----------------------------------------------------------------------------- Lightning
def video_module(pl, symmetric: bool):
    class VideoAE(pl.LightningModule):
        """A residual Conv3d video model on (N, C, T, H, W) clips; the validation epoch end logs the first
        validation batch's reconstruction with ``self.logger.experiment.add_video`` ((N, T, C, H, W))."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv3d(8, 3, 3, padding=1))
            self.logged: list[torch.Tensor] = []
            self.losses: list[float] = []

        def forward(self, x):
            return x + self.net(x)

        def training_step(self, batch, _):
            loss = F.mse_loss(self(batch), batch)
            self.losses.append(float(loss.detach()))
            return loss

        def validation_step(self, batch, i):
            out = self(batch)
            if i == 0:
                self.val_out = out.detach()
            return F.mse_loss(out, batch)

        def on_validation_epoch_end(self):
            lo = -1.0 if symmetric else 0.0
            v = self.val_out.clamp(lo, 1).permute(0, 2, 1, 3, 4)
            self.logged.append(v.clone())
            self.logger.experiment.add_video("val/reconstruction", v, self.global_step, fps=4)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    return VideoAE


def fit_video(tmp_path, symmetric: bool, callbacks):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    pl.seed_everything(0)
    u8 = video_u8().permute(0, 2, 1, 3, 4)  # (N, C, T, H, W)
    clips = u8.float() / 127.5 - 1 if symmetric else u8.float() / 255
    model = video_module(pl, symmetric)()
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    loader = DataLoader(list(clips), batch_size=2)
    quiet.fit(model, loader, DataLoader(list(clips), batch_size=2), callbacks=callbacks, logger=logger,
              max_epochs=2, deterministic=True)
    return model, logger


@pytest.mark.slow
def test_lightning_add_video_of_symmetric_video_flagged_with_corrected_preview(tmp_path):
    w = RangeWatch(policy="log")
    model, logger = fit_video(tmp_path, True, [w])
    clip = [f for f in w.findings if f.kind == "clipping"]
    assert len(clip) == 1, w.findings
    f = clip[0]
    assert "add_video" in f.where and "on_validation_epoch_end" in f.where and f.observed == "symmetric"
    assert "(x + 1) / 2" in f.fix and "to black" in f.evidence
    v = model.logged[0].numpy().astype(np.float64)
    share = (v < 0).mean()  # numpy: the share of the video add_video clips to black
    assert share > 0.05
    assert f"{100 * share:.1f}% of values to black" in f.evidence  # the share, in percent with one decimal
    assert [f for f in w.findings if f.kind == "internal"] == []
    acc = read_events(logger.log_dir)
    [tag] = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/add_video_in_on_validation_epoch_end")]
    assert tag.endswith("broken_unit_0_1-vs-corrected_symmetric")
    events = acc.Images(tag)
    assert 1 <= len(events) <= len(model.logged)
    for i, ev in enumerate(events):  # each written preview shows the video logged at that epoch end
        assert ev.step == 1 + i
        assert_preview_matches(acc, tag, model.logged[i].numpy().astype(np.float64), event=i)


@pytest.mark.slow
def test_lightning_add_video_of_unit_video_silent_and_loss_identical(tmp_path):
    w = RangeWatch(policy="log")
    model, logger = fit_video(tmp_path / "with", False, [w])
    ref, _ = fit_video(tmp_path / "without", False, [])
    assert model.losses == ref.losses and len(model.losses) == 2
    assert torch.equal(model.logged[-1], ref.logged[-1])
    assert [f for f in w.findings if f.kind in ("clipping", "internal", "note")] == [], w.findings
    acc = read_events(logger.log_dir)
    assert [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/")] == []


# ----------------------------------------------------------------------------- 5-D latents
def rgb_reference(z_ncthw: np.ndarray, name: str, frames) -> np.ndarray:
    """numpy: the linear latent-to-RGB factors of clip 0's frames, mapped from [-1, 1] to [0, 1]: (F, H, W, 3)."""
    conv = get_convention(name)
    f = np.asarray(conv.latent_rgb, dtype=np.float64)  # (C, 3)
    b = np.asarray(conv.latent_rgb_bias or (0.0, 0.0, 0.0), dtype=np.float64)
    zf = z_ncthw[0][:, frames].transpose(1, 2, 3, 0).astype(np.float64)  # (F, H, W, C)
    return np.clip((zf @ f + b) * 0.5 + 0.5, 0, 1)


@pytest.mark.parametrize("layout", ["NCTHW", "NTCHW"])
def test_latent_preview_of_video_latents_written_to_tensorboard(tmp_path, layout):
    """Wan's (N, 16, T, H, W) latents and CogVideoX's (N, T, 16, H, W) layout (read with Wan 2.1's factors: the
    catalogue has no CogVideoX latent-to-RGB factors) give the same preview: one row per clip, frames first /
    middle / last."""
    name, h = "wan21_latent", 12
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 16, 5, h, h, generator=g)  # (N, C, T, H, W)
    z[:, :, 4] += 1.0  # the last frame differs
    zz, cd = (z, 1) if layout == "NCTHW" else (z.permute(0, 2, 1, 3, 4).contiguous(), 2)
    writer = SummaryWriter(tmp_path)
    tags = log_latents(writer, "transformer_in", zz, 2, convention=name, channel_dim=cd, max_images=2, scale=1)
    writer.close()
    assert tags[0] == "rangewatch/transformer_in/latent_preview"
    (img,) = read_events(tmp_path).Images(tags[0])
    pix = decode_png(img.encoded_image_string).astype(np.float64) / 255
    assert (img.height, img.width) == (1 + 2 * (h + 1), 1 + 3 * (h + 1))  # 2 clips x 3 frames, padding 1
    zn = z.numpy()
    for clip in range(2):
        ref = rgb_reference(zn[clip:], name, [0, 2, 4])
        for col in range(3):
            y, x = 1 + clip * (h + 1), 1 + col * (h + 1)
            np.testing.assert_allclose(pix[y : y + h, x : x + h], ref[col], atol=1 / 255 + 1e-6)
