"""The command line and the demo as a new user meets them (issue 15): start-up without torch or
Lightning, subcommand usage on option errors, ``conventions``, and ``rangewatch demo`` from an
install without the optional packages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rangewatch.cli.main import DEMO_CASES, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
OPTIONAL = ["diffusers", "transformers", "timm", "basicsr", "open_clip"]


def python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_parsing_imports_neither_torch_nor_lightning():
    r = python(
        "import sys\n"
        "from rangewatch.cli.main import build_parser\n"
        "p = build_parser()\n"
        "for argv in (['demo', '--case', 'all'], ['report', 'logs'], ['conventions', '--kind', 'latent'], ['tensorboard', '--logdir', 'x']):\n"
        "    p.parse_args(argv)\n"
        "try:\n"
        "    p.parse_args(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'tensorboard') if m in sys.modules))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_startup_figure(capsys):
    """Not a timed assertion: prints how long ``--help`` takes in a fresh interpreter (the figure in
    the README / report), next to a bare ``import torch`` for scale."""
    def wall(args: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, env=ENV, cwd=ROOT, timeout=600, check=True)
        return time.perf_counter() - t

    helps = [wall(["-m", "rangewatch.cli.main", "--help"]) for _ in range(2)]
    torch_import = wall(["-c", "import torch"])
    with capsys.disabled():
        print(f"\n[figure] rangewatch --help: {min(helps):.2f} s (fresh interpreter); import torch alone: {torch_import:.2f} s")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "rangewatch 0.1.0"


@pytest.mark.parametrize("sub", ["demo", "report", "conventions", "tensorboard", "check"])
def test_typo_in_a_subcommand_option_prints_that_subcommands_usage(sub, capsys):
    args = {"report": ["logs"], "tensorboard": ["logs"], "check": ["c.yaml"]}.get(sub, [])
    with pytest.raises(SystemExit) as e:
        main([sub, *args, "--no-such-option"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"usage: rangewatch {sub} ") and "unrecognized arguments: --no-such-option" in err


def test_bad_choice_names_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--case", "dark"])
    err = capsys.readouterr().err
    assert err.startswith("usage: rangewatch demo") and "invalid choice: 'dark'" in err and "dark-preview" in err


def test_conventions_help_and_header(capsys):
    with pytest.raises(SystemExit):
        main(["conventions", "--help"])
    out = capsys.readouterr().out
    assert "Lists every value-range convention" in out and "examples:" in out and "rangewatch conventions --kind latent" in out
    from rangewatch import get_convention, list_conventions

    assert main(["conventions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "what"] and set(lines[1]) <= {"-", " "}
    assert [ln.split()[0] for ln in lines[2:]] == list_conventions()
    sym = next(ln for ln in lines if ln.startswith("symmetric "))
    assert "-1..1 / -1..1 / -1..1" in sym
    assert main(["conventions", "--kind", "latent"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows and all(get_convention(r.split()[0]).kind == "latent" for r in rows)


def test_demo_case_titles_match_the_demo():
    from rangewatch.cli.demo import CASES

    assert DEMO_CASES == {k: c.title for k, c in CASES.items()}


def test_tensorboard_takes_logdir_both_ways():
    p = build_parser()
    assert p.parse_args(["tensorboard", "--logdir", "a"]).logdir_opt == "a"
    assert p.parse_args(["tensorboard", "a"]).logdir == "a"


HIDE = """
import importlib.metadata as md
import sys

BLOCK = set({block!r})


class Hide:  # as if not installed: no module, no distribution metadata
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Hide())
_dist, _version = md.distribution, md.version


def distribution(name):
    key = name.lower().replace("-", "_")
    if key in BLOCK or (key == "open_clip_torch" and "open_clip" in BLOCK):
        raise md.PackageNotFoundError(name)
    return _dist(name)


def version(name):
    distribution(name)
    return _version(name)


md.distribution, md.version = distribution, version
"""


def _demo(args: list[str], block: list[str]) -> subprocess.CompletedProcess:
    code = HIDE.format(block=block) + "from rangewatch.cli.main import main\n" + f"sys.exit(main({args!r}))\n"
    return python(code)


@pytest.mark.slow
def test_hiding_works():
    r = python(HIDE.format(block=["diffusers", "transformers"]) + (
        "import importlib.util\n"
        "try:\n    import diffusers\nexcept ImportError:\n    print('no diffusers')\n"
        "from rangewatch.cli.demo import has_package\n"
        "print(has_package('transformers'), has_package('torch'))\n"
        "import lightning.pytorch, torchmetrics\nprint('lightning ok')\n"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["no", "diffusers", "False", "True", "lightning", "ok"]


@pytest.mark.slow
def test_demo_without_optional_packages(tmp_path):
    """``pip install rangewatch`` (no extras) then ``rangewatch demo --case all``: the cases that need
    diffusers/transformers/timm say which extra to install, dark-preview runs on torchvision's
    save_image, nothing raises."""
    logdir = tmp_path / "logs"
    r = _demo(["demo", "--case", "all", "--no-progress", "--logdir", str(logdir)], OPTIONAL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert out.count('pip install "rangewatch[demo]"') == 2  # vae-range and multi-norm, one line each
    assert "skipped: this case needs diffusers: pip install" in out
    assert "save_image" in out and 'pip install "rangewatch[basicsr]"' in out
    assert f"rangewatch tensorboard --logdir {logdir.resolve()}" in out
    ran = sorted(p.parent.name for p in logdir.glob("*/version_0"))
    assert ran == ["clean", "dark-preview", "fp16-black", "sdxl-latent"]


@pytest.mark.slow
def test_demo_rerun_writes_a_fresh_version(tmp_path):
    for _ in range(2):
        r = _demo(["demo", "--case", "clean", "--no-progress", "--logdir", str(tmp_path)], [])
        assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == ["version_0", "version_1"]
    assert all(len(list(p.glob("events.out.tfevents.*"))) == 1 for p in (tmp_path / "clean").iterdir())
    assert "no findings" in r.stdout
