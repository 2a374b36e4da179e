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
