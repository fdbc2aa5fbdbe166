"""Shared test settings: quiet, single-threaded, and pointed at the real datasets beside the project."""
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import search  # noqa: F401  (before anything imports Ray: a local Ray keeps its ports on 127.0.0.1, search/local_ray.py)

# Two cores on CI: keep torch from spawning threads that fight each other across test processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Zoo models come only from what a test fetches itself: a developer's ./models must not make the suite
# behave differently from CI's clean clone (where configs naming general-en-* start from random weights).
os.environ["ULMFIT_MODELS"] = str(Path(tempfile.gettempdir()) / f"ulmfit-tests-no-models-{os.getpid()}")

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
FASTAI_FIXTURES = SHARED / "fixtures" / "fastai"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not (DATASETS / "trec" / "train.csv").exists():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def fastai_fixtures() -> Path:
    if not (FASTAI_FIXTURES / "fastai_tiny_lm.pth").exists():
        pytest.skip(f"fastai fixtures not found at {FASTAI_FIXTURES}")
    return FASTAI_FIXTURES


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy named in the environment."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def cli_search(tmp_path_factory, datasets_dir) -> SimpleNamespace:
    """One search through the command line as a user runs it (``launch.py search``, 2 tiny trials, the
    trial table on): its folder and console output, shared by the tests that read a finished CLI search
    (the console table, the MLflow UI) so the suite runs it once."""
    from conftest_search import run_search_cli

    tmp = tmp_path_factory.mktemp("cli_search")
    return SimpleNamespace(tmp=tmp, out=run_search_cli(tmp, ["search.verbose=1", "search.name=ui"]))


# `make test` runs two test files at once (pytest-xdist, `--dist loadfile`): each file on one worker, so a
# module-scoped fixture (a finished search several tests read) is built once, and the files in the order below,
# the longest first, so that no worker is left with a long file at the end while the other idles. Two files
# never share a port the docs fix: tests/fixed_ports.py. (`--dist loadgroup` would let files share a worker,
# but pytest-xdist 3.8 does not group under pytest 9.2: pytest-dev/pytest-xdist#1386.)
LONGEST_FIRST = ["test_docs_run.py", "test_search_resume.py", "test_storage_full.py", "test_bench_smoke.py",
                 "test_search_progress.py", "test_mlflow_ui.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    # then the other files with slow tests (searches, servers), then the rest; a file's tests stay together
    # and in order (sorted() is stable)
    items[:] = sorted(items, key=lambda item: (rank.get(item.path.name, len(rank)), item.path not in slow))
