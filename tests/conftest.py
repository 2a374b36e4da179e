import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers (the package) and tests/compvis


@pytest.fixture
def registers_conventions():
    """For a test that registers conventions on purpose: the catalogue is process-wide, so the names it
    added are unregistered after it. Reading a model or a pipeline registers nothing: expectations and
    predictions carry their Convention, custom Normalize constants included (a value-derived name, so that a
    dataset and a model with the same constants compare equal; tests/expect/test_carried_conventions.py)."""
    from rangewatch.expect.conventions import list_conventions, unregister_convention

    before = set(list_conventions())
    yield
    for name in set(list_conventions()) - before:
        unregister_convention(name)


@pytest.fixture(autouse=True)
def _restore_logging():
    """A test (or a library it runs: wandb, mlflow, a benchmark that quiets Lightning) must not leave the
    loggers of the tests after it silenced: levels, ``disabled``, ``propagate`` and ``logging.disable``."""
    import logging

    manager = logging.root.manager
    saved = {name: (lg.level, lg.disabled, lg.propagate) for name, lg in list(manager.loggerDict.items())
             if isinstance(lg, logging.Logger)}
    disable = manager.disable
    yield
    logging.disable(disable)
    for name, lg in list(manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        if name in saved:
            level, lg.disabled, lg.propagate = saved[name]
            if lg.level != level:
                lg.setLevel(level)  # (clears the loggers' level caches)
        elif name.startswith(("lightning", "pytorch_lightning", "rangewatch")):
            lg.disabled = False
