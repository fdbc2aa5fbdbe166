"""A search's trials as its own files record them: the one reader the leaderboard, export and a resume use.

Two sources, both plain data (nothing here unpickles, and Ray's experiment state is never read):

* the Optuna study in ``optuna.db``: which trials the search asked, how each ended (the searcher tells it
  as trials end: COMPLETE, PRUNED by ASHA, FAIL; RUNNING when the search stopped first), and the Ray trial
  ids each trial ran as (a resumed trial runs again under a new id);
* each run's folder ``trial_<ray id>``: ``params.json`` (the trial's config, carrying its Optuna number),
  ``result.json`` (one JSON line per epoch reported) and ``error.txt`` (Tune's, when it failed), written by
  Tune's JSON logger as the trial runs.

A trial's identity is its Optuna number; its last result is the latest epoch any of its runs reported.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import outcome, store
from search import trainable as T

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: User attributes the searcher sets on each Optuna trial: the Ray trial it runs as now, every Ray trial it
#: ran as (oldest first), and on a retried trial's new record, the number of the trial it retried.
RAY_TRIAL_ATTR, RAY_TRIALS_ATTR, RETRY_OF_ATTR = "ray_trial_id", "ray_trial_ids", "retry_of"


@dataclass
class TrialRecord:
    number: int  # the trial's number in the search's Optuna study
    status: str  # an outcome (search/outcome.py)
    trial_id: str | None = None  # the Ray trial id of its latest run
    config: dict[str, Any] = field(default_factory=dict)  # its latest run's config (params.json)
    result: dict[str, Any] = field(default_factory=dict)  # the latest epoch it reported
    error: str | None = None  # the one line of its error (errored trials)
    folders: list[Path] = field(default_factory=list)  # its runs' folders, oldest first


def ray_trial_ids(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The Ray trial ids an Optuna trial ran as, oldest first."""
    attrs = trial.user_attrs
    return list(attrs.get(RAY_TRIALS_ATTR) or ([attrs[RAY_TRIAL_ATTR]] if RAY_TRIAL_ATTR in attrs else []))


def own_trials(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    """This search's trials by number, each as it stands now: a retried trial's own record (``retry_of``)
    replaces the FAIL it retried. Warm-start trials (other searches') and points not yet asked are left out."""
    from optuna.trial import TrialState

    found: dict[int, Any] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if RAY_TRIAL_ATTR not in trial.user_attrs or trial.state == TrialState.WAITING:
            continue
        found[int(trial.user_attrs.get(RETRY_OF_ATTR, trial.number))] = trial
    return found


def status_of(trial: optuna.trial.FrozenTrial) -> str:
    from optuna.trial import TrialState

    return {TrialState.COMPLETE: outcome.COMPLETED, TrialState.PRUNED: outcome.STOPPED,
            TrialState.FAIL: outcome.ERRORED}.get(trial.state, outcome.INTERRUPTED)


def read_trials(search_dir: str | Path, study: optuna.Study | None = None) -> list[TrialRecord]:
    """Every trial of the search in ``search_dir``, by Optuna number (none without a study)."""
    search_dir = Path(search_dir)
    study = study if study is not None else store.load_study(search_dir)
    if study is None:
        return []
    records = []
    for number, trial in own_trials(study).items():
        record = TrialRecord(number, status_of(trial))
        for ray_id in ray_trial_ids(trial):
            folder = search_dir / T.trial_dirname(ray_id)
            config, result, error = read_run(folder)
            if config is None:
                continue  # asked, but the search stopped before this run started
            record.folders.append(folder)
            record.trial_id, record.config = ray_id, config
            if result and int(result.get(T.EPOCH) or 0) >= int(record.result.get(T.EPOCH) or 0):
                record.result = result
            if error and record.status == outcome.ERRORED:  # (a failure Tune retried past is no error)
                record.error = outcome.error_line(error)
        records.append(record)
    return records


def read_run(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any], str | None]:
    """``(config, last result, error text)`` of one run's folder; config None when it has no params.json.

    The last result is the latest epoch in ``result.json`` or in a checkpoint's metadata (the metrics the
    trial saved with it): Tune's logger can lose a line (a full disk) that the checkpoint, persisted before
    the result was delivered, still holds. A line cut short by a kill is skipped."""
    try:
        config = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}, None
    results: list[Any] = []
    try:
        results += [_json(line) for line in (folder / "result.json").read_text(encoding="utf-8").splitlines()]
    except OSError:
        pass
    for meta in folder.glob("checkpoint_*/.metadata.json"):  # Ray's checkpoint metadata: plain JSON
        try:
            results.append((_json(meta.read_text(encoding="utf-8")) or {}).get("metrics"))
        except (OSError, AttributeError):
            continue
    last: dict[str, Any] = {}
    for result in results:
        if isinstance(result, dict) and int(result.get(T.EPOCH) or 0) > int(last.get(T.EPOCH) or 0):
            last = result
    last = {k: v for k, v in last.items() if k != "config"}
    try:
        error = (folder / "error.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        error = None
    return (config if isinstance(config, dict) else None), last, error


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
