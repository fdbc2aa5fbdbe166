"""A search's trials as its own files record them: the one reader the leaderboard, export and a resume use.

Only what is written straight into the search folder counts (nothing here unpickles, and Ray's experiment
state is never read):

* the Optuna study in ``optuna.db``, which the driver writes as trials are asked and end: which trials the
  search asked, their sampled values, how each ended (COMPLETE, PRUNED by ASHA, FAIL; RUNNING when the search
  stopped first), and the Ray trial ids each ran as (a resumed trial runs again under a new id);
* ``search.json``: the base recipe and run settings, which with the sampled values make a trial's config;
* each run's checkpoints (``trial_<ray id>/checkpoint_*``), which the trial persists before it reports the
  epoch: their metadata holds that epoch's metrics.

Tune's own ``result.json`` and ``error.txt`` are read too when they are there, but they are written on the
driver and copied into the search folder only now and then, so after a killed driver (or a full disk) they
can be behind or missing: they never decide anything alone. A trial's identity is its Optuna number; its
last result is the latest epoch any of its runs saved.
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

    from search.settings import SearchConfig

logger = logging.getLogger(__name__)

#: User attributes the searcher sets on each Optuna trial: the Ray trial it runs as now, every Ray trial it
#: ran as (oldest first), and on a retried trial's new record, the number of the trial it retried.
RAY_TRIAL_ATTR, RAY_TRIALS_ATTR, RETRY_OF_ATTR = "ray_trial_id", "ray_trial_ids", "retry_of"


@dataclass
class TrialRecord:
    number: int  # the trial's number in the search's Optuna study
    status: str  # an outcome (search/outcome.py)
    trial_id: str | None = None  # the Ray trial id of its latest run
    config: dict[str, Any] = field(default_factory=dict)  # its config: search.json's recipe and run, its values
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


def read_trials(search_dir: str | Path, study: optuna.Study | None = None,
                cfg: SearchConfig | None = None) -> list[TrialRecord]:
    """Every trial of the search in ``search_dir``, by Optuna number (none without a study). ``cfg``: the
    search's config (default: read from its ``search.json``)."""
    search_dir = Path(search_dir)
    study = study if study is not None else store.load_study(search_dir)
    if study is None:
        return []
    if cfg is None:
        cfg, _ = store.read_search_json(search_dir)
    from ulmfit_core.config import build_recipe, to_dict

    fixed, base = T.param_space(cfg, search_dir), to_dict(build_recipe(cfg.recipe))
    records = []
    for number, trial in own_trials(study).items():
        ids = ray_trial_ids(trial)
        config = {**fixed, **cfg.space.sample(trial, base), T.OPTUNA_NUMBER: number}
        record = TrialRecord(number, status_of(trial), ids[-1] if ids else None, config)
        for ray_id in ids:
            folder = search_dir / T.trial_dirname(ray_id)
            if not folder.is_dir():
                continue  # asked, but the search stopped before this run started
            record.folders.append(folder)
            result, error = read_run(folder)
            if result and int(result.get(T.EPOCH) or 0) >= int(record.result.get(T.EPOCH) or 0):
                record.result = result
            if error and record.status == outcome.ERRORED:  # (a failure Tune retried past is no error)
                record.error = outcome.error_line(error)
        records.append(record)
    return records


def read_run(folder: Path) -> tuple[dict[str, Any], str | None]:
    """``(last result, error text)`` of one run's folder.

    The last result is the latest epoch of its checkpoints' metadata (persisted by the trial before it
    reported the epoch) or of ``result.json`` (more fields, but copied from the driver now and then); a line
    cut short by a kill is skipped."""
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
    return last, error


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
