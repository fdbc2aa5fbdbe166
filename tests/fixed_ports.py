"""One test process at a time on a port the docs fix (imported by tests/docs_runner.py and
tests/test_portable_search.py).

The guides' commands name their ports as a user types them (the MLflow UI's 5000, a served model's 5001,
optuna-dashboard's 8080), and so does the serve command a search prints. ``make test`` runs two test files
at once, so two of those servers could ask for one port; a lock file per port makes the second wait.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock


@contextlib.contextmanager
def holding_port(port: int, timeout: float = 900) -> Iterator[None]:
    """Hold ``port`` for this process until the block ends (stop the server inside the block)."""
    lock = filelock.FileLock(Path(tempfile.gettempdir()) / f"ulmfit-tests-port-{port}.lock", timeout=timeout)
    with lock:
        yield
