"""RangeWatch turns the visualisation watch on during validation (the CodeFormer dark-preview case)."""

from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from helpers import fit as quiet
from helpers.models import ConvNet
from helpers.photos import photo_batch
from rangewatch import RangeWatch
from rangewatch.compat.basicsr import enable_basicsr_compat

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not


class Restorer(ConvNet):
    """basicsr style: works in [-1,1]; validation converts outputs with tensor2img."""

    def __init__(self, min_max):
        super().__init__()
        self.min_max = min_max
        self.previews = []

    def validation_step(self, batch, batch_idx):
        from basicsr.utils import tensor2img

        out = batch[0]  # a perfect model: the output is the [-1,1] ground truth
        kw = {} if self.min_max is None else {"min_max": self.min_max}
        self.previews.append(tensor2img(out[:1], **kw))


@pytest.fixture(scope="module")
def basicsr():
    enable_basicsr_compat()
    return pytest.importorskip("basicsr", reason="basicsr (the [basicsr] extra) is not installed")


def run(tmp_path, min_max, **kw):
    x = photo_batch(4, 32).float() / 127.5 - 1
    dl = DataLoader(TensorDataset(x), batch_size=2)
    w = RangeWatch(policy="log", **kw)
    logger = TensorBoardLogger(tmp_path, name="tb")
    model = Restorer(min_max)
    quiet.fit(model, dl, dl, callbacks=[w], logger=logger, max_steps=1, limit_train_batches=1, limit_val_batches=1)
    return w, logger, model, x


def test_default_min_max_flagged_with_preview(tmp_path, basicsr):
    w, logger, model, x = run(tmp_path, None)
    clip = [f for f in w.findings if f.kind == "clipping"]
    assert len(clip) == 1, w.findings
    assert "tensor2img" in clip[0].evidence + clip[0].where and "min_max=(-1, 1)" in clip[0].fix
    assert clip[0].observed == "symmetric"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"images": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["images"] if t.startswith("rangewatch/preview/")]
    assert len(tags) == 1 and "corrected_symmetric" in tags[0]
    import io

    from PIL import Image

    from rangewatch.visualization import Preview

    grid = Preview.unlabel(np.asarray(Image.open(io.BytesIO(acc.Images(tags[0])[0].encoded_image_string)).convert("RGB")), 32).astype(float)
    # make_grid(padding=2) of [broken, corrected]: two 32x32 panels at x = 2 and x = 36
    broken, corrected = grid[2:34, 2:34], grid[2:34, 36:68]
    truth = ((x[0].permute(1, 2, 0).numpy() + 1) / 2 * 255)
    np.testing.assert_allclose(corrected, truth, atol=1.0)  # the corrected preview is the real picture
    ref_broken = np.clip(x[0].permute(1, 2, 0).numpy(), 0, 1) * 255  # what tensor2img(min_max=(0, 1)) shows
    np.testing.assert_allclose(broken, ref_broken, atol=1.0)
    assert broken.mean() < 0.7 * truth.mean()


def test_right_min_max_silent(tmp_path, basicsr):
    w, *_ = run(tmp_path, (-1, 1))
    assert [f for f in w.findings if f.kind == "clipping"] == []


def test_option_off(tmp_path, basicsr):
    w, *_ = run(tmp_path, None, watch_visualization=False)
    assert [f for f in w.findings if f.kind == "clipping"] == []
    import basicsr.utils as bu
    from basicsr.utils import img_util

    assert bu.tensor2img is img_util.tensor2img and not hasattr(bu.tensor2img, "__wrapped__")
