"""One image write reaches every backend: a :class:`~rangewatch.sinks.loggers.LoggerSink` over a real
``SummaryWriter``, Lightning's ``WandbLogger`` (offline) and ``MLFlowLogger`` (a local file store) writes a corrected
preview and a latent tap's preview once each, and all three hold the same images: W&B and MLflow the same pixels,
TensorBoard the same up to its conversion of float images (``x * 255`` cut to uint8 where the others round)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.utils as tvu

from helpers.events import decode_png
from helpers.photos import photo_batch
from rangewatch.sinks import tags
from rangewatch.sinks.loggers import LoggerSink, mlflow_key

pytestmark = pytest.mark.slow  # W&B starts its service process


def _wandb_pngs(run_dir: Path, names: list[str], timeout: float = 60.0) -> dict[str, np.ndarray]:
    """The run's media images by tag (``files/media/images/<tag>_<n>_<hash>.png``), once W&B has written them."""
    media = run_dir / "files" / "media" / "images"
    deadline = time.monotonic() + timeout
    while True:
        found = {n: sorted(media.glob(f"{n}_*.png")) for n in names}
        if all(found.values()) or time.monotonic() > deadline:
            return {n: decode_png(p[-1].read_bytes()) for n, p in found.items() if p}
        time.sleep(0.2)


def test_tensorboard_wandb_and_mlflow_get_the_same_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    import wandb
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from rangewatch import LatentMonitor, watch_visualization
    from rangewatch.stats.range_stats import RangeStats

    x = photo_batch(4, 16).float() / 255
    with watch_visualization(warn=False) as v:
        tvu.save_image(x * 2 - 1, io.BytesIO(), format="png")  # [-1, 1] saved as if [0, 1]
    (preview,) = v.pop_previews()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # model-space latents
    mon = LatentMonitor("sd15_latent")
    mon.update(z)
    st = RangeStats(channel_dim=1, sync_on_compute=False, hist_bins=8)
    st.update(z, detail=True)

    writer = SummaryWriter(str(tmp_path / "tb"))
    wb = WandbLogger(save_dir=str(tmp_path), offline=True, project="rangewatch-test")
    ml = MLFlowLogger(experiment_name="rangewatch-test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    sink = LoggerSink([writer, wb, ml])
    assert sink.writers == [writer] and sink.wandb == [wb] and sink.mlflow == [ml]
    sink.previews([preview], step=3)
    sink.latent_tap("latents:input", mon, st.compute(), step=3)
    writer.close()
    wandb.finish()

    names = [tags.preview_tag(preview.image_tag), tags.tag("latents:input", tags.LATENT_PREVIEW)]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    tb = {n: decode_png(acc.Images(n)[-1].encoded_image_string) for n in names}
    assert [acc.Images(n)[-1].step for n in names] == [3, 3]
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    wb_imgs = _wandb_pngs(run_dir, names)
    run = tmp_path / "mlruns" / ml.experiment_id / ml.run_id / "artifacts" / "images"
    ml_imgs = {}
    for n in names:
        key = mlflow_key(n).replace("/", "~")  # MLflow's file name of an image key
        (p,) = [p for p in run.glob("*.png") if p.name.startswith(key + "+step+3+")]
        ml_imgs[n] = decode_png(p.read_bytes())
    assert set(wb_imgs) == set(ml_imgs) == set(names)
    # the preview pair is uint8: the same pixels everywhere, and the labelled image the preview draws
    want = preview.build_labelled().permute(1, 2, 0).numpy()
    for imgs in (tb, wb_imgs, ml_imgs):
        np.testing.assert_array_equal(imgs[names[0]], want)
    # the latent grid is float: W&B and MLflow round it, TensorBoard cuts it
    np.testing.assert_array_equal(wb_imgs[names[1]], ml_imgs[names[1]])
    assert tb[names[1]].shape == wb_imgs[names[1]].shape
    assert np.abs(tb[names[1]].astype(int) - wb_imgs[names[1]].astype(int)).max() <= 1
