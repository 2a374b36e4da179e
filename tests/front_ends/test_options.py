"""The options are declared once (rangewatch/options.py ``Options``): the callback's signature (which
LightningCLI / jsonargparse read), its declared option properties, the engine, ``rangewatch.watch``, YAML
loading and ``rangewatch check`` configs all take exactly those names, with the dataclass's defaults."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from rangewatch import ConfigError, RangeWatch, Watch
from rangewatch.options import OPTIONS, Options

FIELDS = dataclasses.fields(Options)


def test_callback_signature_is_the_dataclass():
    params = [p for p in inspect.signature(RangeWatch.__init__).parameters.values() if p.name != "self"]
    assert [p.name for p in params] == [f.name for f in FIELDS] == list(OPTIONS)
    for p, f in zip(params, FIELDS):
        assert p.default == f.default, p.name
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert f.metadata["doc"], f.name
    # the annotations name the same types (strings under `from __future__ import annotations`)
    hints = typing.get_type_hints(RangeWatch.__init__)
    field_hints = typing.get_type_hints(Options)
    assert {k: hints[k] for k in OPTIONS} == field_hints


def test_jsonargparse_reads_every_option_with_its_default():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RangeWatch, "rw")
    defaults = parser.get_defaults()
    got = {k: defaults["rw"][k] for k in OPTIONS}
    assert got == {f.name: f.default for f in FIELDS}
    cfg = parser.parse_args(["--rw.policy", "raise", "--rw.check_first_n", "7"])
    w = RangeWatch(**dict(cfg["rw"]))
    assert (w.policy, w.check_first_n, w.engine.policy, w.engine.check_first_n) == ("raise", 7, "raise", 7)


def test_callback_option_properties_are_declared_and_read_the_engine():
    declared = [k for k, v in vars(RangeWatch).items() if type(v).__name__ == "_EngineOption"]
    assert declared == list(OPTIONS)
    assert set(typing.get_type_hints(RangeWatch)) >= set(OPTIONS)  # annotations a type checker reads
    w = RangeWatch(policy="log", hist_bins=8)
    for name in OPTIONS:
        assert getattr(w, name) is getattr(w.engine, name), name
    w.check_first_n = 11
    assert w.engine.check_first_n == 11
    w.policy = "raise"
    assert w.engine.policy == "raise"
    with pytest.raises(ConfigError, match="'policy'"):
        w.policy = "loud"


def test_engine_takes_exactly_the_options():
    w = Watch(**{f.name: f.default for f in FIELDS})
    for name in OPTIONS:
        assert hasattr(w, name), name
    with pytest.raises(TypeError, match="check_frist_n"):
        Watch(check_frist_n=3)


def test_yaml_accepts_exactly_the_options(tmp_path):
    every = tmp_path / "every.yaml"
    lines = [f"{f.name}: {'null' if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default}"
             for f in FIELDS]
    every.write_text("\n".join(lines) + "\n")
    w = RangeWatch.from_yaml(every)
    assert w.check_first_n == 3 and w.histograms == "flagged" and w.policy == "warn"
    bad = tmp_path / "bad.yaml"
    bad.write_text("check_frist_n: 3\n")
    with pytest.raises(ConfigError) as e:
        RangeWatch.from_yaml(bad)
    assert "did you mean 'check_first_n'" in str(e.value)
    assert f"Allowed options: {', '.join(OPTIONS)}" in str(e.value)


def test_check_config_accepts_exactly_the_options(tmp_path):
    from rangewatch.preflight import load_check_config

    cfg = tmp_path / "check.yaml"
    cfg.write_text("data: {class_path: x.Y}\nrangewatch:\n  check_frist_n: 3\n")
    with pytest.raises(ConfigError) as e:
        load_check_config(cfg)
    assert f"Allowed options: {', '.join(OPTIONS)}" in str(e.value)
