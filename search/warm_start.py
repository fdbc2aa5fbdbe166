"""Warm start: a new search's study starts with the trials of earlier searches, then the points to try first.

``search.warm_start`` lists earlier searches, each a search folder (its ``optuna.db`` study) or an MLflow
experiment name (its newest search: the child runs' params and the metric's per-epoch history). Their
finished (COMPLETE) and stopped (PRUNED, with the intermediate values TPE ranks them by) trials are added
to the new study before its first trial, so TPE's first proposals are already informed. An earlier
trial is dropped, with a logged note naming it, when a value lies outside the new space: a choice not
offered, a number out of range, or a key the new space does not search. Only a search's own trials
are taken (not those it was itself warm-started with). The earlier search must optimise the same
metric in the same direction, from the same base recipe and data (keys the new space searches may differ):
its trials' scores mean nothing for another dataset or another recipe.

``search.points_to_evaluate`` are then enqueued: they are the first trials the new search runs (e.g.
the paper's values), each key a space key; keys left out are sampled.

Seeding happens once, when ``run_search`` creates the study; a resumed search reopens the stored
study (which already holds them), and each added trial is marked with its source, so seeding the same
study again adds nothing twice.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from search import portable, store, tracking
from search.errors import fail
from search.settings import SearchConfig
from search.space import SearchSpace

logger = logging.getLogger(__name__)

#: User attributes of a trial added by warm start: where it came from (which search, which trial).
SOURCE_ATTR = "warm_start_source"
TRIAL_ATTR = "warm_start_trial"
POINT_ATTR = "point_to_evaluate"  # index into search.points_to_evaluate


@dataclass(frozen=True)
class EarlierTrial:
    label: str  # "trial 7" (folder) or "run <id>" (MLflow), for notes
    params: dict[str, Any]  # space keys
    state: TrialState  # COMPLETE or PRUNED
    value: float
    intermediate: dict[int, float]


@dataclass(frozen=True)
class EarlierSearch:
    entry: str  # as written in search.warm_start
    source: str  # what it resolved to: a folder, or "experiment NAME, run ID"
    metric: str
    mode: str
    trials: tuple[EarlierTrial, ...]
    search_dir: str | None  # the search's folder (an MLflow parent run's search_dir tag), to spot a repeat
    recipe: dict[str, Any] | None = None  # its base recipe (None: not recorded, so not compared)


# -- reading earlier searches ------------------------------------------------------------------------


def read_earlier_searches(cfg: SearchConfig) -> list[EarlierSearch]:
    """Every ``search.warm_start`` entry, read and checked (same metric and mode). Call before this
    search's own MLflow parent run exists: an experiment's newest search must be an earlier one."""
    searches: list[EarlierSearch] = []
    for i, entry in enumerate(cfg.search.warm_start):
        key = f"search.warm_start[{i}]"
        search = _read(entry, cfg.mlflow.tracking_uri, key)
        if (search.metric, search.mode) != (cfg.search.metric, cfg.search.mode):
            fail(key, f"{search.source} optimised {search.metric} ({search.mode}), this search "
                      f"{cfg.search.metric} ({cfg.search.mode}); warm start only from searches of the same metric and mode")
        differ = recipe_differences(search.recipe, cfg.recipe, cfg.space.keys)
        if differ:
            fail(key, f"{search.source} ran another base recipe ({'; '.join(differ[:4])}): its trials' scores "
                      f"belong to that recipe and data, not this search's; warm start only from a search of the same "
                      f"recipe (keys this space searches may differ)")
        if search.search_dir and search.search_dir in {s.search_dir for s in searches}:
            logger.warning("warm start: %s is %s again (listed twice, as a folder and an experiment?); read once",
                           entry, search.search_dir)
            continue
        searches.append(search)
    return searches


def _read(entry: str, tracking_uri: str, key: str) -> EarlierSearch:
    path = Path(entry).expanduser()
    if path.is_dir():
        if not (path / store.SEARCH_JSON).exists():
            fail(key, f"{entry} is a folder but not a search folder (no {store.SEARCH_JSON}); give the folder "
                      f"a search printed, e.g. runs/search/NAME-YYYYmmdd-HHMMSS")
        return from_search_dir(path)
    try:
        return from_experiment(tracking_uri, entry)
    except tracking.TrackingError as e:
        fail(key, f"{entry!r} is neither a search folder nor an MLflow experiment holding a search: {e}")


def from_search_dir(search_dir: Path) -> EarlierSearch:
    """The own finished and pruned trials of the study stored in a search folder."""
    from search.searcher import load_study  # Ray: only when a folder is read

    cfg, _ = store.read_search_json(search_dir)
    study = load_study(search_dir)
    trials = tuple(
        EarlierTrial(f"trial {t.number}", dict(t.params), t.state, float(t.value), dict(t.intermediate_values))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if SOURCE_ATTR not in t.user_attrs and t.value is not None)
    folder = str(Path(search_dir).resolve())
    return EarlierSearch(str(search_dir), folder, cfg.search.metric, cfg.search.mode, trials, folder, cfg.recipe)


def from_experiment(tracking_uri: str, experiment: str) -> EarlierSearch:
    """The newest search of an MLflow experiment: its completed and stopped child runs."""
    data = tracking.newest_search_trials(tracking_uri, experiment)
    trials = []
    for run in data["trials"]:
        if not run["history"]:
            continue
        steps = sorted(run["history"])
        state = TrialState.COMPLETE if run["status"] == tracking.COMPLETED else TrialState.PRUNED
        # The exact values where recorded; the displayed (rounded) params otherwise.
        params = run["sampled"] or {space_key(k): parse_param(v) for k, v in run["params"].items()}
        trials.append(EarlierTrial(f"run {run['run_id']}", params, state, float(run["history"][steps[-1]]),
                                   {int(s): float(run["history"][s]) for s in steps}))
    source = f"experiment {experiment}, run {data['parent_run_id']}"
    folder = str(Path(data["search_dir"]).resolve()) if data.get("search_dir") else None
    return EarlierSearch(experiment, source, data["metric"], data["mode"], tuple(trials), folder, data.get("recipe"))


#: Recipe keys that change where or how fast a run goes, not what a trial scores.
_RUN_ONLY = ("device",)


def recipe_differences(earlier: dict[str, Any] | None, current: dict[str, Any], searched: Sequence[str]) -> list[str]:
    """``key: earlier vs now`` for each base-recipe value that differs, apart from searched keys (a path by
    its file name: the same data may sit elsewhere on another machine). Empty when ``earlier`` is unknown."""
    if earlier is None:
        return []
    from ulmfit_core.config import build_recipe, to_dict

    def flat(recipe: dict[str, Any]) -> dict[str, Any]:
        values = tracking.flatten(to_dict(build_recipe(recipe)))
        return {k: Path(v).name if k in _PATHS and isinstance(v, str) else v for k, v in values.items()}

    old, new = flat(earlier), flat(current)
    skip = {k.split("[")[0] for k in searched}
    return [f"{k} {old.get(k)!r} vs {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in skip and not k.startswith(_RUN_ONLY)]


_PATHS = {f"{section}.{key}" for section, key in portable.RECIPE_PATH_KEYS}
_ELEMENT = re.compile(r"\.(\d+)$")


def space_key(mlflow_name: str) -> str:
    """Undo ``tracking.mlflow_key``: ``classifier.use_clr.0`` -> ``classifier.use_clr[0]``."""
    return _ELEMENT.sub(r"[\1]", mlflow_name)


def parse_param(text: str) -> Any:
    """An MLflow param (``str(value)``) back to its value: numbers, booleans, ``None``, strings."""
    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# -- seeding the new study ---------------------------------------------------------------------------


def fit_to_space(search: EarlierSearch, space: SearchSpace) -> tuple[list[EarlierTrial], list[str]]:
    """The trials whose every value the new space can draw, and a note for each one dropped."""
    kept, notes = [], []
    for trial in search.trials:
        problem = space.outside(trial.params)
        if problem:
            notes.append(f"warm start: {search.source}, {trial.label} left out: {problem}")
        else:
            kept.append(trial)
    return kept, notes


def seed_study(study: optuna.Study, space: SearchSpace, searches: Sequence[EarlierSearch]) -> dict[str, int]:
    """Add the earlier searches' trials that fit ``space`` to ``study``; returns how many each gave.
    Trials already added (same source and label) are not added again."""
    present = {(t.user_attrs.get(SOURCE_ATTR), t.user_attrs.get(TRIAL_ATTR)) for t in study.get_trials(deepcopy=False)}
    added: dict[str, int] = {}
    for search in searches:
        kept, notes = fit_to_space(search, space)
        for note in notes:
            logger.warning(note)
        new = [t for t in kept if (search.source, t.label) not in present]
        for trial in new:
            study.add_trial(optuna.trial.create_trial(
                state=trial.state, value=trial.value, params=trial.params,
                distributions={k: space.param(k).distribution() for k in trial.params},
                intermediate_values=trial.intermediate,
                user_attrs={SOURCE_ATTR: search.source, TRIAL_ATTR: trial.label}))
        added[search.source] = len(new)
        logger.info("warm start: %d of %d trials from %s", len(kept), len(search.trials), search.source)
    return added


def enqueue_points(study: optuna.Study, points: Sequence[dict[str, Any]]) -> None:
    """The configurations to try first, in order (validated against the space with the config)."""
    for i, point in enumerate(points):
        study.enqueue_trial(dict(point), user_attrs={POINT_ATTR: i})


def start_study(study: optuna.Study, cfg: SearchConfig, searches: Sequence[EarlierSearch]) -> None:
    """A new search's study before its first trial: earlier trials first, then the points to try first."""
    seed_study(study, cfg.space, searches)
    enqueue_points(study, cfg.search.points_to_evaluate)


def describe(searches: Sequence[EarlierSearch]) -> str:
    """One line for the parent run's ``warm_start_from`` tag."""
    return "; ".join(f"{s.source} ({len(s.trials)} trials)" for s in searches)
