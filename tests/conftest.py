"""Shared test settings: quiet, single-threaded, and pointed at the real datasets beside the project."""
import os
from pathlib import Path

import pytest

# Two cores on CI: keep torch from spawning threads that fight each other across test processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
