"""RangeWatch under real Lightning Trainer runs; TensorBoard event files are read back."""

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers import fit as quiet
from helpers.models import VAEModule
from helpers.photos import photo_batch
from rangewatch import ConfigError, RangeMismatchError, RangeWatch, get_convention
from rangewatch.sinks.loggers import detail_tag, tag

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def unit_photos(n=8, size=32):
    return photo_batch(n, size).float() / 255


class MultiEncoder(pl.LightningModule):
    """One loader, three encoders, each fed through its own normalisation (the IP-Adapter case)."""

    def __init__(self, norms: dict[str, str]):
        super().__init__()
        self.norms = norms
        self.vae = nn.Module()
        self.vae.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.image_encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dino = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def prep(self, u, who):
        return get_convention(self.norms[who]).from_unit(u)

    def training_step(self, batch, batch_idx):
        u = batch[0]
        z = self.vae.encoder(self.prep(u, "vae"))
        a = self.image_encoder(self.prep(u, "clip"))
        b = self.dino(self.prep(u, "dino"))
        return z.mean() + a.mean() + b.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def trainer(tmp_path, callbacks, logger=None, **kw):
    opts = {"max_steps": 2, "logger": logger if logger is not None else False, "limit_val_batches": 0, **kw}
    return quiet.trainer(callbacks, default_root_dir=tmp_path, **opts)


def loader(x, bs=4):
    return DataLoader(TensorDataset(x), batch_size=bs)


@pytest.mark.slow
def test_vae_range_caught_at_first_batch_with_fix(tmp_path):
    w = RangeWatch(expect={"vae.encoder": "symmetric"})
    with pytest.warns(UserWarning, match=r"(?s)vae\.encoder:input.*saw unit.*expected symmetric.*x \* 2 - 1"):
        trainer(tmp_path, [w]).fit(VAEModule(), loader(unit_photos()))
    mism = [f for f in w.findings if f.kind == "mismatch"]
    assert len(mism) == 1
    f = mism[0]
    assert (f.where, f.observed, f.expected, f.step) == ("vae.encoder:input", "unit", "symmetric", 0)
    assert "x * 2 - 1" in f.fix and "vae.encoder" in f.fix
    assert "0.000/0.000/0.000" in f.evidence  # the photos' minima sit on the [0,1] floors
    assert str(f).startswith("[mismatch] vae.encoder:input at step 0: saw unit; expected symmetric")


@pytest.mark.slow
def test_vae_range_silent_when_right(tmp_path):
    w = RangeWatch(expect={"vae.encoder": "symmetric", "batch[0]": "symmetric"})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rangewatch")
        trainer(tmp_path, [w]).fit(VAEModule(), loader(unit_photos() * 2 - 1))
    assert w.findings == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "norms,flagged",
    [
        ({"vae": "symmetric", "clip": "clip", "dino": "imagenet"}, set()),
        ({"vae": "symmetric", "clip": "imagenet", "dino": "clip"}, {"image_encoder:input", "dino:input"}),
        ({"vae": "clip", "clip": "symmetric", "dino": "imagenet"}, {"vae.encoder:input", "image_encoder:input"}),
    ],
)
def test_multi_norm_flags_exactly_the_swapped_taps(tmp_path, norms, flagged):
    w = RangeWatch(expect={"vae.encoder": "symmetric", "image_encoder": "clip", "dino": "imagenet"}, policy="log")
    trainer(tmp_path, [w], max_steps=1).fit(MultiEncoder(norms), loader(unit_photos()))
    got = {f.where for f in w.findings if f.kind == "mismatch"}
    assert got == flagged
    for f in w.findings:
        assert f.observed == {"vae.encoder:input": norms["vae"], "image_encoder:input": norms["clip"], "dino:input": norms["dino"]}[f.where]


