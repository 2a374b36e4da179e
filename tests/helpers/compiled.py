"""A LightningModule whose body is compiled in place, and a callback counting dynamo's graphs: what the
``torch.compile`` tests of the engine (``tests/engine/test_robustness.py``) and of the taps
(``tests/taps/test_compile.py``) fit, eager and compiled side by side."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class CompiledBody(pl.LightningModule):
    """``body`` compiled in place with ``backend`` (``nn.Module.compile``: the submodule names, and so the tap
    names, stay; ``backend=None``: eager), trained on ``batch[key]`` (``key=None``: the batch itself) to
    ``body(x).pow(2).mean()`` with SGD; the training losses are kept. Validation runs the body on
    ``x * 0.5 + 0.5`` (under inference mode: another graph)."""

    def __init__(self, body: nn.Module, backend: str | None = None, key: str | None = None) -> None:
        super().__init__()
        self.body = body
        if backend is not None:
            self.body.compile(backend=backend)
        self.key = key
        self.losses: list[float] = []

    def _x(self, batch):
        return batch if self.key is None else batch[self.key]

    def training_step(self, batch, batch_idx):
        loss = self.body(self._x(batch)).pow(2).mean()
        self.losses.append(float(loss))
        return loss

    def validation_step(self, batch, batch_idx):
        self.body(self._x(batch) * 0.5 + 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class GraphCount(pl.Callback):
    """dynamo's count of unique graphs after each training batch (``graphs``)."""

    def __init__(self) -> None:
        self.graphs: list[int] = []

    def on_train_batch_end(self, *args) -> None:
        import torch._dynamo as dynamo

        self.graphs.append(int(dynamo.utils.counters["stats"]["unique_graphs"]))
