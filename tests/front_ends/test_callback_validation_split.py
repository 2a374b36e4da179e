"""Module taps keep training and validation apart, as batch taps do (issue 16).

Validation forwards go through the same submodules as training ones; their tensors must land in
``val/``-prefixed taps, and the validation-end check must neither compute nor reset the training
windows (which the next training check step reads)."""

import pytest
from torch.utils.data import DataLoader, TensorDataset

from helpers import fit as quiet
from helpers.models import VAEModule
from helpers.photos import photo_batch
from rangewatch import RangeWatch

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not

PIXELS = 32 * 32


class Recorder(RangeWatch):
    """Records what every check read for each tap: (tap, step, values per channel, min, max)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[tuple[str, int, int, float, float]] = []
        check = self.engine.check

        def recording_check(step=None, split="train"):  # each window, read just before the check reads it
            for name, s in self.engine.summaries(split).items():
                if not s.empty:
                    self.seen.append((name, step, int(s.count[0]), float(s.finite_min.min()), float(s.finite_max.max())))
            return check(step, split)

        self.engine.check = recording_check


def _fit(tmp_path, **kw):
    unit = photo_batch(12, 32).float() / 255
    train = DataLoader(TensorDataset(unit), batch_size=2)  # 6 batches, all in [0, 1]
    val = DataLoader(TensorDataset(unit[:2] * 2 - 1), batch_size=2)  # one batch in [-1, 1]
    w = Recorder(expect={"vae.encoder:input": "unit"}, check_first_n=0, log_every_n_steps=4, policy="log",
                 derive_expectations=False, watch_visualization=False, **kw)
    # learning rate 0: frozen weights, so the windows' statistics stay the data's
    quiet.fit(VAEModule(lr=0.0), train, val, callbacks=[w], max_steps=6, limit_val_batches=1, val_check_interval=2,
              default_root_dir=tmp_path)
    return w


def test_validation_forwards_do_not_touch_the_training_window(tmp_path):
    w = _fit(tmp_path)
    train = [r for r in w.seen if r[0] == "vae.encoder:input"]
    # checks at steps 0 and 4; validation runs after the 2nd, 4th and 6th batches in between: the
    # step-4 window holds the training batches of steps 1..4 (4 batches of 2), in [0, 1] only
    assert [(step, n) for _, step, n, _, _ in train] == [(0, 2 * PIXELS), (4, 4 * 2 * PIXELS)]
    assert all(lo >= 0.0 and hi <= 1.0 for *_, lo, hi in train)
    val = [r for r in w.seen if r[0] == "val/vae.encoder:input"]
    assert [n for _, _, n, _, _ in val] == [2 * PIXELS] * 3
    assert all(lo < -0.5 for *_, lo, _ in val)
    # the [-1, 1] validation data is flagged on the validation tap, the training tap stays clean
    assert {f.where for f in w.findings if f.kind == "mismatch"} == {"val/vae.encoder:input"}


def test_watch_validation_off_leaves_validation_forwards_unwatched(tmp_path):
    w = _fit(tmp_path, watch_validation=False)
    assert not [r for r in w.seen if r[0].startswith("val/")]
    train = [r for r in w.seen if r[0] == "vae.encoder:input"]
    assert [(step, n) for _, step, n, _, _ in train] == [(0, 2 * PIXELS), (4, 4 * 2 * PIXELS)]
    assert not [f for f in w.findings if f.kind == "mismatch"]