@pytest.mark.slow
def test_policy_raise_stops_at_first_batch(tmp_path):
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="raise")
    t = trainer(tmp_path, [w], max_steps=50)
    with pytest.raises(RangeMismatchError, match=r"batch\[0\].*saw unit.*expected symmetric.*Fix: apply x \* 2 - 1") as e:
        t.fit(VAEModule(), loader(unit_photos()))
    assert t.global_step <= 1
    assert e.value.findings[0].where == "batch[0]"


@pytest.mark.slow
def test_policy_log_does_not_warn(tmp_path):
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="log")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rangewatch")
        trainer(tmp_path, [w]).fit(VAEModule(), loader(unit_photos()))
    assert [f.where for f in w.findings] == ["batch[0]"]


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(Path(logdir).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {logdir}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_tensorboard_scalars_histograms_text(tmp_path):
    x = unit_photos(8, 32) * 2 - 1
    x[5, 1, 3, 4] = float("nan")  # one NaN in the second batch
    # the raw per-channel layout and every histogram (the defaults log fewer tags: tests/sinks/test_ux.py)
    w = RangeWatch(expect={"batch[0]": "symmetric"}, check_first_n=2, log_every_n_steps=100, policy="log",
                   per_channel_scalars=True, histograms="all")
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [w], logger=logger, max_steps=2).fit(VAEModule(), loader(x, 4))
    acc = _scalars(logger.log_dir)
    tags = acc.Tags()
    first = x[:4].double().numpy()
    for c in range(3):
        ev = acc.Scalars(detail_tag("batch[0]", "min", c))
        assert [e.step for e in ev] == [0, 1]
        assert ev[0].value == pytest.approx(first[:, c].min(), abs=1e-6)
        assert acc.Scalars(detail_tag("batch[0]", "max", c))[0].value == pytest.approx(first[:, c].max(), abs=1e-6)
        assert acc.Scalars(detail_tag("batch[0]", "mean", c))[0].value == pytest.approx(first[:, c].mean(), abs=1e-5)
        assert acc.Scalars(detail_tag("batch[0]", "std", c))[0].value == pytest.approx(first[:, c].std(), abs=1e-5)
        assert acc.Scalars(detail_tag("batch[0]", "out_of_range", c))[0].value == 0.0
    second = x[4:].double().numpy()
    assert acc.Scalars(detail_tag("batch[0]", "nonfinite", 1))[1].value == 1.0
    assert acc.Scalars(detail_tag("batch[0]", "nonfinite", 0))[1].value == 0.0
    # finite minimum of channel 1 despite the NaN
    assert acc.Scalars(detail_tag("batch[0]", "min", 1))[1].value == pytest.approx(np.nanmin(second[:, 1]), abs=1e-6)
    hist = acc.Histograms(tag("batch[0]", "hist", 0))
    assert hist[0].step == 0 and hist[0].histogram_value.num == first[:, 0].size
    counts = np.array(hist[0].histogram_value.bucket)
    limits = np.array(hist[0].histogram_value.bucket_limit)
    # bucket i counts values below limit i and at/above limit i-1: compare with numpy
    ref, _ = np.histogram(first[:, 0].ravel(), bins=np.concatenate([[-np.inf], limits]))
    np.testing.assert_array_equal(counts, ref)
    assert "rangewatch/findings/text_summary" in tags["tensors"]
    assert [f.kind for f in w.findings] == ["nonfinite"]


@pytest.mark.slow
def test_csv_logger_gets_scalars_only(tmp_path):
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="log")
    logger = CSVLogger(tmp_path, name="csv")
    trainer(tmp_path, [w], logger=logger).fit(VAEModule(), loader(unit_photos()))
    text = Path(logger.log_dir, "metrics.csv").read_text()
    assert "rangewatch_channels/batch[0]/min/c0" in text and "hist" not in text


@pytest.mark.slow
def test_no_logger_findings_still_listed(tmp_path):
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="log")
    trainer(tmp_path, [w], logger=False).fit(VAEModule(), loader(unit_photos()))
    assert [f.kind for f in w.findings] == ["mismatch"]


