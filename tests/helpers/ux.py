"""The short TensorBoard run that the console/TensorBoard tests (``tests/sinks/test_ux.py``) and the
report tests (``tests/sinks/test_ux_report.py``) read back: ``lq`` in [0, 1] and ``gt`` in [-1, 1], both
declared [-1, 1] (``EXPECT``), so ``batch.lq`` is a mismatch and ``batch.gt`` healthy."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from helpers.models import ConvNet
from helpers.photos import photo_batch
from rangewatch import RangeWatch

EXPECT = {"batch.lq": "symmetric", "batch.gt": "symmetric"}


class Pairs(Dataset):
    """``lq`` in [0, 1] (declared [-1, 1]: a mismatch), ``gt`` in [-1, 1] (declared [-1, 1]: healthy)."""

    def __init__(self, n: int = 8, size: int = 32):
        u = photo_batch(n, size).float() / 255
        self.lq, self.gt = u, u * 2 - 1

    def __len__(self) -> int:
        return len(self.lq)

    def __getitem__(self, i: int) -> dict:
        return {"lq": self.lq[i], "gt": self.gt[i]}


class Net(ConvNet):
    """``self.net`` restores ``lq`` to ``gt`` (L1); validation runs it on ``lq``."""

    def __init__(self) -> None:
        super().__init__(key="lq", target="gt")


def fit(tmp_path: Path, watch: RangeWatch, steps: int = 4, val: bool = False) -> TensorBoardLogger:
    """``Net`` on ``Pairs`` for ``steps`` steps with ``watch`` and a TensorBoard logger under ``tmp_path/tb``."""
    logger = TensorBoardLogger(tmp_path, name="tb")
    loader = DataLoader(Pairs(), batch_size=4)
    quiet.fit(Net(), loader, loader if val else None, callbacks=[watch], logger=logger, max_steps=steps,
              limit_val_batches=1 if val else 0, log_every_n_steps=2)
    logger.experiment.flush()
    return logger
