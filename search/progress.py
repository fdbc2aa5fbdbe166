"""The search's live console display: one table of trials, a "done / best so far" line.

While ``launch.py search`` runs (``search.verbose: 1``), the console shows::

    search progress, 1m 23s
    trial  ray id    status           lr       drop_mult  use_clr[0]  epoch  valid_accuracy
    -----  --------  ---------------  -------  ---------  ----------  -----  --------------
    0      4dce1d2a  completed        0.00856  1.04       64          3/3    0.8621
    1      a516a696  stopped by ASHA  0.00554  1.56       8           1/3    0.6207
    2      7f00c1b3  running          0.0213   0.412      16          2/3    0.8276
    2 of 8 done (1 completed, 1 stopped by ASHA), 1 running; best so far valid_accuracy 0.8621 (trial 0, epoch 3)

The trial number is the trial's number in the Optuna study, which MLflow's run names (``trial 0: lr=…``) and
optuna-dashboard show; the Ray id is the one in the search folder (``trial_<id>``) and the leaderboard. Sampled values get their short
names (the last part of the key) and 3 significant digits; the internal ``recipe``/``run`` entries of a
trial's config are never shown.

Ray 2.60's default console output ("new output", ``RAY_AIR_NEW_OUTPUT=1``) prints a box with every
trial's whole config and result instead, and ignores ``RunConfig(progress_reporter=...)`` (it logs
"AIR_VERBOSITY is set, ignoring passed-in ProgressReporter"). Tune reads that variable when ``fit()``
starts, not at import, so :func:`use_classic_progress_output` sets it just before, as a default: a
value the user exported wins (``RAY_AIR_NEW_OUTPUT=1`` brings Ray's own display back).

``search.verbose: 0`` stays silent: Tune asks a reporter for nothing at verbosity 0.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune import ProgressReporter

from search import trainable as T
from search.outcome import stopped_early
from search.settings import SearchConfig

NEW_OUTPUT_VAR = "RAY_AIR_NEW_OUTPUT"

PENDING, RUNNING, COMPLETED, STOPPED, ERRORED, PAUSED = (
    "pending", "running", "completed", "stopped by ASHA", "errored", "paused")
FINISHED_STATES = (COMPLETED, STOPPED, ERRORED)


def use_classic_progress_output() -> None:
    """Let Tune use our reporter: its "new output" ignores ``progress_reporter`` (module docstring).
    A value the user exported is kept."""
    os.environ.setdefault(NEW_OUTPUT_VAR, "0")


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column names for search-space keys: the last part (``classifier.use_clr[0]`` -> ``use_clr[0]``);
    the whole key where two keys would share a short name (``lm.lr`` and ``classifier.lr``)."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    taken = list(last.values())
    return {k: short if taken.count(short) == 1 else k for k, short in last.items()}


def format_value(value: Any, digits: int = 3) -> str:
    """A sampled value for the table: floats to ``digits`` significant digits; nothing as blank."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return str(value)


@dataclass
class TrialRow:
    """What the table shows of one trial."""

    trial_id: str  # Ray's
    number: int | None  # the trial's number in the Optuna study: what MLflow's run names and the dashboard show
    state: str
    epoch: int | None
    epochs_total: int | None
    value: float | None  # the search metric at the trial's latest epoch
    sampled: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.number) if self.number is not None else self.trial_id


def trial_state(status: str, last_result: Mapping[str, Any]) -> str:
    """A Ray trial status in the words the leaderboard uses: a trial Tune terminated before its last
    epoch was stopped by ASHA (``outcome.stopped_early``)."""
    if status == "TERMINATED":
        return STOPPED if stopped_early(last_result) else COMPLETED
    return {"PENDING": PENDING, "RUNNING": RUNNING, "PAUSED": PAUSED, "ERROR": ERRORED}.get(status, status.lower())


def trial_row(trial: Any, metric: str) -> TrialRow:
    """A row from a Ray ``Trial`` (its ``trial_id``, ``status``, ``config`` and ``last_result``)."""
    result = trial.last_result or {}
    value = result.get(metric)
    epoch, total = result.get(T.EPOCH), result.get(T.EPOCHS_TOTAL)
    number = (trial.config or {}).get(T.OPTUNA_NUMBER)
    return TrialRow(
        trial_id=str(trial.trial_id), number=number if isinstance(number, int) else None,
        state=trial_state(trial.status, result),
        epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
        epochs_total=int(total) if isinstance(total, (int, float)) else None,
        value=float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None,
        sampled=T.sampled_values(trial.config or {}))


def best_row(rows: Sequence[TrialRow], mode: str) -> TrialRow | None:
    """The row with the best latest metric value (``mode``: max or min); None before any epoch ended."""
    scored = [r for r in rows if r.value is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r.value)


