"""The engine's declared-but-unseen taps as a collaborator (rangewatch/engine/unseen.py), without Lightning or an
engine: which keys name tensors, the probes that see an encode() bypass forward, and what each finding says was
seen instead."""

from __future__ import annotations

import torch
from torch import nn

from helpers.models import EncodeBypassAE as AE
from rangewatch.engine.unseen import UnseenTaps


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.ae = AE()
        self.head = nn.Conv2d(4, 4, 1)


def test_keys_that_name_no_submodule_are_tensor_taps_and_near_misses_stay_modules():
    un = UnseenTaps(lambda: ({}, []))
    wanted = {"ae": {"input"}, "latents": {"input"}, "ae.encodr": {"input"}, "heads": {"output"}, "unet": {"input"},
              "noise": {"input"}}
    kept = un.split_tensor_keys(Model(), wanted, derived={"unet"})
    # a path under a child (ae.encodr) and a near miss ("heads" vs "head": difflib ratio 8/9 >= 0.85) stay module paths,
    # for attach to say "no submodule named ..."; a name the metadata gave (unet) is a module
    assert kept == {"ae": {"input"}, "ae.encodr": {"input"}, "heads": {"output"}, "unet": {"input"}}
    assert un.tensor_keys == {"latents", "noise"}


def test_an_encode_that_bypasses_forward_is_named_with_the_submodules_that_ran():
    model = Model()
    un = UnseenTaps(lambda: ({"ae": "symmetric"}, []))
    hooked = {"ae": ("input",)}
    un.probe(model, hooked)
    assert un.probing
    model.ae.encode(torch.rand(1, 3, 8, 8))
    un.drop_probes_once_seen(seen={}, hooked=hooked)  # ae not seen yet: the probes stay
    assert un.probing
    [f] = un.check(step=3, batches=3, seen={"batch.image": None}, hooked=hooked, raising=False)
    assert not un.probing and un.done and un.check(4, 4, {}, hooked, False) == []  # once per fit
    assert (f.kind, f.where, f.severity, f.step) == ("unseen", "ae:input", "warning", 3)
    assert f.observed == "never seen in the first 3 training batches" and f.expected == "declared: expect={'ae': 'symmetric'}"
    assert f.evidence == ("ae.forward was never called in the first 3 training batches, while the forward of its submodules "
                          "ae.encoder, ae.quant_conv ran (a method such as encode() that calls them directly, bypassing forward)")
    assert f.fix == "name the submodule that receives the tensor: 'ae.encoder:input', 'ae.quant_conv:input'"  # never ae.decoder


def test_batch_paths_and_tensor_names_say_what_was_fed_instead():
    un = UnseenTaps(lambda: ({"batch.image": "unit", "latents": "sd15_latent"}, ["batch.mask"]))
    un.split_tensor_keys(Model(), {"latents": {"input"}})
    for _ in range(2):
        un.record_batch((torch.rand(4, 3, 8, 8), torch.zeros(4)))  # a tuple batch
        un.saw_tensor("latent:input")
    found = {f.where: f for f in un.check(step=1, batches=2, seen={"batch[0]"}, hooked={}, raising=True)}
    assert set(found) == {"batch.image", "batch.mask", "latents:input"}
    assert all(f.severity == "error" for f in found.values())  # policy="raise"
    assert found["batch.image"].evidence == ("no tensor at batch.image in the first 2 training batches; the batches carry "
                                             "batch[0] [4, 3, 8, 8], batch[1] [4]")
    assert "'batch[0]'" in found["batch.image"].fix and found["batch.mask"].expected == "declared: modules=['batch.mask']"
    assert found["latents:input"].evidence == ("watch.tensor('latents', ...) was never called in the first 2 training "
                                               "batches; watch.tensor was given 'latent'")
    assert found["latents:input"].fix.endswith("or declare the name it is fed as ('latent')")


def test_the_tensor_names_said_are_the_users_not_the_hooked_modules():
    """Module hooks feed through Watch.tensor too; an unseen tensor tap lists only the names the loop gave, each once."""
    from rangewatch import Watch

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    w = Watch(expect={"0": "unit", "latents": "sd15_latent"}, modules=["1"], policy="log", watch_visualization=False,
              derive_expectations=False, check_first_n=2, messages=lambda level, text: None)
    w.attach(model, tensor_taps=True)
    for _ in range(3):
        model(torch.rand(2, 3, 8, 8))  # hooks on 0 (input) and 1 (input and output)
        w.tensor("latent", torch.randn(2, 4, 8, 8))
        w.tensor("latent:output", torch.randn(2, 4, 8, 8))
        w.end_step()
    [f] = [f for f in w.findings if f.kind == "unseen"]
    assert f.where == "latents:input"
    assert f.evidence == ("watch.tensor('latents', ...) was never called in the first 2 training batches; "
                          "watch.tensor was given 'latent'")
    w.close()


def test_a_batch_path_declared_in_modules_says_what_the_batches_carry():
    """``modules=["batch.img"]`` alone declares a batch path, as ``expect=`` does: the finding lists the paths the
    batches did carry, not "no tensor at all"."""
    from rangewatch import Watch

    w = Watch(modules=["batch.img"], policy="log", watch_visualization=False, derive_expectations=False, check_first_n=1,
              messages=lambda level, text: None)
    for _ in range(2):
        w.batch({"image": torch.rand(2, 3, 16, 16)})
        w.end_step()
    [f] = [f for f in w.findings if f.kind == "unseen"]
    assert (f.where, f.expected) == ("batch.img", "declared: modules=['batch.img']")
    assert f.evidence == "no tensor at batch.img in the first 1 training batch; the batches carry batch.image [2, 3, 16, 16]"
    assert "'batch.image'" in f.fix
    w.close()


def test_a_declared_batch_path_that_is_there_but_not_watchable_is_said_to_be_there():
    """A declared path the batches carry that never became a tap (integer ids): the finding says it is there and why
    it was not watched, never "no tensor at" a path the batches carry."""
    from rangewatch import Watch

    w = Watch(expect={"batch.ids": "unit"}, policy="log", watch_visualization=False, derive_expectations=False,
              check_first_n=1, messages=lambda level, text: None)
    for _ in range(2):
        w.batch({"image": torch.rand(2, 3, 16, 16), "ids": torch.zeros(2, 7, dtype=torch.long)})
        w.end_step()
    [f] = [f for f in w.findings if f.kind == "unseen"]
    assert f.where == "batch.ids" and "batch.ids" not in w.taps
    assert f.evidence == ("the batches carry batch.ids [2, 7], but it was never watched in the first 1 training batch: not an "
                          "image-like floating-point tensor (integer ids, labels and masks are not watched)")
    w.close()
