import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before any project import: the checkout under test, not an installed copy
os.environ.setdefault("PYTHONUNBUFFERED", "1")


SLOW_TIMEOUT_S = 1200  # the per-test limit of @pytest.mark.slow tests (the default is `timeout` in pyproject.toml)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core host, two spinning OpenMP threads make small convs ~10x slower."""
    import torch  # here, not at the top: collecting tests that never use torch stays light

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
