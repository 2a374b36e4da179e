"""The README's first screen is true: its commands, extras, demo cases, the warning its Trainer example shows."""

from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FIRST_SCREEN = README[: README.index("```\n\nWith no arguments")]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[;~ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_install_commands_extras_and_ci():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    for extra in re.findall(r'pip install -e "\.\[(\w+)\]"', FIRST_SCREEN) + re.findall(r"`\[(\w+)\]`", FIRST_SCREEN):
        assert extra in extras, extra
    assert _names(extras["demo"]) == {"diffusers", "transformers", "timm"}  # "[demo] adds diffusers, transformers and timm"
    core = _names(project["dependencies"])
    assert core == {"torch", "torchvision", "lightning", "torchmetrics", "tensorboard", "pyyaml", "numpy"}
    assert "basicsr" not in core | _names(extras["demo"]) and "basicsr" in _names(extras["basicsr"]) | _names(extras["dev"])
    assert project["scripts"]["rangewatch"] == "rangewatch.cli.main:main"
    # "CI runs exactly this"
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-2:] == ['pip install -e ".[dev]"', "pytest"]


def test_demo_cases_as_described():
    from rangewatch.cli.demo import CASES, run_demo

    assert run_demo.__defaults__[0] == "dark-preview" and "dark-preview" in FIRST_SCREEN  # what `rangewatch demo` runs
    assert run_demo.__defaults__[1] == "rangewatch_logs"
    needing_demo = sorted(n for n, c in CASES.items() if set(c.needs) & {"diffusers", "transformers", "timm"})
    assert needing_demo == ["multi-norm", "vae-range"] and "(`vae-range`,\n`multi-norm`)" in FIRST_SCREEN
    assert CASES["dark-preview"].fallback == "basicsr"
    # "every case below": the cases table lists them all
    table = README[README.index("## The cases and what rangewatch says"):]
    assert set(re.findall(r"^\| `([\w-]+)` \|", table, flags=re.M)) == set(CASES)


def test_finding_fields_as_printed():
    from rangewatch import Finding

    shown = re.search(r"print\(watch\.findings\)\s+# \[Finding\(([^)]*)\)\]", FIRST_SCREEN).group(1)
    assert [s.strip() for s in shown.split(",")] == [f.name for f in dataclasses.fields(Finding)]


@pytest.mark.slow
def test_the_warning_the_trainer_example_shows(tmp_path):
    """The example's comment is the warning a real fit gives for [0, 1] photos into ``vae.encoder`` declared
    symmetric, pointing at the line that called ``trainer.fit``."""
    from torch.utils.data import DataLoader, TensorDataset

    from helpers import fit as quiet
    from helpers.models import VAEModule
    from helpers.photos import photo_batch
    from rangewatch import RangeWatch

    watch = RangeWatch(expect={"vae.encoder": "symmetric"}, policy="warn")
    trainer = quiet.trainer([watch], max_steps=1, default_root_dir=tmp_path)
    images = TensorDataset(photo_batch(4, 32).float() / 255)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        trainer.fit(VAEModule(), DataLoader(images, batch_size=4)); fit_line = sys._getframe().f_lineno  # noqa: E702
    ours = [w for w in said if str(w.message).startswith("rangewatch: [mismatch]")]
    assert len(ours) == 1 and ours[0].category is UserWarning
    assert (ours[0].filename, ours[0].lineno) == (__file__, fit_line)
    block = re.search(r"#   UserWarning: (.*?)\nprint\(watch\.findings\)", FIRST_SCREEN, flags=re.S).group(1)
    documented = [ln[len("#   "):] if ln.startswith("#   ") else ln for ln in block.splitlines()]
    assert str(ours[0].message).splitlines() == documented
