"""RangeWatch named in a LightningCLI config: a bad option ends the command with rangewatch's message alone.

Without this, jsonargparse tries each member of ``trainer.callbacks``'s Union under ``except Exception`` and
re-raises the ConfigError chained inside a ``ValueError`` (two tracebacks, 88 lines, the message in the middle).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jsonargparse")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    '''
    import torch
    from lightning.pytorch.cli import LightningCLI
    from torch.utils.data import DataLoader, TensorDataset

    from helpers.models import ConvAutoEncoder


    class AutoEncoder(ConvAutoEncoder):  # vae.encoder / vae.decoder, trained to reconstruct batch[0]
        def train_dataloader(self):
            images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # [0, 1]
            return DataLoader(TensorDataset(images), batch_size=4)


    if __name__ == "__main__":
        LightningCLI(AutoEncoder)
    '''
)


def config(convention: str, policy: str = "warn") -> str:
    return (
        "seed_everything: 0\n"
        "trainer:\n  max_steps: 1\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
        "  enable_model_summary: false\n"
        "  callbacks:\n    - class_path: rangewatch.RangeWatch\n      init_args:\n"
        f"        policy: {policy}\n        expect: {{vae.encoder: {convention}}}\n"
    )


def run_cli(tmp_path: Path, cfg: str) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    path = tmp_path / "configs" / "config.yaml"  # not in the run directory, where LightningCLI saves its copy
    path.parent.mkdir()
    path.write_text(cfg)
    env = {k: v for k, v in os.environ.items() if k != "JSONARGPARSE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])  # tests/: helpers
    return subprocess.run([sys.executable, str(script), "fit", "--config", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wrong_convention_name_is_one_short_error(tmp_path):
    done = run_cli(tmp_path, config("symetric"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 15, done.stderr
    assert "Traceback" not in done.stderr and "Union" not in done.stderr, done.stderr
    error = [ln for ln in lines if "symetric" in ln]
    assert len(error) == 1, done.stderr  # said once
    # the key, the bad value and the names allowed, from the list rangewatch itself keeps
    from rangewatch import list_conventions

    assert error[0].startswith("error: rangewatch.RangeWatch: option 'expect['vae.encoder']' = 'symetric'"), error
    assert all(name in error[0] for name in list_conventions())


@pytest.mark.slow
def test_correct_config_still_trains_and_finds(tmp_path):
    done = run_cli(tmp_path, config("symmetric"))
    assert done.returncode == 0, done.stderr
    # the callback ran: [0, 1] images into an encoder declared [-1, 1]
    assert "[mismatch] vae.encoder:input" in done.stderr, done.stderr


@pytest.mark.slow
def test_in_process_cli_exit_carries_the_config_error(tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from helpers.models import VAEModule
    from rangewatch import ConfigError
    from rangewatch.config import ConfigExit

    path = tmp_path / "config.yaml"
    path.write_text(config("symetric"))
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the command line is ``args`` alone
    with pytest.raises(SystemExit) as exited:
        LightningCLI(VAEModule, run=False, args=["--config", str(path)], save_config_callback=None)
    assert isinstance(exited.value, ConfigExit) and isinstance(exited.value.error, ConfigError)
    assert "'symetric' is not a known convention" in str(exited.value.code)
    # a parser told not to exit on errors keeps jsonargparse's own exception, which carries the message
    with pytest.raises(Exception, match="'symetric' is not a known convention") as raised:
        LightningCLI(VAEModule, run=False, args=["--config", str(path)], save_config_callback=None,
                     parser_kwargs={"exit_on_error": False})
    assert not isinstance(raised.value, SystemExit)
