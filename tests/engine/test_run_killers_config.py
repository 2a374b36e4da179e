"""Bad values are found at construction, a foreign state never stops a resume, odd batch tensors are said
once, and the report CLI ends in one line (issue 23, items 5, 6, 7 and 8)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import rangewatch
from rangewatch import ConfigError, RangeWatch


# ---------------------------------------------------------------------------------- item 5: config
@pytest.mark.parametrize("bad", ["enc:sideways", "vae.encoder:inputs"])
def test_modules_key_with_a_bad_side_is_a_config_error_at_construction(bad):
    for make in (lambda: RangeWatch(modules=[bad]), lambda: rangewatch.Watch(modules=["ok", bad])):
        with pytest.raises(ConfigError, match=r"option 'modules' entry .*after ':' use 'input' or 'output'") as e:
            make()
        assert repr(bad) in str(e.value)
    RangeWatch(modules=["enc", "enc:output", "vae.decoder:input"])  # the allowed forms


@pytest.mark.parametrize("path", [123, None, b"config.yaml", "conf\x00ig.yaml", 1.5, ["a.yaml"]])
def test_from_yaml_with_a_path_that_is_no_path_is_a_config_error(path):
    with pytest.raises(ConfigError, match="config file path"):
        RangeWatch.from_yaml(path)


def test_every_config_error_from_a_yaml_file_names_the_file(tmp_path):
    cases = {
        "modules.yaml": "rangewatch:\n  modules: ['enc:sideways']\n",
        "policy.yaml": "policy: loud\n",
        "expect.yaml": "expect: {'batch.image': not_a_convention}\n",
        "bins.yaml": "trainer:\n  callbacks:\n    - class_path: rangewatch.RangeWatch\n      init_args: {hist_bins: -3}\n",
        "unknown.yaml": "polcy: warn\n",
        "notyaml.yaml": "a: [1, 2\n",
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            RangeWatch.from_yaml(p)
        assert str(p) in str(e.value), (name, str(e.value))
    good = tmp_path / "good.yaml"
    good.write_text("expect: {'nothere': symmetric}\npolicy: log\n")
    watch = RangeWatch.from_yaml(good)
    with pytest.raises(ConfigError, match=re.escape(str(good)) + ".*no submodule named 'nothere'"):  # found at fit start
        watch.engine.attach(nn.Sequential(nn.Conv2d(3, 3, 1)))


# ---------------------------------------------------------------------------------- item 6: foreign state
_OPEN: list = []


@pytest.fixture(autouse=True)
def _close_watches():
    """Each watch a test trains is closed after it: an attached watch keeps its process-wide patches
    (torchmetrics' functions among them), which would leak into the tests that run after this file."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _trained_watch(**kw) -> tuple[rangewatch.Watch, nn.Module]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    notes: list[str] = []
    w = rangewatch.watch(model, expect={"0": "symmetric"}, policy="log", watch_visualization=False,
                         messages=lambda level, text: notes.append(text), **kw)
    w.said = notes  # type: ignore[attr-defined]
    _OPEN.append(w)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.rand(4, 3, 16, 16, generator=g)
        w.batch(x)
        model(x)
        w.step()
    return w, model


@pytest.mark.parametrize("state", [
    {"version": 99, "taps": None},
    {"version": 1, "train_batches": -4},
    {"version": 1, "train_batches": "12"},
    {"version": 1, "findings": [{"kind": "mismatch"}]},
    {"version": 1, "taps": [1, 2]},
    {"version": 1, "reported": 7},
    "not a dict",
    None,
])
def test_a_foreign_or_tampered_state_is_noted_once_dropped_and_the_run_goes_on(state):
    w, model = _trained_watch()
    before = [f.key for f in w.findings]
    w.load_state_dict(state)
    w.load_state_dict(state)
    said = [t for t in w.said if "saved rangewatch state cannot be read" in t]
    assert len(said) == 1, w.said
    assert [f.key for f in w.findings] == before and w.train_batches == 2  # nothing of it was taken
    x = torch.rand(4, 3, 16, 16)
    w.batch(x)
    model(x)
    w.step()  # the run goes on
    assert w.train_batches == 3


def test_a_tampered_window_starts_empty_with_a_note_and_a_good_state_resumes():
    w, _ = _trained_watch()
    state = w.state_dict()
    good, model = _trained_watch()
    good.load_state_dict(state)
    assert good.train_batches == 2 and [f.key for f in good.findings] == [f.key for f in w.findings]
    bad_state = dict(state, taps={k: dict(v, stats={"min": torch.zeros(7)}, steps_checked="x") for k, v in state["taps"].items()})
    bad, model = _trained_watch()
    bad.load_state_dict(bad_state)
    x = torch.rand(4, 3, 16, 16)
    bad.batch(x)
    model(x)
    bad.step()
    assert [t for t in bad.said if "cannot be read" in t and "starts an empty window" in t], bad.said
    assert not [f for f in bad.findings if f.kind == "internal"], bad.findings
    assert all(not t.disabled for t in bad.taps.values())


@pytest.mark.slow
def test_lightning_resume_from_a_checkpoint_with_foreign_rangewatch_state(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from helpers import fit as quiet
    from helpers.models import ConvAutoEncoder

    data = DataLoader(TensorDataset(torch.rand(8, 3, 16, 16)), batch_size=4)

    def trainer(steps, watch):
        return quiet.trainer([watch], max_steps=steps)

    first = RangeWatch(expect={"encoder": "symmetric"}, policy="log")
    t = trainer(2, first)
    t.fit(ConvAutoEncoder(nested=False), data)  # encoder / decoder
    ckpt = tmp_path / "a.ckpt"
    t.save_checkpoint(ckpt)
    blob = torch.load(ckpt, weights_only=False)
    (key,) = [k for k in blob["callbacks"] if "RangeWatch" in k]
    blob["callbacks"][key] = {"version": 99, "taps": None}  # another rangewatch's (or a tampered) state
    torch.save(blob, ckpt)
    second = RangeWatch(expect={"encoder": "symmetric"}, policy="log")
    t2 = trainer(4, second)
    t2.fit(ConvAutoEncoder(nested=False), data, ckpt_path=ckpt)  # the resume goes on
    assert t2.global_step == 4
    assert [n for n in second.notes if "saved rangewatch state cannot be read" in n], second.notes
    assert ("mismatch", "encoder:input") in [(f.kind, f.where) for f in second.findings]


# ---------------------------------------------------------------------------------- item 7: complex batch tensors
def test_a_complex_batch_tensor_is_skipped_with_one_note():
    w, model = _trained_watch()
    for _ in range(3):
        x = torch.rand(4, 3, 16, 16)
        w.batch({"image": x, "spectrum": torch.fft.fft2(x)})  # complex64 (4, 3, 16, 16)
        model(x)
        w.step()
    said = [t for t in w.said if "batch.spectrum" in t]
    assert len(said) == 1 and "complex64" in said[0], w.said
    assert "batch.spectrum" not in w.taps and "batch.image" in w.taps


# ---------------------------------------------------------------------------------- item 8: the report
def _run_with_an_image(root: Path, width: int, height: int) -> bytes:
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="PNG")  # a real 4 x 3 PNG
    png = buf.getvalue()
    with SummaryWriter(str(root / "run")) as sw:
        sw.add_scalar("rangewatch/batch.image/min/c0", 0.0, 0)
        img = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)  # the sizes it claims
        sw._get_file_writer().add_summary(Summary(value=[Summary.Value(tag="rangewatch/preview/x/clipped", image=img)]), 0)
    return png


def test_report_writes_the_images_real_size_not_the_events_claim(tmp_path):
    from rangewatch.sinks.report import build_report

    _run_with_an_image(tmp_path, width=10**9, height=7)
    page = build_report(tmp_path, tmp_path / "out").read_text()
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs, page[:2000]
    sizes = {(m[0], m[1]) for tag in imgs for m in re.findall(r'width="(\d+)" height="(\d+)"', tag)}
    assert sizes == {("32", "24")}, sizes  # 4 x 3 shown at 8x
    assert "1000000000" not in page


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "rangewatch.cli.main", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_report_cli_out_is_an_existing_file_one_line_exit_2(tmp_path):
    _run_with_an_image(tmp_path, width=4, height=3)
    target = tmp_path / "taken.html"
    target.write_text("mine")
    proc = _cli("report", str(tmp_path), "--out", str(target))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("rangewatch report: ") and str(target) in lines[0]
    assert target.read_text() == "mine"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root writes anywhere: no permission error to show
            return
        proc = _cli("report", str(tmp_path), "--out", str(ro / "sub"))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        ro.chmod(0o700)
