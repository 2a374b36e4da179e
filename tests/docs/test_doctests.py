"""The ``>>>`` examples in the docstrings of these modules run (and must pass), as ``--doctest-modules`` would."""

import doctest
import importlib

import pytest

MODULES = [
    "rangewatch.findings.finding", "rangewatch.expect.expectation", "rangewatch.sinks.loggers",
    "rangewatch.engine.watch", "rangewatch.loop", "rangewatch.engine.collectives", "rangewatch.findings.log", "rangewatch.callback",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, res
