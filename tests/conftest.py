import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/photos.py


@pytest.fixture(autouse=True)
def _restore_catalogue():
    """Conventions registered by a test (custom Normalize / latent constants) must not leak into other tests."""
    from rangewatch import conventions

    saved, aliases = dict(conventions._CATALOGUE), dict(conventions._ALIASES)
    yield
    with conventions._LOCK:
        conventions._CATALOGUE.clear()
        conventions._CATALOGUE.update(saved)
        conventions._ALIASES.clear()
        conventions._ALIASES.update(aliases)


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
