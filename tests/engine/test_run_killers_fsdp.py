"""Sharded models are watched as the user wrote them (issue 23, item 9): a diffusers ``AutoencoderKL`` fed
[0, 1] images (it expects [-1, 1]: diffusers' ``VaeImageProcessor`` maps [0, 1] to [-1, 1]) trained on two
CPU processes (gloo) under

* FSDP2 (``torch.distributed.fsdp.fully_shard`` per block and on the root, as torchtitan and the diffusers
  FSDP2 examples apply it) in a plain loop: ``fully_shard`` swaps the class to ``FSDPAutoencoderKL``, and the
  model is still recognised (derived expectations, no ``expect=``);
* FSDP1 (``FullyShardedDataParallel(device_id=cpu)`` with an auto-wrap policy around the encoder and the
  decoder) in a plain loop: taps are named without the ``_fsdp_wrapped_module`` segments, and ``expect=``
  takes the name either way;
* Lightning's ``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``.

Every run has a timeout that kills its process group and fails the test. The file is also the script:
``python tests/engine/test_run_killers_fsdp.py SCENARIO OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

WORLD = 2
STEPS = 3
TIMEOUT_S = 240


def _vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1)


def _record(out: str, rank: int, watch, extra: dict | None = None) -> None:
    rec = {"rank": rank, "findings": [f.to_dict() for f in watch.findings], "taps": sorted(watch.taps), **(extra or {})}
    Path(out, f"rank{rank}.json").write_text(json.dumps(rec))


# ---------------------------------------------------------------------------------- plain loops
def _worker(rank: int, scenario: str, out: str, port: int) -> None:
    import warnings

    import torch
    import torch.distributed as dist
    from torch.nn import functional as F

    import rangewatch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    vae = _vae()
    kw: dict = {}
    if scenario == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        fully_shard(vae.encoder)
        fully_shard(vae.decoder)
        fully_shard(vae)
        model = vae
    else:
        from diffusers.models.autoencoders.vae import Decoder, Encoder
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        model = FSDP(vae, device_id=torch.device("cpu"), auto_wrap_policy=ModuleWrapPolicy({Encoder, Decoder}), use_orig_params=True)
        # the name as named_modules() spells it through the wrappers: accepted, and the tap named as the user named it
        kw["expect"] = {"_fsdp_wrapped_module.encoder._fsdp_wrapped_module.conv_in": "symmetric"}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = rangewatch.watch(model, policy="log", check_first_n=2, messages=lambda level, text: None, **kw)
    g = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        x = torch.rand(2, 3, 32, 32, generator=g)  # [0, 1]
        w.batch(x)
        loss = F.mse_loss(model(x).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step()
    w.close()
    _record(out, rank, w, {"class": type(vae).__name__})
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------- Lightning
def _lightning(out: str) -> None:
    import warnings

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from helpers import fit as quiet
    from rangewatch import RangeWatch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.vae = _vae()

        def configure_model(self) -> None:  # Lightning's FSDP2 recipe: fully_shard over the data-parallel mesh
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            fully_shard(self.vae.encoder, mesh=mesh)
            fully_shard(self.vae.decoder, mesh=mesh)
            fully_shard(self.vae, mesh=mesh)

        def training_step(self, batch, batch_idx):
            x = batch[0]
            return F.mse_loss(self.vae(x).sample, x)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    watch = RangeWatch(policy="log", check_first_n=2)
    trainer = quiet.trainer([watch], devices=WORLD, strategy=ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1),
                            max_steps=STEPS)
    model = Model()
    trainer.fit(model, DataLoader(TensorDataset(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))), batch_size=2))
    _record(out, trainer.global_rank, watch, {"class": type(model.vae).__name__})


# ---------------------------------------------------------------------------------- the tests
def _launch(scenario: str, out: Path) -> tuple[dict, dict]:
    from helpers.procs import run_ranks  # (here: this file also runs as the script, without tests/ on its path)

    (r0, r1), stderr = run_ranks(__file__, scenario, out, WORLD, TIMEOUT_S, "the two-process run")
    return r0, r1


def _keys(rec: dict) -> list[tuple]:
    return [(f["kind"], f["where"], f["observed"], f["expected"]) for f in rec["findings"]]


@pytest.mark.slow
def test_fsdp2_fully_shard_plain_loop_recognises_the_vae(tmp_path):
    r0, r1 = _launch("fsdp2", tmp_path)
    assert r0["class"] == "FSDPAutoencoderKL"  # the class fully_shard swapped in
    for rec in (r0, r1):
        assert ("mismatch", "encoder:input", "unit", "symmetric") in _keys(rec), rec["findings"]
        assert not [k for k in _keys(rec) if k[0] == "internal"], rec["findings"]
    assert _keys(r0) == _keys(r1)


@pytest.mark.slow
def test_fsdp1_plain_loop_taps_named_as_the_user_named_the_modules(tmp_path):
    r0, r1 = _launch("fsdp1", tmp_path)
    for rec in (r0, r1):
        assert not [t for t in rec["taps"] if "_fsdp_wrapped_module" in t], rec["taps"]
        assert {"encoder:input", "encoder.conv_in:input"} <= set(rec["taps"]), rec["taps"]
        keys = _keys(rec)
        assert ("mismatch", "encoder:input", "unit", "symmetric") in keys, rec["findings"]  # derived through the wrapper
        assert ("mismatch", "encoder.conv_in:input", "unit", "symmetric") in keys, rec["findings"]  # declared
        assert not [k for k in keys if k[0] == "internal"], rec["findings"]
    assert _keys(r0) == _keys(r1)


@pytest.mark.slow
def test_lightning_model_parallel_strategy_fsdp2_on_cpu(tmp_path):
    r0, r1 = _launch("lightning", tmp_path)
    assert r0["class"] == "FSDPAutoencoderKL"
    for rec in (r0, r1):
        assert ("mismatch", "vae.encoder:input", "unit", "symmetric") in _keys(rec), rec["findings"]
        assert not [k for k in _keys(rec) if k[0] == "internal"], rec["findings"]
    assert _keys(r0) == _keys(r1)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package, as under pytest
    if sys.argv[1] == "lightning":
        _lightning(sys.argv[2])
    else:
        import torch.multiprocessing as mp

        from helpers.procs import free_port

        mp.spawn(_worker, args=(sys.argv[1], sys.argv[2], free_port()), nprocs=WORLD, join=True)
