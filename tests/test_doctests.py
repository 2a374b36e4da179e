"""The ``>>>`` examples in the docstrings of these modules run (and must pass)."""

import doctest
import importlib

import pytest

MODULES = ["rangewatch.findings", "rangewatch.expectation", "rangewatch.sinks"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0, res