def summary_line(rows: Sequence[TrialRow], total: int | None, metric: str, mode: str) -> str:
    """``k of N done (...), r running; best so far METRIC X (trial ID, epoch E)``."""
    count = {state: sum(r.state == state for r in rows) for state in (*FINISHED_STATES, RUNNING, PENDING)}
    done = sum(count[s] for s in FINISHED_STATES)
    parts = [f"{count[s]} {s}" for s in FINISHED_STATES if count[s]]
    line = f"{done} of {total or len(rows)} done" + (f" ({', '.join(parts)})" if parts else "")
    if count[RUNNING]:
        line += f", {count[RUNNING]} running"
    best = best_row(rows, mode)
    if best is None:
        return line + f"; no {metric} yet"
    return line + f"; best so far {metric} {best.value:.4f} (trial {best.label}, epoch {best.epoch})"


def render_table(rows: Sequence[TrialRow], params: Sequence[str], metric: str) -> str:
    """An aligned plain-text table: trial, status, one column per searched value, epoch, metric."""
    names = short_names(params)
    header = ["trial", "ray id", "status", *(names[p] for p in params), "epoch", metric]
    body = [["" if r.number is None else str(r.number), r.trial_id, r.state,
             *(format_value(r.sampled.get(p)) for p in params),
             _epoch_cell(r), "" if r.value is None else f"{r.value:.4f}"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _epoch_cell(row: TrialRow) -> str:
    if row.epoch is None:
        return ""
    return f"{row.epoch}/{row.epochs_total}" if row.epochs_total else str(row.epoch)


def rows_to_show(rows: Sequence[TrialRow], max_rows: int, mode: str) -> tuple[list[TrialRow], int]:
    """At most ``max_rows`` rows, in trial order: every unfinished trial first claims a place, then the
    best finished ones. Returns the rows and how many were left out."""
    if len(rows) <= max_rows:
        return list(rows), 0
    sign = -1.0 if mode == "max" else 1.0
    finished = sorted((r for r in rows if r.state in FINISHED_STATES),
                      key=lambda r: sign * r.value if r.value is not None else math.inf)
    keep = [r for r in rows if r.state not in FINISHED_STATES][:max_rows]
    keep += finished[: max_rows - len(keep)]
    kept = {id(r) for r in keep}
    return [r for r in rows if id(r) in kept], len(rows) - len(keep)


def elapsed(seconds: float) -> str:
    """``1h 02m 03s``, ``2m 05s``, ``7s``."""
    s = int(seconds)
    h, m = s // 3600, s % 3600 // 60
    if h:
        return f"{h}h {m:02d}m {s % 60:02d}s"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


class SearchProgress(ProgressReporter):
    """Tune's progress reporter for a search: prints the table when a trial starts, ends or reports an
    epoch (at most every ``min_interval_s``), and at least every ``heartbeat_s`` while trials run.

    Kept picklable (no stream, no Ray objects): Tune saves it with the experiment and a resumed search
    uses it again.
    """

    def __init__(self, params: Sequence[str], metric: str, mode: str, total: int | None = None,
                 min_interval_s: float = 10.0, heartbeat_s: float = 300.0, max_rows: int = 20):
        self.params, self.metric, self.mode, self.total = list(params), metric, mode, total
        self.min_interval_s, self.heartbeat_s, self.max_rows = min_interval_s, heartbeat_s, max_rows
        self._start = time.time()
        self._last_print = -math.inf
        self._last_shown: tuple = ()

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        # Tune's metric/mode are None here (the scheduler and searcher hold them): keep ours.
        self._start = start_time or time.time()
        if total_samples:
            self.total = total_samples

    def should_report(self, trials: list, done: bool = False) -> bool:
        if done:
            return True
        now = time.time()
        if now - self._last_print < self.min_interval_s:
            return False
        changed = self._state(trials) != self._last_shown
        return changed or now - self._last_print >= self.heartbeat_s

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._last_print, self._last_shown = time.time(), self._state(trials)
        print(self.render(trials, done), flush=True)

    def render(self, trials: list, done: bool = False) -> str:
        rows = [trial_row(t, self.metric) for t in trials]
        shown, left_out = rows_to_show(rows, self.max_rows, self.mode)
        title = f"search {'finished' if done else 'progress'}, {elapsed(time.time() - self._start)}"
        parts = [title, render_table(shown, self.params, self.metric)]
        if left_out:
            parts.append(f"({left_out} finished trials not shown; the leaderboard at the end lists every trial)")
        parts.append(summary_line(rows, self.total, self.metric, self.mode))
        return "\n" + "\n".join(parts)

    def _state(self, trials: list) -> tuple:
        """What a new table would show differently: each trial's status and epoch."""
        return tuple((t.trial_id, t.status, (t.last_result or {}).get(T.EPOCH)) for t in trials)


def progress_reporter(cfg: SearchConfig) -> SearchProgress:
    """The reporter ``build_tuner`` hands to ``tune.RunConfig``: the space's keys, the search's metric."""
    s = cfg.search
    return SearchProgress([p.key for p in cfg.space.params], s.metric, s.mode, s.num_samples)
