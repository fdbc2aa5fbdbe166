"""A quiet console: the libraries' INFO lines and warnings go to a log file; the console keeps the search's
own output (the trial table, epoch lines, the summary) and real errors.

Ray, MLflow, Optuna, SQLAlchemy's migrations and matplotlib each talk on their own: Ray's "Started a local
Ray instance" and Tune's "Wrote the latest version of all result files", MLflow's "Creating initial MLflow
database tables" and "Successfully registered model", Optuna's "A new study created", matplotlib's warnings
about a flat axis. :class:`LibraryLog` sends all of them (everything at INFO and above, through Python's
``logging``, warnings included) to one file, which starts in a temporary place and moves into the command's
folder once there is one (the search folder; a retrain's model folder). The console shows WARNING and above
from this project's own modules, and warnings raised by its own code. ``--verbose`` leaves everything as the
libraries set it up.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The libraries whose loggers go to the file only.
LIBRARIES = ("ray", "mlflow", "optuna", "matplotlib", "alembic", "sqlalchemy", "urllib3", "filelock", "PIL",
             "fsspec", "py.warnings")
#: This project's loggers: their warnings and errors still reach the console.
OWN = ("search", "ulmfit_core", "launch", "__main__")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnOnly(logging.Filter):
    """Console: this project's records; a Python warning only when the code that raised it is ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            return "site-packages" not in str(record.getMessage()).split(":", 1)[0]
        return record.name.split(".")[0] in OWN


class _QuietFileHandler(logging.FileHandler):
    """The log file's handler: a record it cannot write (the search's disk is full) is dropped, not printed
    to the console as a "Logging error" traceback; the search itself then says what is wrong, in one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped = getattr(self, "dropped", 0) + 1

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last buffered lines could not be written (a full disk): dropped, like the others
            self.dropped = getattr(self, "dropped", 0) + 1


class LibraryLog:
    """The log file of one command. ``start()`` routes the libraries' logging there (nothing when
    ``verbose``); ``move_into(folder)`` puts the file in its final folder; ``stop()`` restores logging."""

    def __init__(self, name: str, verbose: bool = False):
        self.name, self.verbose = name, verbose
        self.path: Path | None = None
        self._file: _QuietFileHandler | None = None
        self._console: logging.Handler | None = None
        self._saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
        self._root_level = logging.WARNING

    @property
    def active(self) -> bool:
        return self._file is not None

    def start(self) -> LibraryLog:
        if self.verbose or self.active:
            return self
        fd, tmp = tempfile.mkstemp(prefix=f"ulmfit-{Path(self.name).stem}-", suffix=".log")
        os.close(fd)
        self.path = Path(tmp)
        self._file = _QuietFileHandler(self.path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter(FORMAT))
        self._file.setLevel(logging.INFO)
        self._console = logging.StreamHandler(sys.stderr)
        self._console.setLevel(logging.WARNING)
        self._console.addFilter(_OwnOnly())
        self._console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self._root_level = root.level
        self._saved.append((root, list(root.handlers), root.propagate, root.level))
        root.handlers = [self._file, self._console]
        root.setLevel(logging.INFO)
        for name in LIBRARIES:
            self.reroute(name)
        logging.captureWarnings(True)
        _optuna_propagates()
        # MLflow draws a progress bar on every artifact download and upload (documented switch).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return self

    def reroute(self, name: str) -> None:
        """Send logger ``name`` to the root's handlers only (after a library added its own, e.g. at ``ray.init``)."""
        if not self.active:
            return
        lib = logging.getLogger(name)
        self._saved.append((lib, list(lib.handlers), lib.propagate, lib.level))
        lib.handlers = []
        lib.propagate = True
        lib.setLevel(logging.INFO)

    def move_into(self, folder: str | Path) -> Path | None:
        """Move the file to ``folder/<name>`` and go on writing there; returns the new path."""
        if not self.active or self.path is None:
            return None
        target = Path(folder) / self.name
        self._file.acquire()
        try:
            self._file.close()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.path, target)  # a copy when the folder is on another filesystem (NFS, a mount)
            self._file.baseFilename = str(target.resolve())
            self.path = target
        finally:
            self._file.release()
        return target

    @contextlib.contextmanager
    def capturing_prints(self) -> Iterator[None]:
        """Library output printed straight to stdout/stderr (MLflow's "Successfully registered model") goes
        to the log file for the block."""
        if not self.active:
            yield
            return
        with open(self.path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield

    def stop(self) -> None:
        if not self.active:
            return
        for logger, handlers, propagate, level in reversed(self._saved):
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        self._saved.clear()
        logging.captureWarnings(False)
        _optuna_propagates(False)
        self._file.close()
        self._file = None


def _optuna_propagates(on: bool = True) -> None:
    """Optuna's public switches: its records go through the root logger instead of its own stderr handler."""
    import optuna

    if on:
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
    else:
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()
