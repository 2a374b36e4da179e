"""``rangewatch check CONFIG.yaml``: the pre-flight check on real datamodules (real photos through real
torchvision v2 transforms) and real modules (a VAE-shaped conv model, a tiny diffusers AutoencoderKL).

The classes the configs name live in tests/helpers/fixtures_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rangewatch import ConfigError
from rangewatch.preflight import CheckError, CheckReport, main_check, run_check

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

UNIT_VAE = """
data:
  class_path: helpers.fixtures_check.PhotoDataModule
  init_args: {normalize: unit, n: 32}
model:
  class_path: helpers.fixtures_check.ConvVAEModule
rangewatch:
  expect: {vae.encoder: symmetric}
"""


def cfg(tmp_path: Path, text: str, name: str = "check.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def check(capsys, path: str, *, batches: int = 8, as_json: bool = False) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main_check(argparse.Namespace(config=path, batches=batches, json=as_json, no_progress=True))
    out, err = capsys.readouterr()
    return rc, out, err


def cli_has_check() -> bool:
    from rangewatch.cli.main import build_parser

    sub = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return bool(sub) and "check" in sub[0].choices


# ---------------------------------------------------------------------------------------------- results
def test_unit_data_into_symmetric_vae_encoder_fails_with_the_fix(tmp_path, capsys):
    rc, out, err = check(capsys, cfg(tmp_path, UNIT_VAE))
    assert rc == 1, out + err
    assert "vae.encoder:input: unit (confident); expected symmetric" in out
    assert "[MISMATCH]" in out
    assert "ERROR [mismatch] vae.encoder:input: saw unit, expected symmetric" in out
    assert "fix: apply x * 2 - 1" in out and "before vae.encoder" in out
    assert "batch.image: unit (confident); expected unit" in out  # the loader prediction agrees with the batch
    assert "8 batches" in out
    assert out.rstrip().endswith("result: FAILED: 1 value-range problem")
    assert err == ""


def test_normalize_half_data_passes(tmp_path, capsys):
    rc, out, err = check(capsys, cfg(tmp_path, UNIT_VAE.replace("normalize: unit", "normalize: symmetric")))
    assert rc == 0, out + err
    assert "vae.encoder:input: symmetric (confident); expected symmetric" in out and "[ok]" in out
    assert "findings: none" in out
    assert out.rstrip().endswith("result: OK")


def test_run_check_api(tmp_path):
    rep = run_check(cfg(tmp_path, UNIT_VAE), batches=3, progress=False)
    assert isinstance(rep, CheckReport) and not rep.ok
    assert rep.batches == 3 and rep.datamodule == "PhotoDataModule" and rep.model == "ConvVAEModule"
    assert "training_step" in rep.model_call and "no_grad" in rep.model_call
    t = rep.taps["vae.encoder:input"]
    assert (t.convention, t.confident, t.expectation, t.origin, t.status) == ("unit", True, "symmetric", "declared", "mismatch")
    assert "expect={'vae.encoder': 'symmetric'}" in t.source and "minima" in t.evidence
    assert t.channel_min == (0.0, 0.0, 0.0) and max(t.channel_max) <= 1.0
    b = rep.taps["batch.image"]
    assert (b.convention, b.expectation, b.origin, b.status) == ("unit", "unit", "transform", "ok")
    assert rep.loader_predictions["train"]["convention"] == "unit"
    (bad,) = rep.problems
    assert (bad.kind, bad.where, bad.observed, bad.expected, bad.step) == ("mismatch", "vae.encoder:input", "unit", "symmetric", None)
    # the transform-based prediction is there too, but the observation decides
    pred = [f for f in rep.findings if f.where == "train dataloader -> vae.encoder:input"]
    assert pred and not rep.fails(pred[0])
    assert json.loads(rep.to_json())["ok"] is False and "vae.encoder:input" in rep.format()


def test_json_output(tmp_path, capsys):
    rc, out, _ = check(capsys, cfg(tmp_path, UNIT_VAE), as_json=True)
    assert rc == 1
    d = json.loads(out)
    assert d["ok"] is False and d["batches"] == 8 and d["model"] == "ConvVAEModule"
    assert set(d["taps"]) == {"batch.image", "vae.encoder:input"}
    tap = d["taps"]["vae.encoder:input"]
    assert tap["convention"] == "unit" and tap["expectation"] == "symmetric" and tap["status"] == "mismatch"
    assert tap["confident"] is True and tap["dtypes"] == ["float32"] and "minima" in tap["evidence"]
    failing = [f for f in d["findings"] if f["fails"]]
    assert len(failing) == 1 and failing[0]["where"] == "vae.encoder:input" and "x * 2 - 1" in failing[0]["fix"]
    assert d["loader_predictions"]["train"]["convention"] == "unit"


def test_diffusers_vae_expectation_is_derived(tmp_path):
    pytest.importorskip("diffusers")
    text = """
