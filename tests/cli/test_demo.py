"""Every `rangewatch demo` case gives the finding it is about; `clean` gives none."""

import subprocess
import sys

import pytest

from rangewatch.cli.main import main
from rangewatch.cli.demo import CASES, run_case
from rangewatch.cli.photos import load_photos


def test_embedded_photos_are_real():
    x = load_photos(64)
    assert x.shape == (8, 3, 64, 64)
    assert x.float().std() > 30  # real photographs, not flat or synthetic fills


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_case(case, tmp_path):
    r = run_case(case, tmp_path, progress=False)
    kinds = {f.kind for f in r.findings}
    if CASES[case].expect_kind is None:
        assert not [f for f in r.findings if f.kind != "note"], r.findings
    else:
        assert CASES[case].expect_kind in kinds, r.findings
    assert r.ok
    assert list(r.logdir.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_cli_demo_prints_table_and_tensorboard_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rangewatch.cli.main", "demo", "--case", "vae-range", "--logdir", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "vae.encoder:input" in out.stdout and "x * 2 - 1" in out.stdout
    assert f"tensorboard --logdir {tmp_path}" in out.stdout


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--case" in text and "dark-preview" in text
