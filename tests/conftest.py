import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before any project import: the checkout under test, not an installed copy
os.environ.setdefault("PYTHONUNBUFFERED", "1")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # as nproc
    # One xdist worker per core: each worker's thread pools (torch's OpenMP, OpenBLAS), and those of the processes a
    # test starts, get the worker's share of the cores. Each one's default is every core, and threads beyond the
    # cores spin against the other worker's (on 2 cores, small convs ran several times slower). Set before any
    # test module imports torch; a value the user exported is kept.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, _cores // _WORKERS)))


SLOW_TIMEOUT_S = 1200  # the per-test limit of @pytest.mark.slow tests (the default is `timeout` in pyproject.toml)
DEFAULT_S = 1  # a test's expected seconds unless its slow marker says: @pytest.mark.slow(seconds)


def pytest_collection_modifyitems(config, items):
    """Per-test timeout for slow tests, and the order: `make test` runs the files on pytest-xdist workers (--dist
    loadfile: a module fixture is built once), longest file first, so that the workers finish together."""
    cost = {}
    for item in items:
        slow = item.get_closest_marker("slow")
        if slow and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        cost[item.path] = cost.get(item.path, 0) + (slow.args[0] if slow and slow.args else DEFAULT_S)
    items.sort(key=lambda i: -cost[i.path])  # stable: a file keeps its own order


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def app_artifacts(tmp_path_factory):
    """(folder, manifest): every convert target of one small fitted model, made once per run (tests/app_artifacts.py);
    read-only, tests that write get a copy (app_artifacts.copy_of)."""
    from tests.app_artifacts import shared

    return shared(tmp_path_factory)


@contextmanager
def _torch_threads(n: int):
    import torch  # here, not at the top: collecting tests that never use torch stays light

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core host, two spinning OpenMP threads make small convs ~10x slower."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """one_thread for a whole module (pytestmark = pytest.mark.usefixtures("one_thread_module"))."""
    with _torch_threads(1):
        yield
