"""rangewatch is never the cause of a failed or hung run (issue 14): odd tensors, TorchScript,
torch.compile, hostile configs. Each test reproduces one reported run-killer or wrong verdict through
the public API (real Lightning fits, the real ``rangewatch check`` command)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from helpers import fit as quiet
from helpers.compiled import CompiledBody, GraphCount
from rangewatch import ConfigError, RangeMismatchError, RangeWatch
from rangewatch.checks.numerics import ModuleTracer
from rangewatch.preflight import main_check

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


# ---------------------------------------------------------------------------------------------- helpers
class _ListData(torch.utils.data.Dataset):
    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def _loader(batches: list) -> DataLoader:
    return DataLoader(_ListData(batches), batch_size=None, collate_fn=lambda b: b)


def fit(model: pl.LightningModule, batches: list, watch: RangeWatch | None, steps: int | None = None, **kw) -> pl.Trainer:
    kw.setdefault("callbacks", [watch] if watch is not None else [])
    return quiet.fit(model, _loader(batches), **{"max_steps": steps or len(batches), "limit_val_batches": 0, **kw})


class Conv(pl.LightningModule):
    """A small conv net; ``pick`` says where the image is in the batch; ``feed(batch)`` is run through ``side``;
    ``enc()`` builds the encoder (default: a 3 -> 4 conv)."""

    def __init__(self, pick=lambda b: b["image"], side: nn.Module | None = None, feed=None, enc=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pick, self.feed = pick, feed
        self.enc = enc() if enc is not None else nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)
        self.side = side if side is not None else nn.Identity()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x = self.pick(batch).float().nan_to_num(0.0)
        if self.feed is not None:
            self.side(self.feed(batch))
        loss = self.head(self.enc(x).mean(dim=(2, 3))).pow(2).mean()
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def internal(watch: RangeWatch) -> list:
    return [f for f in watch.findings if f.kind == "internal"]


def img(n: int = 2, c: int = 3, s: int = 16, lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, s, s, generator=g) * (hi - lo) + lo


def nested(c: int = 3) -> torch.Tensor:
    return torch.nested.nested_tensor([torch.rand(c, 16, 16), torch.rand(c, 16, 20)], layout=torch.jagged)


def odd_tensors() -> dict[str, torch.Tensor]:
    return {
        "coo": img().to_sparse(),
        "csr": torch.rand(6, 16).to_sparse_csr(),
        "jagged": nested(),
        "nested_strided": torch.nested.nested_tensor([torch.rand(3, 16, 16), torch.rand(3, 16, 20)]),
        "meta": torch.empty(2, 3, 16, 16, device="meta"),
    }


# ---------------------------------------------------------------------------------------------- item 2
class Passthrough(nn.Module):
    """A leaf module that takes whatever it is given (sparse / nested) and returns a dense tensor."""

    def forward(self, x):
        return torch.zeros(1)


@pytest.mark.parametrize("kind", ["coo", "csr", "jagged", "nested_strided"])
def test_tracer_skips_odd_tensors_and_never_raises_into_the_model(kind):
    t = odd_tensors()[kind]
    model = nn.Sequential(Passthrough(), nn.Linear(1, 1))
    with ModuleTracer(model, "all") as tracer:
        out = model(t)  # raised "aminmax on SparseCPU" / "unsupported tensor layout" before
    assert out.shape == (1,)
    rep = tracer.report()
    assert not rep.nonfinite
    said = {"coo": "sparse_coo", "csr": "sparse_csr", "jagged": "nested", "nested_strided": "nested"}[kind]
    assert any(f"a {said} tensor" in n for n in tracer.notes), tracer.notes


@pytest.mark.slow
def test_tracer_all_in_a_fit_with_sparse_and_nested_inputs():
    side = nn.Sequential(Passthrough())
    batches = [{"image": img(seed=i), "extra": odd_tensors()[k]} for i, k in enumerate(["coo", "csr", "jagged"])]
    ref = Conv(side=side, feed=lambda b: b["extra"])
    fit(ref, batches, None)
    model = Conv(side=nn.Sequential(Passthrough()), feed=lambda b: b["extra"])
    watch = RangeWatch(trace_modules="all", log_every_n_steps=1)
    fit(model, batches, watch)
    assert model.losses == ref.losses
    assert not [f for f in watch.findings if f.kind not in ("note",)], watch.findings


# ---------------------------------------------------------------------------------------------- item 3
@pytest.mark.slow
def test_module_taps_on_nested_tensors_skip_with_a_note():
    batches = [{"image": img(seed=i)} for i in range(3)]
    model = Conv(side=nn.Identity(), feed=lambda b: nested())
    watch = RangeWatch(modules=["side"], expect={"enc": "unit"}, log_every_n_steps=1)
    fit(model, batches, watch)
    assert model.global_step == 3
    assert not internal(watch), internal(watch)
    assert "enc:input" in watch.taps and not watch.taps["enc:input"].disabled
    assert any("side:input" in n and "nested" in n for n in watch.notes), watch.notes


# ---------------------------------------------------------------------------------------------- item 4
class ScriptedEnc(Conv):
    """``Conv`` with a TorchScript encoder (conv + ReLU, scripted)."""

    def __init__(self) -> None:
        super().__init__(enc=lambda: torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())))


def _hooks(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule):
            continue
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
    return n


@pytest.mark.slow
def test_script_submodule_in_expect_is_skipped_with_a_note():
    batches = [{"image": img(seed=i)} for i in range(2)]
    model = ScriptedEnc()
    watch = RangeWatch(expect={"enc": "symmetric"}, modules=["enc.0"], log_every_n_steps=1)
    fit(model, batches, watch)  # "register_forward_pre_hook is not supported on ScriptModules" killed the run
    assert model.global_step == 2
    assert not internal(watch)
    assert any("ScriptModule" in n for n in watch.notes), watch.notes
    assert _hooks(model) == 0


@pytest.mark.slow
def test_tracer_all_with_script_submodule_leaves_no_hook_behind():
    batches = [{"image": img(seed=i)} for i in range(2)]
    model = ScriptedEnc()
    watch = RangeWatch(trace_modules="all", log_every_n_steps=1)
    fit(model, batches, watch)
    assert model.global_step == 2
    assert _hooks(model) == 0


def test_module_taps_remove_every_placed_hook_when_one_fails():
    from rangewatch.taps.hooks import ModuleTaps

    class Refuses(nn.Module):
        def register_forward_hook(self, *a, **k):  # a module whose hooks cannot be placed
            raise RuntimeError("no hooks here")

        def forward(self, x):
            return x

    root = nn.Sequential(nn.Identity(), Refuses(), nn.Identity())
    taps = ModuleTaps(lambda name, t: None)
    taps.attach(root, {"0": {"input", "output"}, "1": {"input", "output"}, "2": {"input", "output"}})
    assert "1" not in taps.attached and set(taps.attached) == {"0", "2"}
    assert taps.skipped and "1" in taps.skipped[0]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in root.modules()) == 4
    taps.detach()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in root.modules()) == 0


# ---------------------------------------------------------------------------------------------- item 6
def _laughs() -> str:
    """A flow list whose last item expands to 9**9 strings through aliases (343 bytes of "billion laughs")."""
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        parts.append(f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


BOMBS = {
    "expect": "data: {class_path: test_robustness.OddBatchDataModule}\nrangewatch: {expect: LAUGHS}\n",
    "hist_bins": "data: {class_path: test_robustness.OddBatchDataModule}\nrangewatch: {hist_bins: LAUGHS}\n",
    "unknown option": "data: {class_path: test_robustness.OddBatchDataModule}\nrangewatch: {nope: LAUGHS}\n",
    "data": "data: LAUGHS\n",
    "init_args": "data: {class_path: test_robustness.OddBatchDataModule, init_args: LAUGHS}\n",
    "callbacks": "data: {class_path: test_robustness.OddBatchDataModule}\ntrainer: {callbacks: LAUGHS}\n",
    "top-level": "data: {class_path: test_robustness.OddBatchDataModule}\nnope: LAUGHS\n",
}


_BOMB_SCRIPT = """
import contextlib, io, json, sys
from rangewatch import RangeWatch, ConfigError
from rangewatch.cli.main import main
out = {}
for name in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["check", name + ".yaml", "--no-progress"])
    out[name] = (rc, err.getvalue())
