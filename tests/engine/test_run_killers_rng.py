"""Watching never changes a result: rangewatch neither draws from nor reseeds Python's ``random``,
numpy's global generator or torch's generators, on any path (issue 23, item 3).

The reference is the same seeded run without rangewatch: its losses and the generators' final states.
The plain-loop case runs in fresh interpreters (as a user's script does), because the first known culprit
was an import: the first console message imported ``lightning.pytorch``, which imports ``rich``, whose
``style.py`` calls ``random.getrandbits`` at import time. rangewatch's console no longer imports Lightning,
so the watched run speaks through a ``messages=`` console that draws from all three generators each time it
is called from inside rangewatch (the run fails without rangewatch's guard: checked by disabling it). The training script is written as IP-Adapter's
``tutorial_train.py`` (tencent-ailab/IP-Adapter, tutorial_train.py) is: ``random.random()`` decides in the
dataset whether the text / image conditions are dropped, a frozen diffusers ``AutoencoderKL`` encodes the
images normalised to [-1, 1], and the noise and timesteps come from torch's global generator.

The file is also that script: ``python tests/engine/test_run_killers_rng.py {0|1}`` prints the losses and the
generators' final states as JSON (``1``: with ``rangewatch.watch``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

STEPS = 6


def _state_digest() -> dict[str, str]:
    """The global generators' states, hashed (Python random, numpy's global generator, torch CPU)."""
    py = repr(random.getstate()).encode()
    npst = np.random.get_state()
    return {
        "python": hashlib.sha1(py).hexdigest(),
        "numpy": hashlib.sha1(npst[1].tobytes() + repr(npst[2:]).encode()).hexdigest(),
        "torch": hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }


# ---------------------------------------------------------------------------------- the script
def _script(watched: bool) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from diffusers import AutoencoderKL
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, Dataset

    torch.set_num_threads(1)
    if watched:
        import rangewatch
    random.seed(42)  # accelerate's set_seed does these three
    np.random.seed(42)
    torch.manual_seed(42)

    class Data(Dataset):
        """tutorial_train.py's MyDataset: image normalised to [-1, 1], drops drawn with random.random()."""

        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1)
            self.images = torch.rand(8, 3, 32, 32, generator=g)
            self.embeds = torch.randn(8, 16, generator=g)

        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            image = self.images[i] * 2 - 1  # transforms.Normalize([0.5], [0.5])
            if np.random.rand() < 0.5:  # a flip drawn from numpy's global generator (basicsr's augment does)
                image = image.flip(-1)
            drop_image_embed, text_scale = 0, 1.0
            rand_num = random.random()  # i_drop_rate = t_drop_rate = ti_drop_rate = 0.05 there; wider here
            if rand_num < 0.3:
                drop_image_embed = 1
            elif rand_num < 0.6:
                text_scale = 0.0
            elif rand_num < 0.7:
                text_scale, drop_image_embed = 0.0, 1
            return {"image": image, "text_embeds": self.embeds[i] * text_scale, "drop_image_embed": drop_image_embed}

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1)
    vae.requires_grad_(False)

    class Denoiser(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = nn.Conv2d(4, 16, 3, padding=1)
            self.cond = nn.Linear(16, 16)
            self.conv_out = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, z, t, cond):
            h = self.conv_in(z) + self.cond(cond)[:, :, None, None] + t[:, None, None, None].float() / 1000
            return self.conv_out(F.silu(h))

    unet = Denoiser()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    loader = DataLoader(Data(), batch_size=2, shuffle=True)
    both = nn.ModuleDict({"vae": vae, "unet": unet})
    said = []

    def says(level, text):  # a console that draws randomness as it speaks (rich's import did: random.getrandbits)
        random.getrandbits(32), np.random.rand(), torch.rand(1)
        said.append(level)

    w = rangewatch.watch(both, modules=["unet.conv_in"], check_first_n=2, log_every_n_steps=2,
                         messages=says) if watched else None
    losses = []
    for step, batch in enumerate(loader):
        if step >= STEPS:
            break
        if w is not None:
            w.batch(batch)
        with torch.no_grad():
            latents = vae.encode(batch["image"]).latent_dist.sample() * 0.18215
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],))
        keep = (1 - batch["drop_image_embed"].float())[:, None]
        pred = unet(latents + noise, t, batch["text_embeds"] * keep)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if w is not None:
            w.step()
    if w is not None:
        w.close()
        assert w.taps, "the watch saw nothing"
    print(json.dumps({"losses": losses, "state": _state_digest(), "rich": "rich" in sys.modules, "said": len(said),
                      "taps": sorted(w.taps) if w is not None else []}))