data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {normalize: NORM, batch_size: 2, n: 4}}
model: helpers.fixtures_check.DiffusersVAEModule
"""
    bad = run_check(cfg(tmp_path, text.replace("NORM", "unit")), batches=2, progress=False)
    assert not bad.ok
    t = bad.taps["vae.encoder:input"]
    assert (t.convention, t.expectation, t.origin) == ("unit", "symmetric", "model")
    assert "diffusers AutoencoderKL" in t.source
    assert [f.where for f in bad.problems] == ["vae.encoder:input"]
    # the decoder's derived expectation: training_step only encodes, so it is listed as not observed
    assert "vae.decoder:output" in bad.unobserved and "did not call" in bad.unobserved["vae.decoder:output"]["why"]

    good = run_check(cfg(tmp_path, text.replace("NORM", "symmetric"), "good.yaml"), batches=2, progress=False)
    assert good.ok, good.format()
    assert good.taps["vae.encoder:input"].convention == "symmetric"


def test_lightning_cli_config_with_callback_entry(tmp_path, capsys):
    text = """
seed_everything: 0
trainer:
  max_steps: 100
  callbacks:
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
    - class_path: rangewatch.RangeWatch
      init_args:
        expect: {vae.encoder: symmetric}
model:
  class_path: helpers.fixtures_check.ConvVAEModule
  init_args: {latent_channels: 8}
data:
  class_path: helpers.fixtures_check.PhotoDataModule
  init_args: {normalize: unit, n: 32}
optimizer:
  class_path: torch.optim.Adam
  init_args: {lr: 0.001}
"""
    rc, out, _ = check(capsys, cfg(tmp_path, text))
    assert rc == 1
    assert "ERROR [mismatch] vae.encoder:input: saw unit, expected symmetric" in out


def test_config_nested_under_fit(tmp_path):
    text = "fit:\n" + "".join(f"  {line}\n" for line in UNIT_VAE.strip().splitlines())
    rep = run_check(cfg(tmp_path, text), batches=2, progress=False)
    assert [f.where for f in rep.problems] == ["vae.encoder:input"]


def test_manual_optimisation_and_on_after_batch_transfer(tmp_path, capsys):
    """training_step needs a Trainer (manual optimisation): validation_step runs instead; the datamodule turns
    uint8 batches into [-1, 1] in on_after_batch_transfer: the taps see the batch after the hook."""
    text = """
trainer:
  callbacks:
    class_path: rangewatch.callback.RangeWatch
    init_args: {expect: {vae.encoder: symmetric}}
model: {class_path: helpers.fixtures_check.ManualOptModule}
data: {class_path: helpers.fixtures_check.ScaleOnDeviceDataModule, init_args: {batch_size: 8}}
"""
    rep = run_check(cfg(tmp_path, text), batches=2, progress=False)
    assert rep.ok, rep.format()
    assert rep.taps["vae.encoder:input"].convention == "symmetric"
    assert rep.taps["batch.image"].convention == "symmetric"
    assert rep.model_call.startswith("validation_step")
    notes = "\n".join(rep.notes)
    assert "training_step raised RuntimeError" in notes and "trying validation_step" in notes
    assert "ScaleOnDeviceDataModule.on_after_batch_transfer" in notes and not rep.loader_predictions


def test_failing_model_is_a_note_and_the_loader_prediction_decides(tmp_path, capsys):
    text = """
