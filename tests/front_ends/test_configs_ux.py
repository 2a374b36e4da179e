"""The preset configs say what the README says: every preset loads, and default.yaml holds the defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from rangewatch import RangeWatch

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_default_yaml_holds_the_constructor_defaults():
    path = next(p for p in CONFIGS if p.name == "default.yaml")
    options = yaml.safe_load(path.read_text())
    defaults = {k: p.default for k, p in inspect.signature(RangeWatch.__init__).parameters.items() if k != "self"}
    for key, value in options.items():
        assert value == defaults[key], (key, value, defaults[key])
    assert options["histograms"] in ("flagged", "all", False)  # the values the README lists


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "check_example.yaml"], ids=lambda p: p.name)
def test_every_preset_loads(path):
    RangeWatch.from_yaml(str(path))