def _run_script(watched: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "1" if watched else "0"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_plain_loop_ip_adapter_style_seeded_run_is_unchanged_by_the_watch():
    plain, watched = _run_script(False), _run_script(True)
    assert not plain["rich"] and watched["said"]  # the console that draws randomness did speak, inside rangewatch
    assert {"batch.image", "unet.conv_in:input", "vae.encoder:input"} <= set(watched["taps"])
    assert watched["losses"] == plain["losses"]  # bit for bit
    assert watched["state"] == plain["state"]


# ---------------------------------------------------------------------------------- in this process
def _full_state() -> tuple:
    npst = np.random.get_state()
    return (random.getstate(), npst[0], npst[1].tobytes(), npst[2:], torch.get_rng_state().numpy().tobytes())


def test_kept_rng_puts_back_what_a_block_draws_and_nests():
    from rangewatch.rng import kept_rng

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    before = _full_state()
    with kept_rng():
        random.random()
        with kept_rng():  # nested: the outer block restores
            np.random.rand(3)
        torch.rand(3)
    assert _full_state() == before
    with pytest.raises(KeyError):  # restored also when the block raises
        with kept_rng():
            random.random()
            raise KeyError("x")
    assert _full_state() == before
    random.random()  # outside a block draws go on as usual
    assert _full_state() != before


class _Entry:
    """Every public entry point of a plain-loop watch, each checked for a state change."""

    def __init__(self) -> None:
        self.changed: list[str] = []

    def __call__(self, what: str, fn, *a, **k):
        before = _full_state()
        out = fn(*a, **k)
        if _full_state() != before:
            self.changed.append(what)
        return out


def test_every_plain_loop_entry_point_keeps_the_generators(tmp_path):
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    import rangewatch
    from rangewatch.sinks.report import build_report

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    writer = SummaryWriter(str(tmp_path / "tb"))
    entry = _Entry()
    w = entry("watch", rangewatch.watch, model, expect={"0": "symmetric"}, logger=writer, histograms="all",
              trace_modules="all", check_first_n=2, log_every_n_steps=2)
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.rand(4, 3, 16, 16, generator=g)  # [0, 1] where [-1, 1] is expected: a finding, said
        entry("batch", w.batch, {"image": x})
        model(x).square().mean().backward()
        entry("make_grid", make_grid, model(x).detach(), normalize=True, value_range=(0, 1))  # a clamping preview
        entry("step", w.step)
        entry("flush_previews", w.flush_previews)
    state = entry("state_dict", w.state_dict)
    entry("load_state_dict", w.load_state_dict, state)
    entry("close", w.close)
    writer.close()
    entry("report", build_report, tmp_path / "tb", tmp_path / "report")
    assert {f.kind for f in w.findings} >= {"mismatch"}, w.findings
    assert entry.changed == []


class _Data(torch.utils.data.Dataset):
    """A dataset that draws with ``random.random()`` (as IP-Adapter's does) and numpy's global generator."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.rand(16, 3, 16, 16, generator=g)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        scale = 0.0 if random.random() < 0.3 else 1.0
        return self.x[i] * scale + float(np.random.rand()) * 0.01


def _lightning_fit(with_watch: bool) -> tuple[list[float], tuple]:
    import lightning.pytorch as pl
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader
    from torchvision.utils import make_grid

    from helpers import fit as quiet
    from rangewatch import RangeWatch

    class AE(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Conv2d(3, 4, 3, padding=1)
            self.decoder = nn.Conv2d(4, 3, 3, padding=1)
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            out = self.decoder(self.encoder(batch) + torch.randn(1))  # the global torch generator, in the step
            make_grid(out.detach(), normalize=True, value_range=(0, 1))  # a preview the watch measures
            loss = F.mse_loss(out, batch)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch, batch_idx):
            return F.mse_loss(self.decoder(self.encoder(batch)), batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    model = AE()
    callbacks = [RangeWatch(expect={"encoder": "symmetric"}, check_first_n=2, log_every_n_steps=2, trace_modules="all")] if with_watch else []
    quiet.fit(model, DataLoader(_Data(), batch_size=4, shuffle=True), DataLoader(_Data(), batch_size=4), callbacks=callbacks,
              max_steps=6, limit_val_batches=1, val_check_interval=3, num_sanity_val_steps=1)
    if with_watch:
        assert [f.kind for f in callbacks[0].findings if f.kind == "mismatch"], callbacks[0].findings
    return model.losses, _full_state()


@pytest.mark.slow
def test_lightning_fit_seeded_losses_and_generators_unchanged_by_the_callback():
    plain_losses, plain_state = _lightning_fit(False)
    watched_losses, watched_state = _lightning_fit(True)
    assert len(plain_losses) == 6
    assert watched_losses == plain_losses
    assert watched_state == plain_state


@pytest.mark.slow
def test_pipeline_watch_keeps_the_generators_and_the_image():
    diffusers = pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler

    from helpers.pipelines import tiny_sd_pipe
    from rangewatch import watch_pipeline

    pipe = tiny_sd_pipe(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                      set_alpha_to_one=False, prediction_type="v_prediction", steps_offset=1))
    pe = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))

    def generate():
        torch.manual_seed(5)  # no generator=: the pipeline draws its noise from the global generator
        random.seed(5)
        np.random.seed(5)
        img = pipe(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), num_inference_steps=3, height=32, width=32,
                   output_type="pt").images
        return img, _full_state()

    img0, state0 = generate()
    with watch_pipeline(pipe, trace="all") as w:
        img1, state1 = generate()
    assert w.previews and {i for _, i in w.previews} <= {0, 1, 2}  # it watched (some of) the 3 denoising steps
    assert torch.equal(img0, img1)
    assert state1 == state0


if __name__ == "__main__":
    _script(sys.argv[1] == "1")
