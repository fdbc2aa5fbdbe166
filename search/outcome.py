"""How a trial ended, and which trial is best: the one answer the searcher, MLflow tracking, the progress
table, the leaderboard and export all use.

A trial's outcome follows from its last result and whether it errored:

* ``completed``: it reported its last epoch (``epochs_total``);
* ``stopped_by_asha``: the scheduler stopped it after an earlier epoch (its last result is marked done);
* ``errored``: it failed, after its retries;
* ``interrupted``: the search stopped (Ctrl-C, a driver that died) before it ended; a resume continues it.

"Best" is always the best *completed* trial by the search's metric and mode: a trial stopped after one
epoch has no full-length result that a retrain (which trains every epoch) could reproduce.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COMPLETED, STOPPED, ERRORED, INTERRUPTED = "completed", "stopped_by_asha", "errored", "interrupted"
#: A trial's live state in MLflow's ``trial_status`` tag, besides the outcomes above.
RUNNING = "running"
#: The leaderboard's order of outcomes.
RANK = {COMPLETED: 0, STOPPED: 1, INTERRUPTED: 2, ERRORED: 3}

EPOCH = "epoch"  # the classifier epoch a result reports: the one clock of ASHA, Optuna and MLflow
EPOCHS_TOTAL = "epochs_total"  # the trial's classifier.epochs


#: ``package.module.SomeError: message``: the line a Python traceback ends with.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Mismatch)): (.+)$")


def error_line(error: BaseException | str | None) -> str | None:
    """The one line a user acts on from a trial's error: the innermost ``Type: message`` of its traceback text
    (Ray wraps the trial's own exception, e.g. a refused file, in its task error and traceback), without the
    module path; the last line when none is found; None for no error."""
    if error is None:
        return None
    text = str(error).strip()
    found = [m for m in map(_EXCEPTION_LINE.match, text.splitlines()) if m]
    if found:
        return f"{found[-1].group(1)}: {found[-1].group(2).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def stopped_early(result: Mapping[str, Any]) -> bool:
    """True when a result is before the trial's final epoch (so the trial, if it ends there, was stopped)."""
    epoch, total = result.get(EPOCH), result.get(EPOCHS_TOTAL)
    return epoch is not None and total is not None and epoch < total


def trial_outcome(result: Mapping[str, Any] | None, errored: bool = False) -> str:
    """How a trial ended, from its last result (Tune marks a trial's final result ``done``)."""
    if errored:
        return ERRORED
    result = result or {}
    if not result.get("done"):
        return INTERRUPTED
    return STOPPED if stopped_early(result) else COMPLETED


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ranked(rows: Iterable[Mapping[str, Any]], metric: str, mode: str, status: str = "status") -> list[Any]:
    """``rows`` best first: completed trials by ``metric`` (``mode``), then stopped, interrupted and errored
    ones; a missing or non-finite value last within its group."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: Mapping[str, Any]) -> tuple[int, float]:
        value = row.get(metric)
        return RANK.get(row.get(status), len(RANK)), sign * value if finite(value) else math.inf

    return sorted(rows, key=key)


def best_completed(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, status: str = "status") -> Any:
    """The best completed row with a finite ``metric``, or None."""
    done = [r for r in rows if r.get(status) == COMPLETED and finite(r.get(metric))]
    return ranked(done, metric, mode, status)[0] if done else None
