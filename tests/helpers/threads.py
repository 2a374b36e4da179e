"""One torch thread for a test module: tiny convolutions gain nothing from intra-op threads, and on a shared
2-core machine OpenMP's spinning threads make a 4-step generation take 20 s instead of under one.

Use: ``_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)``."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
