"""A background writer for MLflow: tracking never blocks the search, and nothing is silently lost.

The Ray Tune callback (``search/tracking.py``) hands each event to :class:`MlflowWriter`, which runs
them one after another on its own thread, in the order they came (so a run's metrics keep their
order, and a run is created before anything is logged to it). Each MLflow call inside an event is
retried with exponential backoff while the store is unreachable (a tracking server restarting, a
SQLite "database is locked"), up to ``retry_seconds``; a call that finally fails is recorded in
:attr:`MlflowWriter.failures`, which the search summary reports. The queue is bounded, so a store
that stays down slows the driver rather than growing memory without end.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: MLflow error codes that no retry can fix (the request itself is wrong).
PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                              "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"})

_STOP = object()


def is_transient(error: BaseException) -> bool:
    """Whether retrying ``error`` can help: connection problems, server errors and a locked database
    can; a request MLflow refused as invalid cannot."""
    code = getattr(error, "error_code", None)
    if code in PERMANENT_ERRORS:
        return False
    message = str(error)
    if code is None and isinstance(error, (ValueError, TypeError, KeyError)) and "locked" not in message:
        return False  # a bug in the caller, not the store
    return True


class MlflowWriter:
    """Runs submitted MLflow work in order on one background thread.

    ``submit(what, fn)`` queues ``fn()`` (``what`` names it in logs and failures); inside ``fn`` every
    MLflow call should go through :meth:`call`, which retries it. :meth:`flush` waits until all
    submitted work is done; :meth:`close` flushes and stops the thread.
    """

    def __init__(self, max_queue: int = 10_000, retry_seconds: float = 300.0, max_backoff: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.retry_seconds, self.max_backoff, self._sleep = retry_seconds, max_backoff, sleep
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failures: list[str] = []  # "what: error" of each call that finally failed
        self.retried = 0  # calls that needed at least one retry

    def submit(self, what: str, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` (blocks while the queue is full)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
                self._thread.start()
        self._queue.put((what, fn))

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried with backoff while the error is transient and ``retry_seconds`` last.
        Returns its result, or None after recording a failure."""
        deadline = time.monotonic() + self.retry_seconds
        delay, tries = 0.5, 0
        while True:
            try:
                result = fn()
                if tries:
                    self.retried += 1
                    logger.info("MLflow: %s succeeded after %d retries", what, tries)
                return result
            except Exception as e:  # noqa: BLE001 (classified below)
                if not is_transient(e) or time.monotonic() + delay > deadline:
                    self.failures.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
                    logger.warning("MLflow: %s failed for good: %s: %s", what, type(e).__name__, e)
                    return None
                tries += 1
                if tries == 1:
                    logger.warning("MLflow: %s failed (%s); retrying for up to %.0f s", what, type(e).__name__,
                                   self.retry_seconds)
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted piece of work ran; False when ``timeout`` s passed first."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(("flush", done.set))
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the thread. Returns whether everything was written in time."""
        flushed = self.flush(timeout)
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(5.0 if flushed else 0.1)
        self._thread = None
        return flushed

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            what, fn = item
            try:
                fn()
            except Exception as e:  # noqa: BLE001 (a bug in an event handler must not end the writer)
                self.failures.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
                logger.exception("MLflow: %s raised", what)