@pytest.mark.slow
def test_validation_batches_are_watched(tmp_path):
    w = RangeWatch(expect={"batch[0]": "symmetric"}, policy="log")
    t = trainer(tmp_path, [w], max_steps=1, limit_val_batches=1, num_sanity_val_steps=1)
    t.fit(VAEModule(), loader(unit_photos() * 2 - 1), loader(unit_photos()))
    assert [f.where for f in w.findings] == ["val/batch[0]"]


class OddData(Dataset):
    """Batches with the odd tensors a real pipeline carries."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "u8": torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g),
            "half": torch.rand(3, 16, 16, generator=g).half(),
            "bf16": torch.rand(3, 16, 16, generator=g).bfloat16(),
            "nan": torch.full((3, 16, 16), float("nan")),
            "gray": torch.rand(1, 16, 16, generator=g),
            "video": torch.rand(4, 3, 16, 16, generator=g),
            "input_ids": torch.randint(0, 49408, (77,), generator=g),
            "flag": torch.tensor(True),
            "mask": torch.rand(1, 16, 16, generator=g) > 0.5,
            "vec": torch.rand(16, generator=g),
            "x": torch.rand(3, 16, 16, generator=g),
        }


class OddModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(3, 3, 1)
        self.embed = nn.Embedding(49408, 4)

    def training_step(self, batch, batch_idx):
        x = batch["x"].contiguous(memory_format=torch.channels_last)
        return self.net(x).mean() + self.embed(batch["input_ids"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_odd_tensors_never_traceback(tmp_path):
    w = RangeWatch(modules=["embed", "net"], policy="log")
    trainer(tmp_path, [w], max_steps=2).fit(OddModule(), DataLoader(OddData(), batch_size=4))
    taps = set(w.taps)
    assert {"batch.u8", "batch.half", "batch.bf16", "batch.nan", "batch.gray", "batch.video", "batch.x"} <= taps
    assert not any(t.startswith(("batch.input_ids", "batch.mask", "batch.flag", "batch.vec")) for t in taps)
    assert w.taps["embed:input"].disabled  # token ids: noted and skipped, not an error
    assert not [f for f in w.findings if f.kind == "internal"]
    assert {f.where for f in w.findings if f.kind == "nonfinite"} == {"batch.nan"}
    assert w.taps["batch.u8"].inferred.name == "uint8"
    # torch.rand data is [0,1] whatever the dtype, channel count, rank or memory format
    for tap in ("batch.half", "batch.bf16", "batch.gray", "batch.video", "batch.x", "net:input"):
        assert (w.taps[tap].inferred.name, w.taps[tap].inferred.confident) == ("unit", True), tap
    assert w.taps["batch.nan"].inferred.name == "unknown"


@pytest.mark.slow
def test_internal_error_switches_tap_off_and_training_goes_on(tmp_path, monkeypatch):
    from rangewatch.stats.range_stats import RangeStats

    orig = RangeStats.update

    def broken(self, x, detail=False, moments=True):
        if x.shape[1] == 4:  # the encoder's output only
            raise RuntimeError("boom")
        return orig(self, x, detail, moments)

    monkeypatch.setattr(RangeStats, "update", broken)
    w = RangeWatch(modules=["vae.encoder"], expect={"batch[0]": "symmetric"}, policy="log")
    with pytest.warns(UserWarning, match="internal error at vae.encoder:output"):
        t = trainer(tmp_path, [w], max_steps=3)
        t.fit(VAEModule(), loader(unit_photos()))
    assert t.global_step == 3  # training went on to max_steps
    internal = [f for f in w.findings if f.kind == "internal"]
    assert len(internal) == 1 and internal[0].where == "vae.encoder:output"
    assert w.taps["vae.encoder:output"].disabled and not w.taps["vae.encoder:input"].disabled


# ---------------------------------------------------------------------------------- configuration
def test_bad_options_name_key_value_and_allowed():
    with pytest.raises(ConfigError, match=r"'policy' = 'explode'.*'warn', 'raise', 'log'"):
        RangeWatch(policy="explode")
    with pytest.raises(ConfigError, match=r"expect\['vae.encoder'\]' = 'imagenett'.*known: .*imagenet"):
        RangeWatch(expect={"vae.encoder": "imagenett"})
    with pytest.raises(ConfigError, match=r"'check_first_n' = -1"):
        RangeWatch(check_first_n=-1)
    with pytest.raises(ConfigError, match="after ':' use 'input' or 'output'"):
        RangeWatch(expect={"vae:inptu": "symmetric"})


@pytest.mark.slow
def test_unknown_module_named_at_fit_start(tmp_path):
    w = RangeWatch(expect={"vae.encodr": "symmetric"})
    with pytest.raises(ConfigError, match=r"no submodule named 'vae.encodr' \(did you mean 'vae.encoder'"):
        trainer(tmp_path, [w]).fit(VAEModule(), loader(unit_photos()))


def test_from_yaml_and_presets(tmp_path):
    for name in ["default", "sd_vae", "ip_adapter", "codeformer"]:
        w = RangeWatch.from_yaml(CONFIGS / f"{name}.yaml")
        assert isinstance(w, RangeWatch)
    assert RangeWatch.from_yaml(CONFIGS / "ip_adapter.yaml").expect == {"vae.encoder": "symmetric", "image_encoder": "clip"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("polcy: warn\n")
    with pytest.raises(ConfigError, match=r"unknown option 'polcy' \(value 'warn'\); did you mean 'policy'\?"):
        RangeWatch.from_yaml(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("expect: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RangeWatch.from_yaml(evil)
    cli = tmp_path / "cli.yaml"
    cli.write_text("trainer:\n  callbacks:\n    - class_path: rangewatch.RangeWatch\n      init_args:\n        policy: raise\n        expect: {batch.lq: symmetric}\n")
    w = RangeWatch.from_yaml(cli)
    assert w.policy == "raise" and w.expect == {"batch.lq": "symmetric"}


@pytest.mark.slow
def test_lightning_cli_builds_the_callback(tmp_path):
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "trainer:\n  max_steps: 1\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
        "  callbacks:\n    - class_path: rangewatch.RangeWatch\n      init_args:\n        policy: log\n"
        "        expect: {vae.encoder: symmetric}\n        check_first_n: 2\n"
    )
    cli = LightningCLI(VAEModule, run=False, args=["--config", str(cfg)], save_config_callback=None)
    w = [c for c in cli.trainer.callbacks if isinstance(c, RangeWatch)]
    assert len(w) == 1 and w[0].expect == {"vae.encoder": "symmetric"} and w[0].check_first_n == 2


# ---------------------------------------------------------------------------------- state
@pytest.mark.slow
def test_resume_keeps_state_and_does_not_repeat_findings(tmp_path):
    x = unit_photos()
    w1 = RangeWatch(expect={"batch[0]": "symmetric"}, check_first_n=1, log_every_n_steps=100)
    t1 = trainer(tmp_path, [w1], max_steps=2, enable_checkpointing=True)
    with pytest.warns(UserWarning, match="rangewatch"):
        t1.fit(VAEModule(), loader(x))
    ckpt = list(Path(tmp_path).rglob("*.ckpt"))
    assert ckpt
    state = torch.load(ckpt[0], weights_only=False)["callbacks"][w1.state_key]
    assert state["train_batches"] == 2 and len(state["findings"]) == 1
    # the second batch was accumulated but not checked yet: its count survives the checkpoint
    assert state["taps"]["batch[0]"]["stats"]["count"].tolist() == [4 * 32 * 32] * 3

    w2 = RangeWatch(expect={"batch[0]": "symmetric"}, check_first_n=1, log_every_n_steps=100)
    t2 = trainer(tmp_path, [w2], max_steps=4, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rangewatch")
        t2.fit(VAEModule(), loader(x), ckpt_path=str(ckpt[0]))
    assert len(w2.findings) == 1 and w2.engine.train_batches == 4
    assert w2.taps["batch[0]"].stats.count.tolist() == [3 * 4 * 32 * 32] * 3


def _guard_non_logging_steps(rw: RangeWatch, guard) -> dict[str, int]:
    """Run RangeWatch's per-step work (its batch hooks and its module hooks) inside ``guard()``
    on every non-logging step; count the guarded calls."""
    seen = {"guarded": 0, "open": 0}
    start, end, on_tensor = rw.on_train_batch_start, rw.on_train_batch_end, rw.engine.tensor
    state = {"check": True}

    def run(fn, *a, **k):
        if state["check"]:
            seen["open"] += 1
            return fn(*a, **k)
        seen["guarded"] += 1
        with guard():
            return fn(*a, **k)

    def on_start(trainer, pl_module, batch, batch_idx):
        state["check"] = rw.engine.is_check_step(int(trainer.global_step))
        run(start, trainer, pl_module, batch, batch_idx)

    rw.on_train_batch_start = on_start
    rw.on_train_batch_end = lambda *a, **k: run(end, *a, **k)
    rw.engine.tensor = lambda *a, **k: run(on_tensor, *a, **k)
    return seen


def _no_sync_run(tmp_path, guard, accelerator, x):
    rw = RangeWatch(expect={"batch[0]": "unit"}, modules=["vae.encoder", "vae.decoder:output"], check_first_n=2,
                    log_every_n_steps=4)
    seen = _guard_non_logging_steps(rw, guard)
    trainer(tmp_path, [rw], max_steps=9, accelerator=accelerator, devices=1).fit(VAEModule(), loader(x, bs=2))
    return rw, seen


@pytest.mark.slow
def test_non_logging_steps_never_read_values_back(tmp_path):
    """CPU proof of "no .item(), .cpu(), bool(tensor) on the hot path": on the steps that only
    accumulate, every value-reading entry point raises inside RangeWatch's hooks; a read would
    show up as an internal finding (rangewatch catches its own errors) and switch the tap off."""
    from helpers.stats_reference import forbid_sync

    x = unit_photos(18, 16)

    def guard():
        mp = pytest.MonkeyPatch()
        forbid_sync(mp)

        class Ctx:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                mp.undo()

        return Ctx()

    rw, seen = _no_sync_run(tmp_path, guard, "cpu", x)
    # steps 0 and 1 (check_first_n), 4 and 8 (log_every_n_steps) check; 2, 3, 5, 6, 7 only accumulate
    assert seen["guarded"] == 5 * 5 and seen["open"] == 4 * 5  # per step: 2 batch hooks + 3 module tensors
    assert [f for f in rw.findings if f.kind == "internal"] == []
    assert all(not t.disabled for t in rw.taps.values())
    # the guard does catch a read: a check (compute) fails under it
    stats = rw.taps["batch[0]"].stats
    stats.update(x[:2])  # (the last check reset the window)
    with guard(), pytest.raises(AssertionError, match="host sync"):
        stats.compute()


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_non_logging_steps_do_not_sync_on_cuda(tmp_path):
    """The requirement itself: torch.cuda.set_sync_debug_mode("error") passes on non-logging steps."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    rw, seen = _no_sync_run(tmp_path, guard, "gpu", unit_photos(18, 16))
    assert seen["guarded"] == 5 * 5
    assert [f for f in rw.findings if f.kind == "internal"] == []
    assert all(not t.disabled and t.stats.min.device.type == "cuda" for t in rw.taps.values())
    stats = rw.taps["batch[0]"].stats
    stats.update(unit_photos(2, 16).cuda())  # (the last check reset the window)
    with guard(), pytest.raises(RuntimeError, match="synchroniz"):
        stats.compute()
