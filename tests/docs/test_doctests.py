"""Every ``>>>`` example in the package's docstrings runs (and must pass), as ``--doctest-modules`` would.

The modules are found, not listed: each module of ``rangewatch`` whose source holds ``>>> `` is doctested, so
an example added to a new module runs without anyone adding it here."""

import doctest
import importlib
import pathlib

import pytest

import rangewatch

ROOT = pathlib.Path(rangewatch.__file__).parent


def _modules_with_examples():
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        if ">>> " not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_examples_are_discovered():
    assert MODULES, "no module of rangewatch has a >>> example"
    for name in ("rangewatch.engine.watch", "rangewatch.callback", "rangewatch.findings.finding",
                 "rangewatch.checks.inference", "rangewatch.stats.evidence"):
        assert name in MODULES, name


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, res
