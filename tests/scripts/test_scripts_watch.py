"""The plain-loop front end with training scripts' shapes: several named models, wrappers looked through, tensor
taps beside attached models, latents judged against the attached VAE's config, and declared taps that never
appear (``unseen`` findings at the end of the check window, an error that stops the run under ``policy="raise"``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rangewatch
from rangewatch import ConfigError, RangeMismatchError
from helpers.scripts_models import SIZE, tiny_image_encoder, tiny_vae

from helpers.models import EncodeBypassAE
from helpers.photos import photo_batch
from helpers.procs import free_port, spawn_ranks


def photos(n: int = 4) -> torch.Tensor:
    return photo_batch(n, SIZE).float() / 255  # [0, 1]


# ---------------------------------------------------------------------------------------------- several models
def test_named_models_give_tap_names_as_the_script_names_them():
    vae, image_encoder = tiny_vae(), tiny_image_encoder()
    watch = rangewatch.watch(vae=vae, image_encoder=image_encoder, policy="log", watch_visualization=False)
    exp = watch.expectations
    assert exp["vae.encoder:input"].convention == "symmetric"
    assert exp["image_encoder:input"].convention == "clip"  # CLIPVisionModelWithProjection's own type
    for _ in range(2):
        x = photos()
        vae.encode(x * 2 - 1)
        image_encoder(torch.nn.functional.interpolate(x, size=32))
        watch.step()
    assert {"vae.encoder:input", "image_encoder:input"} <= set(watch.taps)
    watch.close()
    assert not vae._forward_pre_hooks and not vae.encoder._forward_pre_hooks  # nothing left behind


def test_a_mapping_is_the_same_as_keywords():
    vae = tiny_vae()
    a = rangewatch.watch({"vae": vae}, watch_visualization=False)
    assert "vae.encoder:input" in a.expectations
    a.close()


def test_wrappers_are_looked_through():
    vae = tiny_vae()
    wrapped = torch.compile(nn.DataParallel(vae), backend="eager")  # OptimizedModule(DataParallel(vae))
    watch = rangewatch.watch(vae=wrapped, policy="log", watch_visualization=False)
    assert "vae.encoder:input" in watch.expectations
    vae.encode(photos())  # the hooks are on the user's own modules
    watch.step()
    assert "vae.encoder:input" in watch.taps
    watch.close()


@pytest.mark.parametrize("call", [
    lambda: rangewatch.watch(None),
    lambda: rangewatch.watch(vae=None),
    lambda: rangewatch.watch(vae="not a model"),
    lambda: rangewatch.watch(nn.Linear(2, 2), vae=nn.Linear(2, 2)),
    lambda: rangewatch.watch(forward=nn.Linear(2, 2)),
])
def test_bad_model_arguments_are_config_errors(call):
    with pytest.raises(ConfigError) as e:
        call()
    assert "rangewatch.watch" in str(e.value)


def test_no_model_watches_batches_only():
    watch = rangewatch.watch(watch_visualization=False)
    watch.batch({"image": photos()})
    watch.step()
    assert list(watch.taps) == ["batch.image"]
    watch.close()


# ---------------------------------------------------------------------------------------------- latents by name
def _latent_loop(watch, vae, scale: float, steps: int = 3, name: str = "latents"):
    for _ in range(steps):
        x = photos() * 2 - 1
        watch.batch({"pixel_values": x})
        z = vae.encode(x).latent_dist.sample() * scale
        watch.tensor(name, z)
        watch.step()


def test_latents_are_judged_against_the_attached_vae_config():
    vae = tiny_vae()
    watch = rangewatch.watch(vae=vae, policy="log", watch_visualization=False)
    _latent_loop(watch, vae, vae.config.scaling_factor)
    assert watch.taps["latents:input"].latent is not None
    assert watch.expectation_for("latents:input").conv.scale == pytest.approx(0.18215)
    assert not [f for f in watch.findings if f.kind.startswith("latent_") and f.severity != "info"]
    watch.close()


def test_unscaled_latents_are_a_latent_scale_finding():
    vae = tiny_vae()
    watch = rangewatch.watch(vae=vae, policy="log", watch_visualization=False)
    _latent_loop(watch, vae, 1.0)
    hits = [f for f in watch.findings if f.kind == "latent_scale"]
    assert hits and hits[0].where == "latents:input" and hits[0].step == 0
    watch.close()


def test_noisy_latents_and_packed_latents_are_not_bound():
    vae = tiny_vae()
    watch = rangewatch.watch(vae=vae, policy="log", watch_visualization=False)
    x = photos() * 2 - 1
    z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    watch.tensor("noisy_latents", z + torch.randn_like(z))
    watch.tensor("packed.latents", z.flatten(2).transpose(1, 2))  # (N, H*W, C) token latents
    watch.step()
    assert watch.expectation_for("noisy_latents:input") is None
    assert watch.expectation_for("packed.latents:input") is None
    assert any("packed.latents" in n and "not judged" in n for n in watch.notes)
    watch.close()


def test_declared_latents_beside_a_model_are_a_tensor_tap():
    vae = tiny_vae()
    watch = rangewatch.watch(vae=vae, expect={"latents": "sdxl_latent"}, policy="log", watch_visualization=False)
    _latent_loop(watch, vae, vae.config.scaling_factor)
    assert watch.expectation_for("latents:input").convention == "sdxl_latent"  # declared wins over the VAE's config
    watch.close()


def test_a_module_path_typo_is_still_a_config_error():
    with pytest.raises(ConfigError, match="vae.encodr"):
        rangewatch.watch(vae=tiny_vae(), expect={"vae.encodr": "symmetric"})


# ---------------------------------------------------------------------------------------------- never seen
def test_unseen_taps_say_what_was_seen_instead():
    ae = EncodeBypassAE()
    watch = rangewatch.watch(ae=ae, expect={"batch.image": "symmetric", "ae": "symmetric", "latents": "sd15_latent"},
                             modules=["ae.decoder"], policy="log", watch_visualization=False, check_first_n=2)
    for step in range(4):
        x = photos()
        watch.batch((x, torch.zeros(4)))  # a tuple batch: batch[0], batch[1]
        ae.encode(x)
        found = watch.step()
        if step == 0:
            assert not [f for f in found if f.kind == "unseen"]  # the window is still open
    unseen = {f.where: f for f in watch.findings if f.kind == "unseen"}
    assert set(unseen) == {"batch.image", "ae:input", "latents:input", "ae.decoder"}
    assert unseen["ae.decoder"].expected == "declared: modules=['ae.decoder']"
    assert "ae.decoder.forward was never called" in unseen["ae.decoder"].evidence
    assert all(f.step == 1 and f.severity == "warning" for f in unseen.values())  # at the end of the window
    assert "batch[0] [4, 3, 16, 16]" in unseen["batch.image"].evidence and "'batch[0]'" in unseen["batch.image"].fix
    assert "ae.forward was never called" in unseen["ae:input"].evidence
    assert "ae.encoder, ae.quant_conv" in unseen["ae:input"].evidence and "ae.decoder" not in unseen["ae:input"].evidence
    assert "watch.tensor('latents'" in unseen["latents:input"].evidence
    assert not ae.encoder._forward_pre_hooks  # the probes are gone after the window
    watch.close()


def test_unseen_tap_stops_the_run_under_raise():
    ae = EncodeBypassAE()
    watch = rangewatch.watch(ae=ae, expect={"ae": "symmetric"}, policy="raise", watch_visualization=False, check_first_n=1)
    x = photos()
    ae.encode(x * 2 - 1)
    with pytest.raises(RangeMismatchError) as e:
        watch.step()
    assert [f.kind for f in e.value.findings] == ["unseen"] and e.value.findings[0].severity == "error"
    watch.close()


def test_seen_taps_give_no_unseen_finding_and_probes_cost_nothing_after():
    ae = EncodeBypassAE()
    watch = rangewatch.watch(ae=ae, expect={"ae": "symmetric"}, modules=["ae.decoder"], policy="log", watch_visualization=False)
    assert ae.quant_conv._forward_pre_hooks  # a probe, until ae is seen
    ae(photos() * 2 - 1)
    watch.step()
    assert not ae.quant_conv._forward_pre_hooks  # taken off as soon as every declared module ran
    for _ in range(3):
        ae(photos() * 2 - 1)
        watch.step()
    assert not [f for f in watch.findings if f.kind == "unseen"]
    watch.close()


def test_a_run_shorter_than_the_window_reports_at_close():
    watch = rangewatch.watch(expect={"batch.image": "symmetric"}, policy="raise", watch_visualization=False)
    watch.batch({"img": photos() * 2 - 1})
    watch.step()
    watch.close()  # never raises at the end: the run is over
    assert [(f.kind, f.where, f.severity) for f in watch.findings if f.kind == "unseen"] == [("unseen", "batch.image", "warning")]


@pytest.mark.slow
def test_lightning_fit_reports_an_unseen_batch_key(tmp_path):
    from helpers import fit as quiet
    from helpers.models import ConvNet
    from rangewatch import RangeWatch

    data = torch.utils.data.TensorDataset(photos(8) * 2 - 1, torch.zeros(8))
    cb = RangeWatch(expect={"batch.image": "symmetric"}, policy="raise", watch_visualization=False)
    with pytest.raises(RangeMismatchError) as e:
        quiet.fit(ConvNet(lr=0.01), torch.utils.data.DataLoader(data, batch_size=2), callbacks=[cb], max_steps=4,
                  default_root_dir=tmp_path)
    f = e.value.findings[0]
    assert (f.kind, f.where, f.step) == ("unseen", "batch.image", 2) and "batch[0]" in f.evidence


# ---------------------------------------------------------------------------------------------- two processes
def _unseen_worker(rank: int, port: int, out: str, rank1_has_key: bool) -> None:
    import json
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/ (the helpers package)
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    import rangewatch as rw
    from rangewatch import RangeMismatchError as Stop

    net = nn.Conv2d(3, 3, 3, padding=1)
    watch = rw.watch(net=net, expect={"batch.image": "symmetric"}, policy="raise", watch_visualization=False)
    result = {"stopped_at": None, "kinds": []}
    try:
        for step in range(4):
            x = photo_batch(2, SIZE).float() / 127.5 - 1
            watch.batch({"image": x} if (rank == 1 and rank1_has_key) else (x, torch.zeros(2)))
            net(x).square().mean().backward()
            watch.step()
    except Stop as e:
        result = {"stopped_at": step, "kinds": [(f.kind, f.where) for f in e.findings]}
    watch.close()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("rank1_has_key", [False, True])
def test_unseen_under_ddp_stops_every_rank_alike(tmp_path, rank1_has_key):
    port = free_port()
    r0, r1 = spawn_ranks(_unseen_worker, (port, str(tmp_path), rank1_has_key), tmp_path, 2, 180, "the two-process run")
    assert r0 == r1  # the same decision on both ranks
    if rank1_has_key:  # seen on one rank is seen: the ranks agreed on their taps
        assert r0["stopped_at"] is None
    else:
        assert r0 == {"stopped_at": 2, "kinds": [["unseen", "batch.image"]]}