try:
    RangeWatch.from_yaml("from_yaml.yaml")
    out["from_yaml"] = (0, "accepted")
except ConfigError as e:
    out["from_yaml"] = (2, str(e))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_yaml_alias_bomb_is_a_config_error_in_bounded_memory(tmp_path):
    """343 bytes that alias-expand to 9**9 strings, under every key a config has: `rangewatch check`
    exits 2 with a short message and `RangeWatch.from_yaml` raises ConfigError, in one process whose
    address space is limited (it grew to 22.5 GB before)."""
    for name, text in BOMBS.items():
        (tmp_path / f"{name.replace(' ', '_')}.yaml").write_text(text.replace("LAUGHS", _laughs()))
    (tmp_path / "from_yaml.yaml").write_text(
        "trainer:\n  callbacks:\n  - class_path: rangewatch.RangeWatch\n    init_args: {expect: LAUGHS}\n".replace("LAUGHS", _laughs()))
    names = [n.replace(" ", "_") for n in BOMBS]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1")
    limit = 6 << 30
    pre = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    r = subprocess.run([sys.executable, "-c", pre + _BOMB_SCRIPT, *names], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    for name in [*names, "from_yaml"]:
        rc, err = got[name]
        assert rc == 2, (name, err[-1000:])
        assert "Traceback" not in err and len(err) < 1500 and "alias" in err, (name, err[-1000:])


def test_error_messages_echo_a_bounded_value():
    huge = list(range(100_000))
    for kw in ({"hist_bins": huge}, {"policy": "x" * 10_000}, {"expect": {"batch.x": "y" * 10_000}}, {"modules": [huge]}):
        with pytest.raises(ConfigError) as e:
            RangeWatch(**kw)
        assert len(str(e.value)) < 1500, (kw.keys(), len(str(e.value)))


# ---------------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("key,value", [("hist_bins", 10**9), ("trace_history", 10**8), ("check_first_n", 10**12)])
def test_size_options_are_bounded(key, value):
    with pytest.raises(ConfigError, match=key) as e:
        RangeWatch(**{key: value})
    assert "<=" in str(e.value) or "at most" in str(e.value)


def test_largest_allowed_hist_bins_still_works():
    from rangewatch.config import MAX_HIST_BINS

    RangeWatch(hist_bins=MAX_HIST_BINS)
    with pytest.raises(ConfigError):
        RangeWatch(hist_bins=MAX_HIST_BINS + 1)


# ---------------------------------------------------------------------------------------------- item 8
@pytest.mark.slow
def test_meta_tensors_and_an_early_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class MetaProbe(Conv):
        def training_step(self, batch, batch_idx):
            self.side(torch.empty(2, 3, 16, 16, device="meta"))  # shape inference on the meta device
            return super().training_step(batch, batch_idx)

    batches = [{"image": img(seed=i)} for i in range(3)]  # (Lightning itself cannot move a meta batch)
    model = MetaProbe()
    watch = RangeWatch(modules=["side"], log_every_n_steps=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = quiet.trainer([watch, ckpt], max_steps=3, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=_loader(batches))
    assert trainer.global_step == 3
    assert not internal(watch), internal(watch)
    state = watch.state_dict()
    assert all(v.device.type == "cpu" for tap in state["taps"].values() for v in tap["stats"].values())
    assert len(list(tmp_path.glob("*.ckpt"))) == 3


# ---------------------------------------------------------------------------------------------- item 9
def test_find_images_skips_only_the_odd_leaves():
    from rangewatch.taps.batches import find_images

    nan = torch.full((2, 3, 16, 16), float("nan"))
    batch = {"image": nan, **odd_tensors(), "nest": {"deep": [nested(), img()]}}
    notes: list[tuple[str, str]] = []
    found = find_images(batch, notes=notes)
    assert [f.path for f in found] == ["batch.image", "batch.nest.deep[1]"]
    assert sorted(path for path, _ in notes) == sorted(
        ["batch.coo", "batch.csr", "batch.jagged", "batch.nested_strided", "batch.meta", "batch.nest.deep[0]"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["coo", "jagged", "nested_strided"])
def test_one_odd_leaf_does_not_blind_the_batch(kind):
    batches = [{"image": torch.full((2, 3, 16, 16), float("nan")), "odd": odd_tensors()[kind]} for _ in range(2)]
    watch = RangeWatch(log_every_n_steps=1)
    fit(Conv(), batches, watch)
    nf = [f for f in watch.findings if f.kind == "nonfinite" and f.where == "batch.image"]
    assert nf, watch.findings
    assert not internal(watch), internal(watch)


def test_check_sees_the_nan_image_beside_a_nested_tensor(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("data: {class_path: test_robustness.OddBatchDataModule, init_args: {odd: jagged}}\n")
    rc, out, err = _check(capsys, str(p))
    assert rc == 1, out + err
    assert "result: OK" not in out and "NaN/Inf" in out


class OddBatchDataModule(pl.LightningDataModule):
    """Batches with an all-NaN ``image`` beside one odd tensor (``odd``: a key of :func:`odd_tensors`)."""

    def __init__(self, odd: str = "jagged") -> None:
        super().__init__()
        self.odd = odd

    def train_dataloader(self):
        return _loader([{"image": torch.full((2, 3, 16, 16), float("nan")), "odd": odd_tensors()[self.odd]} for _ in range(2)])


def _check(capsys, path: str, batches: int = 2) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main_check(argparse.Namespace(config=path, batches=batches, json=False, no_progress=True))
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------- item 11
@pytest.mark.slow
@pytest.mark.parametrize("conv,channels", [("sdxl_latent", 16), ("imagenet", 2)])
def test_declared_convention_that_does_not_fit_the_channels_is_a_mismatch(conv, channels):
    batches = [{"image": img(seed=i), "z": img(c=channels, seed=i)} for i in range(2)]
    watch = RangeWatch(expect={"batch.z": conv}, log_every_n_steps=1)
    with pytest.warns(UserWarning, match="channel"):
        fit(Conv(), batches, watch)
    assert not internal(watch), internal(watch)
    mm = [f for f in watch.findings if f.kind == "mismatch" and f.where == "batch.z"]
    assert mm and str(channels) in mm[0].evidence and mm[0].severity == "error", watch.findings

    watch = RangeWatch(expect={"batch.z": conv}, policy="raise", log_every_n_steps=1)
    with pytest.raises(RangeMismatchError, match="channel"):
        fit(Conv(), batches, watch)


# ---------------------------------------------------------------------------------------------- item 12
@pytest.mark.slow
def test_module_taps_on_token_sequences_of_varying_length_use_per_tensor_statistics():
    lengths = [7, 5, 9]
    batches = [{"image": img(seed=i), "len": torch.tensor(n)} for i, n in enumerate(lengths)]
    seqs = [torch.randn(2, n, 8, generator=torch.Generator().manual_seed(n)) * 3 for n in lengths]
    model = Conv(side=nn.LayerNorm(8), feed=lambda b: seqs[lengths.index(int(b["len"]))])
    watch = RangeWatch(modules=["side:input"], log_every_n_steps=1, check_first_n=0)
    seen = []
    check = watch.engine.check

    def spy(step=None, split="train"):  # what each check reads, read just before it
        s = watch.engine.summaries(split).get("side:input")
        if s is not None and not s.empty:
            seen.append((s.channels, float(s.min[0]), float(s.max[0])))
        return check(step, split)

    watch.engine.check = spy
    fit(model, batches, watch)
    assert not internal(watch), internal(watch)  # "RangeStats saw 7 channels before and now 5" before
    assert [c for c, _, _ in seen] == [1, 1, 1]
    for (_, mn, mx), t in zip(seen, seqs):
        assert mn == pytest.approx(float(t.min())) and mx == pytest.approx(float(t.max()))


# ---------------------------------------------------------------------------------------------- item 14
@pytest.mark.parametrize("kw,needle", [
    ({"trace_modules": "ALL"}, "trace_modules"),
    ({"trace_modules": []}, "trace_modules"),
    ({"trace_modules": 5}, "trace_modules"),
    ({"headroom_share": 0}, "headroom_share"),
    ({"headroom_share": 1.5}, "headroom_share"),
])
def test_bad_tracer_options_are_config_errors(kw, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        RangeWatch(**kw)
    assert "allowed" in str(e.value) or "must" in str(e.value)


@pytest.mark.slow
def test_trace_modules_naming_a_missing_module_is_a_config_error():
    watch = RangeWatch(trace_modules=["nope"])
    with pytest.raises(ConfigError, match="trace_modules.*nope"):
        fit(Conv(), [{"image": img()}], watch)


@pytest.mark.slow
def test_trace_modules_patterns_that_exist_work():
    watch = RangeWatch(trace_modules=["en*"], log_every_n_steps=1)
    model = Conv()
    fit(model, [{"image": img()}], watch)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # the tracer is off the model
    assert not internal(watch)


def test_from_yaml_directory_binary_and_bad_callbacks(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        RangeWatch.from_yaml(tmp_path)
    b = tmp_path / "bin.yaml"
    b.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 10)
    with pytest.raises(ConfigError, match="UTF-8|text"):
        RangeWatch.from_yaml(b)
    c = tmp_path / "cb.yaml"
    c.write_text("trainer: {callbacks: 5}\n")
    with pytest.raises(ConfigError, match=r"trainer.callbacks.*5.*list"):
        RangeWatch.from_yaml(c)


# ---------------------------------------------------------------------------------------------- item 15
@pytest.mark.slow
def test_expectations_block_and_metadata_read_once_per_fit(caplog, monkeypatch):
    import logging

    from rangewatch.expect import models as model_expectations

    calls = []
    real = model_expectations.derive_expectations
    monkeypatch.setattr(model_expectations, "derive_expectations", lambda *a, **k: calls.append(1) or real(*a, **k))

    class WithVal(Conv):
        def validation_step(self, batch, batch_idx):
            self.enc(batch["image"])

    batches = [{"image": img(seed=i)} for i in range(2)]
    watch = RangeWatch(expect={"batch.image": "unit"})
    with caplog.at_level(logging.INFO):
        quiet.fit(WithVal(), _loader(batches), _loader(batches), callbacks=[watch], max_epochs=5, num_sanity_val_steps=2)
    assert caplog.text.count("rangewatch expectations") == 1, caplog.text.count("rangewatch expectations")
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------- item 13
class RaisingStepModule(pl.LightningModule):
    """``training_step`` raises (a missing batch key); the declared module expectation is never reached."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)

    def training_step(self, batch, batch_idx):
        return self.enc(batch["lq"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class PlainImageDataModule(pl.LightningDataModule):
    """Plain tensors with no transforms to read, so no loader prediction can stand in for the model."""

    def train_dataloader(self):
        return _loader([{"image": img(seed=i)} for i in range(2)])


def test_check_exit_codes_binary_yaml_scriptmodule_and_raising_step(tmp_path, capsys):
    b = tmp_path / "bin.yaml"
    b.write_bytes(b"data: \xff\xfe\x00\x89PNG\r\n")
    rc, out, err = _check(capsys, str(b))
    assert rc == 2 and "Traceback" not in err and "UTF-8" in err, (rc, err)

    s = tmp_path / "script.yaml"
    s.write_text("data: {class_path: test_robustness.PlainImageDataModule}\nmodel: {class_path: test_robustness.ScriptedEnc}\n"
                 "rangewatch: {expect: {enc: symmetric}}\n")
    rc, out, err = _check(capsys, str(s))
    assert rc == 2, (rc, out, err)  # "register_forward_pre_hook is not supported on ScriptModules" exited 1 before
    assert "TorchScript" in out and "result: NOT CHECKED: enc:input" in out and "result: OK" not in out

    r = tmp_path / "raise.yaml"
    r.write_text("data: {class_path: test_robustness.PlainImageDataModule}\nmodel: {class_path: test_robustness.RaisingStepModule}\n"
                 "rangewatch: {expect: {enc: symmetric}}\n")
    rc, out, err = _check(capsys, str(r))
    assert rc == 2, (rc, out, err)
    assert "training_step raised KeyError" in out and "result: NOT CHECKED: enc:input" in out and "result: OK" not in out


# ---------------------------------------------------------------------------------------------- item 16
def test_check_help_and_readme_say_a_config_is_code():
    from rangewatch.cli.main import build_parser

    sub = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0]
    assert "a config is code" in sub.choices["check"].format_help().lower()
    assert "a config is code" in (ROOT / "README.md").read_text().lower()


# ---------------------------------------------------------------------------------------------- item 5
def compiled_body(compiled: bool) -> CompiledBody:
    """A conv body compiled in place (``nn.Module.compile``: the submodule names stay), taps inside it; ``eager``:
    dynamo's tracing and guards, without inductor's C++ build."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    return CompiledBody(body, "eager" if compiled else None, key="image")


@pytest.mark.slow
def test_hooks_are_invisible_to_torch_compile():
    import torch._dynamo as dynamo

    batches = [{"image": img(lo=0, hi=1, seed=i)} for i in range(6)]
    results = []
    for compiled in (False, True):
        dynamo.reset()
        dynamo.utils.counters.clear()
        model = compiled_body(compiled)
        watch = RangeWatch(expect={"body.0": "symmetric"}, modules=["body.2:output"], trace_modules="all", log_every_n_steps=1)
        count = GraphCount()
        fit(model, batches, watch, callbacks=[watch, count])
        results.append((model.losses, sorted((f.kind, f.where, f.observed, f.expected) for f in watch.findings), count.graphs))
    (eager_losses, eager_findings, _), (comp_losses, comp_findings, graphs) = results
    # dynamo traced into the hooks (rangewatch's Python state in its guards) and recompiled every step, up to
    # the recompile limit; now the graphs are made at the first step(s) and never again
    assert graphs[0] > 0 and graphs[-1] == graphs[1], graphs
    assert comp_findings == eager_findings and ("mismatch", "body.0:input", "unit", "symmetric") in eager_findings
    assert comp_losses == pytest.approx(eager_losses, rel=1e-5)