data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {normalize: NORM, n: 32}}
model: {class_path: helpers.fixtures_check.BrokenModule}
rangewatch: {expect: {vae.encoder: symmetric}}
"""
    rc, out, err = check(capsys, cfg(tmp_path, text.replace("NORM", "unit")))
    assert rc == 1, out + err
    assert "training_step raised KeyError: 'lq'" in out
    assert "vae.encoder:input: expects symmetric" in out and "could not be run" in out
    assert "MISMATCH (predicted from the transforms; vae.encoder:input was not observed)" in out
    assert "fix: apply x * 2 - 1" in out
    rc, out, err = check(capsys, cfg(tmp_path, text.replace("NORM", "symmetric")))
    assert rc == 0, out + err
    assert "training_step raised KeyError: 'lq'" in out


def test_no_model(tmp_path, capsys):
    text = """
data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {normalize: imagenet, n: 8}}
rangewatch: {expect: {batch.image: imagenet, batch.imgae: unit}}
"""
    rc, out, _ = check(capsys, cfg(tmp_path, text), batches=4)
    assert rc == 0, out
    assert "model: none given" in out
    assert "batch.image: imagenet (confident); expected imagenet" in out
    assert "batch.imgae: expects unit" in out and "seen: batch.image" in out  # a typo shows as not observed
    assert "the train loader ran out after 2 batches (asked for 4)" in out
    rc, out, _ = check(capsys, cfg(tmp_path, text.replace("normalize: imagenet", "normalize: unit")))
    assert rc == 1
    assert "ERROR [mismatch] batch.image: saw unit, expected imagenet" in out
    assert "at the end of the dataset transform" in out


# ---------------------------------------------------------------------------------------------- bad configs
BAD = {
    "unknown top-level key": ("dataa: {class_path: helpers.fixtures_check.PhotoDataModule}\n", ["unknown top-level key 'dataa'", "did you mean 'data'"]),
    "RangeWatch option at top level": ("data: helpers.fixtures_check.PhotoDataModule\nexpect: {vae.encoder: symmetric}\n", ["unknown top-level key 'expect'", "go under 'rangewatch:'"]),
    "missing data": ("model: {class_path: helpers.fixtures_check.ConvVAEModule}\n", ["missing top-level key 'data'"]),
    "data without class_path": ("data: {init_args: {n: 4}}\n", ["'data.class_path' is missing"]),
    "module not importable": ("data: {class_path: nosuchpkg.data.MyDataModule}\n", ["'data.class_path' = 'nosuchpkg.data.MyDataModule'", "ModuleNotFoundError", "nosuchpkg"]),
    "class not in module": ("data: {class_path: helpers.fixtures_check.NoSuchDataModule}\n", ["'data.class_path' = 'helpers.fixtures_check.NoSuchDataModule'", "has no 'NoSuchDataModule'"]),
    "not a datamodule": ("data: {class_path: helpers.fixtures_check.ConvVAEModule}\n", ["'data.class_path'", "not a LightningDataModule"]),
    "model not importable": ("data: helpers.fixtures_check.PhotoDataModule\nmodel: {class_path: helpers.fixtures_check.VAE}\n", ["'model.class_path' = 'helpers.fixtures_check.VAE'"]),
    "unknown init arg": (
        "data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {normalise: unit}}\n",
        ["'data.init_args.normalise' is not an argument of helpers.fixtures_check.PhotoDataModule", "did you mean 'normalize'", "Allowed: normalize, batch_size, n, size"],
    ),
    "init raises": ("data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {normalize: sRGB}}\n", ["data: helpers.fixtures_check.PhotoDataModule(**init_args) raised ValueError", "normalize='sRGB'"]),
    "bad option value": ("data: helpers.fixtures_check.PhotoDataModule\nrangewatch: {policy: loud}\n", ["rangewatch: option 'policy' = 'loud' is not allowed", "'warn'"]),
    "bad convention": ("data: helpers.fixtures_check.PhotoDataModule\nrangewatch: {expect: {vae.encoder: symetric}}\n", ["expect['vae.encoder']", "'symetric' is not a known convention"]),
    "unknown option": ("data: helpers.fixtures_check.PhotoDataModule\nrangewatch: {polcy: warn}\n", ["unknown RangeWatch option 'rangewatch.polcy'", "did you mean 'policy'"]),
    "bad option in trainer.callbacks": (
        "data: helpers.fixtures_check.PhotoDataModule\ntrainer: {callbacks: [{class_path: rangewatch.RangeWatch, init_args: {check_first_n: -1}}]}\n",
        ["trainer.callbacks[0].init_args", "'check_first_n' = -1"],
    ),
    "unknown submodule": (
        "data: helpers.fixtures_check.PhotoDataModule\nmodel: helpers.fixtures_check.ConvVAEModule\nrangewatch: {expect: {vae.encodr: symmetric}}\n",
        ["no submodule named 'vae.encodr'", "did you mean 'vae.encoder'"],
    ),
    "options twice": (
        "data: helpers.fixtures_check.PhotoDataModule\nrangewatch: {}\ntrainer: {callbacks: [{class_path: rangewatch.RangeWatch}]}\n",
        ["more than once", "rangewatch", "trainer.callbacks[0].init_args"],
    ),
    "not yaml": ("data: {class_path: [\n", ["not valid YAML"]),
    "datamodule setup fails": ("data: {class_path: helpers.fixtures_check.PhotoDataModule, init_args: {n: 0}}\n", ["PhotoDataModule.setup('fit') raised"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_exit_2_one_line(tmp_path, capsys, case):
    text, expected = BAD[case]
    rc, out, err = check(capsys, cfg(tmp_path, text))
    assert rc == 2, out + err
    assert out == ""
    line = err.rstrip("\n")
    assert "\n" not in line and line.startswith("rangewatch check: error: ")
    assert "Traceback" not in err
    for s in expected:
        assert s in line, line


def test_missing_file(tmp_path, capsys):
    rc, _, err = check(capsys, str(tmp_path / "nope.yaml"))
    assert rc == 2 and "does not exist" in err


def test_api_raises_config_and_check_errors(tmp_path):
    with pytest.raises(ConfigError, match="'data.init_args.normalise'"):
        run_check(cfg(tmp_path, BAD["unknown init arg"][0]), progress=False)
    with pytest.raises(CheckError, match=r"setup\('fit'\)"):
        run_check(cfg(tmp_path, BAD["datamodule setup fails"][0]), progress=False)
    with pytest.raises(ConfigError, match="batches"):
        run_check(cfg(tmp_path, UNIT_VAE), batches=0, progress=False)


# ---------------------------------------------------------------------------------------------- the command line
def test_cli_main_in_process(tmp_path, capsys):
    if not cli_has_check():
        pytest.skip("`rangewatch check` is not wired into rangewatch/cli/main.py yet")
    from rangewatch.cli.main import main

    path = cfg(tmp_path, UNIT_VAE)
    assert main(["check", path, "--batches", "2", "--no-progress"]) == 1
    assert "vae.encoder:input" in capsys.readouterr().out
    assert main(["check", path, "--json", "--no-progress"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
    """The command as CI runs it: exit code 1 on a mismatch, JSON on stdout, exit 2 on a bad config."""
    if cli_has_check():
        cmd = [sys.executable, "-m", "rangewatch.cli.main", "check"]
    else:  # until the subcommand is wired: the same function, its argument names
        cmd = [sys.executable, "-c",
               "import sys, argparse; from rangewatch.preflight import main_check; a = sys.argv[1:]; "
               "sys.exit(main_check(argparse.Namespace(config=a[0], batches=8, json='--json' in a, no_progress='--no-progress' in a)))"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    path = cfg(tmp_path, UNIT_VAE)
    p = subprocess.run([*cmd, path, "--json", "--no-progress"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    assert d["taps"]["vae.encoder:input"]["status"] == "mismatch"
    bad = cfg(tmp_path, BAD["unknown top-level key"][0], "bad.yaml")
    p = subprocess.run([*cmd, bad], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "unknown top-level key 'dataa'" in p.stderr and "Traceback" not in p.stderr
