"""Latent taps survive a checkpoint: a resumed fit goes on with the window the checkpoint saved
(RangeStats counts and the LatentMonitor's soft-clamp counts), as pixel taps do (issue 16)."""

import warnings
from pathlib import Path

import pytest
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import fit as quiet
from helpers.models import LatentDenoiser
from rangewatch import RangeWatch

pytestmark = pytest.mark.slow  # real Trainer fits (end to end): CI runs them, `pytest -m "not slow"` does not

SHAPE = (4, 8, 8)


class Latents(Dataset):
    """Model-space SDXL latents (unit std) with a few values past the soft clamp (|x| > 3.5)."""

    def __init__(self, n=4):
        g = torch.Generator().manual_seed(0)
        self.z = torch.randn((n, *SHAPE), generator=g)
        self.z[:, :, 0, 0] = 5.0  # one value per channel per sample past the clamp ...
        self.z[::2, 1, 1, 1] = -6.0  # ... and one more in channel 1 of every other sample

    def __len__(self):
        return len(self.z)

    def __getitem__(self, i):
        return {"latents": self.z[i]}


def Denoiser() -> LatentDenoiser:
    """A denoiser fed ``batch["latents"]``; ``seen``: the latents of every training step, in order."""
    return LatentDenoiser(key="latents")


def _trainer(tmp_path, w, max_steps, ckpt):
    return quiet.trainer([w], max_steps=max_steps, enable_checkpointing=ckpt, limit_val_batches=0, default_root_dir=tmp_path)


def _watch():
    return RangeWatch(expect={"batch.latents": "sdxl_latent"}, check_first_n=1, log_every_n_steps=100, policy="log",
                      watch_visualization=False)


def _over(z: torch.Tensor) -> list[float]:
    return (np.abs(z.numpy()) > 3.5).sum(axis=(0, 2, 3)).astype(float).tolist()


def test_latent_tap_resumes_its_window(tmp_path):
    data = Latents()
    w1, m1 = _watch(), Denoiser()
    _trainer(tmp_path, w1, 2, True).fit(m1, DataLoader(data, batch_size=2))
    ckpt = list(Path(tmp_path).rglob("*.ckpt"))
    assert ckpt
    state = torch.load(ckpt[0], weights_only=False)["callbacks"][w1.state_key]
    # step 0 was checked; the batch of step 1 waits in the window, soft-clamp counts included
    saved = state["taps"]["batch.latents"]
    assert saved["stats"]["count"].tolist() == [2 * 8 * 8] * 4
    assert saved["latent"]["over"].tolist() == _over(m1.seen[1])

    w2, m2 = _watch(), Denoiser()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rangewatch")
        _trainer(tmp_path, w2, 4, False).fit(m2, DataLoader(data, batch_size=2), ckpt_path=str(ckpt[0]))
    mon = w2.taps["batch.latents"].latent
    a = mon.analyse()
    # the window of step 1 (restored) and the resumed fit's steps 2 and 3 (whichever batches Lightning fed)
    assert len(m2.seen) == 2
    fed = torch.cat([m1.seen[1], *m2.seen])
    assert a.summary.count.tolist() == [3 * 2 * 8 * 8] * 4
    assert a.over_threshold.tolist() == _over(fed)
    assert np.allclose(a.mean.numpy(), fed.double().mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
