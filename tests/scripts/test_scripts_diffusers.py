"""The diffusers example scripts (examples/text_to_image/train_text_to_image.py and its siblings), reproduced with
tiny random-init models: a frozen VAE and text encoder beside the trained UNet, ``accelerator.prepare`` on the
UNet, the optimizer and the loader, ``latents = vae.encode(pixel_values).latent_dist.sample() *
vae.config.scaling_factor``, ``noise_scheduler.add_noise``, the MSE loss on the noise. The README's lines:
``rangewatch.watch(vae=vae, text_encoder=text_encoder, unet=unet)``, ``watch.batch(batch)``,
``watch.tensor("latents", latents)``, ``watch.step()``.

- correct script: no finding, and the losses equal those of the same seeded run without the watch;
- [0, 1] pixels into the VAE (the transforms without ``Normalize([0.5], [0.5])``): a mismatch at
  ``vae.encoder:input`` at the first check (step 0), nothing declared;
- the scaling factor left out: a ``latent_scale`` finding at ``latents:input`` at step 0, nothing declared;
- ``Accelerator(cpu=True)`` on two processes (gloo): both ranks reach the same findings.
"""

from __future__ import annotations

import os
import random

import numpy as np

import pytest
import torch

from helpers.scripts_models import PhotoDataset, rng_states, sd_transforms, tiny_text_encoder, tiny_unet, tiny_vae
from helpers.procs import free_port, spawn_ranks
from helpers.script_runs import problems, trains_identically

STEPS = 3


def train_text_to_image(watch_it: bool, normalize: bool = True, scale: bool = True, accelerator=None, steps: int = STEPS,
                        policy: str = "log"):
    """The training loop of train_text_to_image.py, tiny; returns (losses, watch or None)."""
    import rangewatch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    accelerator = accelerator or Accelerator(cpu=True)
    torch.manual_seed(0)
    vae, text_encoder, unet = tiny_vae(), tiny_text_encoder(), tiny_unet()
    noise_scheduler = DDPMScheduler(num_train_timesteps=100)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PhotoDataset(sd_transforms(normalize)), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    watch = rangewatch.watch(vae=vae, text_encoder=text_encoder, unet=unet, policy=policy) if watch_it else None
    losses = []
    step = 0
    while step < steps:
        for batch in loader:
            if watch is not None:
                watch.batch(batch)
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample()
            if scale:
                latents = latents * vae.config.scaling_factor
            if watch is not None:
                watch.tensor("latents", latents)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if watch is not None:
                watch.step()
            step += 1
            if step >= steps:
                break
    if watch is not None:
        watch.close()
    return losses, watch


def test_correct_script_is_silent_and_trains_identically():
    watch = trains_identically(train_text_to_image, seed=lambda: torch.manual_seed(123))
    assert problems(watch) == [], [str(f) for f in problems(watch)]
    names = set(watch.taps)
    assert {"vae.encoder:input", "latents:input", "batch.pixel_values"} <= names
    assert watch.expectation_for("latents:input").conv.scale == pytest.approx(0.18215)  # from vae.config, nothing declared


def test_seeded_script_leaves_the_random_generators_alone():
    """Python's ``random``, numpy's and torch's generators end where the unwatched run leaves them."""
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    train_text_to_image(False)
    plain = rng_states()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    train_text_to_image(True)
    watched = rng_states()
    assert watched[0] == plain[0]
    assert (watched[1] == plain[1]).all() and torch.equal(watched[2], plain[2])


def test_unit_pixels_into_the_vae_are_caught_at_the_first_check():
    _, watch = train_text_to_image(True, normalize=False)
    hits = [f for f in watch.findings if f.kind == "mismatch" and f.where == "vae.encoder:input"]
    assert hits and hits[0].step == 0 and hits[0].observed == "unit" and hits[0].expected == "symmetric"


def test_missing_scaling_factor_is_caught_at_the_first_check():
    _, watch = train_text_to_image(True, scale=False)
    hits = [f for f in watch.findings if f.kind == "latent_scale" and f.where == "latents:input"]
    assert hits and hits[0].step == 0, [str(f) for f in watch.findings]
    assert "not scaled" in hits[0].observed or "0.18215" in hits[0].fix


# ---------------------------------------------------------------------------------------------- two processes

def _worker(rank: int, port: int, out: str, normalize: bool) -> None:
    import json
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/ (the helpers package)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    losses, watch = train_text_to_image(True, normalize=normalize, accelerator=accelerator)
    found = sorted((f.kind, f.where, f.step) for f in problems(watch))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"found": found, "taps": sorted(watch.taps)}, fh)
    accelerator.end_training()
    torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [True, False])
def test_accelerate_two_cpu_processes(tmp_path, normalize):
    r0, r1 = spawn_ranks(_worker, (free_port(), str(tmp_path), normalize), tmp_path, 2, 240, "the two-process accelerate run")
    assert r0 == r1  # every rank reaches the same verdicts
    found = {(k, w) for k, w, _ in r0["found"]}
    if normalize:
        assert found == set()
    else:
        assert ("mismatch", "vae.encoder:input") in found
        assert all(s == 0 for k, w, s in r0["found"] if (k, w) == ("mismatch", "vae.encoder:input"))
