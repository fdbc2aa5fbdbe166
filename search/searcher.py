"""The searcher: an Optuna study driven through its ask-and-tell interface, behind Ray Tune's public
``Searcher`` interface (``suggest``, ``on_trial_result``, ``on_trial_complete``, ``save``/``restore``).

The study lives in the search folder (``optuna.db``, SQLite, named after the folder; ``search/store.py``):
``suggest`` asks it for a trial and samples the search space through that trial (define-by-run, so
conditional parameters work); every epoch's value is reported once, at its epoch; a trial ASHA stopped is
told as PRUNED (TPE then ranks it by its last reported value), a finished one as COMPLETE, a failed one as
FAIL. Each Optuna trial records the Ray trial it ran as and its MLflow run (user attributes
``ray_trial_id``, ``mlflow_run_id``), and each trial's config carries its Optuna number (``optuna_trial``),
which its MLflow run and its row in the leaderboard show.

TPE (seeded by ``search.seed``) proposes at random for its first ``startup_trials(num_samples)`` trials, then
from its model of the finished ones; ``algorithm: random`` samples at random throughout (docs/SEARCH.md).

``save``/``restore`` write and read this searcher's own state as JSON (which Ray trial is which Optuna
trial, the epochs reported), never a pickle; ``restore`` reopens the study from ``optuna.db``, so trials
told after the last save are seen as told.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search import store
from search.lm_gate import LMGate, LMSettingsOf
from search.outcome import EPOCH, stopped_early
from search.settings import SearchConfig
from search.space import SearchSpace
from search.trainable import OPTUNA_NUMBER
from ulmfit_core.config import build_recipe, to_dict

logger = logging.getLogger(__name__)

#: User attributes of each Optuna trial: the Ray trial it ran as, and its MLflow run.
RAY_TRIAL_ATTR, MLFLOW_RUN_ATTR = "ray_trial_id", "mlflow_run_id"
#: A trial that was asked but never ran (the driver stopped in between), told FAIL on restore.
ABANDONED_ATTR = "abandoned"
STATE_VERSION = 1
#: How long a trial's end waits for the MLflow writer to have created its run (normally long done).
RUN_ID_WAIT_S = 5.0


def startup_trials(num_samples: int) -> int:
    """TPE's random trials before it models: a quarter of the search, from 2 up to Optuna's default 10,
    so a short search is still mostly model-based (with Optuna's 10, an 8-trial search is all random)."""
    return max(2, min(10, num_samples // 4))


def make_sampler(algorithm: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples))


class StudySearcher(Searcher):
    """Optuna's ask/tell behind Tune's ``Searcher`` (see the module docstring).

    ``run_id_of`` maps a Ray trial id to its MLflow run id once the run exists (the tracking callback's
    record); with ``search_lm: true``, ``lm_gate`` holds back a configuration whose language model another
    trial is training right now, so no trial waits for it holding a GPU (:mod:`search.lm_gate`).
    """

    def __init__(self, search_dir: Path, sampler: tuple[str, int, int], space: SearchSpace,
                 base: Mapping[str, Any], metric: str, mode: str, *, create: bool = True,
                 lm_gate: LMGate | None = None, run_id_of: Callable[[str, float], str | None] | None = None):
        super().__init__(metric=metric, mode=mode)
        self.search_dir, self.sampler = str(search_dir), tuple(sampler)  # (algorithm, seed, num_samples)
        self.space, self.base, self.lm_gate, self.run_id_of = space, dict(base), lm_gate, run_id_of
        self.study, self.storage = open_study(Path(search_dir), *self.sampler, metric=metric, mode=mode, create=create)
        self.live: dict[str, optuna.Trial] = {}  # Ray trial id -> its running Optuna trial
        self.number: dict[str, int] = {}  # Ray trial id -> Optuna trial number (every trial asked)
        self.reported: dict[str, int] = {}  # Ray trial id -> last epoch reported to Optuna
        self.failed: dict[str, dict[int, float]] = {}  # told FAIL -> epochs reported by a later run of it
        self.linked: set[str] = set()  # Ray trial ids whose Optuna trial records its MLflow run

    # -- Tune's Searcher interface ------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space come from the search config

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next configuration: the study's next trial (a point to evaluate, then TPE or random); with an
        LM gate, one whose language model no other trial is training, or None (Tune asks again later)."""
        gate = self.lm_gate
        if gate is not None:
            released = gate.release()
            if released is not None:  # asked earlier under another id: the Optuna trial follows the new one
                asked_as, config = released
                self._rename(asked_as, trial_id)
                gate.admit(trial_id, config)
                return config
            if not gate.may_ask():
                return None
        trial = self.study.ask()
        sampled = self.space.sample(trial, self.base)
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        self.live[trial_id], self.number[trial_id] = trial, trial.number
        config = {**sampled, OPTUNA_NUMBER: trial.number}
        if gate is not None and not gate.admit(trial_id, config):
            logger.info("trial %s waits, holding no resources, for the language model another trial is training",
                        trial_id)
            return None
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.lm_gate is not None:
            self.lm_gate.on_result(trial_id)
        self._link_run(trial_id)
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.lm_gate is not None:
            self.lm_gate.on_end(trial_id)
        if trial_id in self.failed:
            return self._revive(trial_id, result, error)
        trial = self.live.pop(trial_id, None)
        if trial is None:  # told already (a result replayed after a restore)
            return None
        self._link_run(trial_id, trial)
        if error:
            self.study.tell(trial, state=TrialState.FAIL)
            self.failed[trial_id] = {}
            return None
        result = result or {}
        self._report(trial_id, result, trial)
        value = result.get(self.metric)
        if value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        elif stopped_early(result):
            self.study.tell(trial, state=TrialState.PRUNED)  # its value: the last epoch reported
        else:
            self.study.tell(trial, float(value))
        return None

    def save(self, checkpoint_path: str) -> None:
        """This searcher's state as JSON (the study itself is in ``optuna.db``)."""
        state = {"version": STATE_VERSION, "study": self.study.study_name, "number": self.number,
                 "reported": self.reported, "live": sorted(self.live), "linked": sorted(self.linked),
                 "failed": {t: {str(k): v for k, v in steps.items()} for t, steps in self.failed.items()}}
        Path(checkpoint_path).write_text(json.dumps(state), encoding="utf-8")

    def restore(self, checkpoint_path: str) -> None:
        """Read :meth:`save`'s JSON and reopen the running trials from the study as it is in ``optuna.db``:
        a trial told after that save stays told; one asked but never run is told FAIL (``abandoned``)."""
        state = json.loads(Path(checkpoint_path).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{checkpoint_path}: not a searcher state this version wrote")
        if self.study is None:  # brought back by Tune without its study: reopen it from optuna.db
            self.study, self.storage = open_study(Path(self.search_dir), *self.sampler, metric=self.metric,
                                                  mode=self.mode, create=False)
        self.number = {str(k): int(v) for k, v in state["number"].items()}
        self.reported = {str(k): int(v) for k, v in state["reported"].items()}
        self.linked = set(state.get("linked", []))
        self.failed = {t: {int(k): float(v) for k, v in steps.items()} for t, steps in state["failed"].items()}
        self.reopen(set(state["live"]))

    def reopen(self, live: set[str]) -> None:
        """Live Optuna trials for the Ray trials in ``live`` whose Optuna trial is still running; running
        trials no Ray trial holds are told FAIL, marked abandoned."""
        self.live = {}
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        running = {t.number: t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for ray_id in sorted(live):
            number = self.number.get(ray_id)
            if number in running:
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
                self.live[ray_id] = optuna.Trial(self.study, trial_id)
        held = {self.number[r] for r in self.live}
        for number in sorted(set(running) - held):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
            optuna.Trial(self.study, trial_id).set_user_attr(
                ABANDONED_ATTR, "asked before the driver stopped, after its last saved state; never run")
            self.study.tell(number, state=TrialState.FAIL)
        if self.lm_gate is not None:
            self.lm_gate.after_restore()

    def __getstate__(self) -> dict[str, Any]:
        # Tune keeps the searcher with its experiment; the study and its live trials are reopened from
        # optuna.db by restore(), never unpickled.
        return {**self.__dict__, "study": None, "storage": None, "live": {}, "run_id_of": None}

    # -- helpers -----------------------------------------------------------------------------------------
    def _report(self, trial_id: str, result: Mapping[str, Any], trial: optuna.Trial | None = None) -> None:
        """Report the result's epoch to Optuna once (a replayed or repeated epoch is not reported again)."""
        trial = trial or self.live.get(trial_id)
        epoch, value = result.get(EPOCH), result.get(self.metric)
        if trial_id in self.failed:  # a retried run of a trial already told FAIL: kept for _revive
            if epoch is not None and value is not None:
                self.failed[trial_id][int(epoch)] = float(value)
            return
        if trial is None or epoch is None or value is None or int(epoch) <= self.reported.get(trial_id, 0):
            return
        trial.report(float(value), int(epoch))
        self.reported[trial_id] = int(epoch)

    def _link_run(self, trial_id: str, trial: optuna.Trial | None = None) -> None:
        """Record the trial's MLflow run on its Optuna trial once the run exists; at the trial's end (``trial``
        given: the last chance, Optuna's finished trials are read-only) wait a little for the MLflow writer."""
        wait_s = RUN_ID_WAIT_S if trial is not None else 0.0
        trial = trial or self.live.get(trial_id)
        if trial is None or trial_id in self.linked or self.run_id_of is None:
            return
        run_id = self.run_id_of(trial_id, wait_s)
        if run_id:
            trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
            self.linked.add(trial_id)

    def _rename(self, old: str, new: str) -> None:
        for table in (self.live, self.number, self.reported):
            if old in table:
                table[new] = table.pop(old)
        if new in self.live:
            self.live[new].set_user_attr(RAY_TRIAL_ATTR, new)

    def _revive(self, trial_id: str, result: dict | None, error: bool) -> None:
        """A trial told FAIL ran again (a resumed search retries errored trials): its outcome is added as a
        new Optuna trial with the same values, so the study counts it once, as what it became."""
        reported = self.failed.pop(trial_id)
        value, epoch = (result or {}).get(self.metric), (result or {}).get(EPOCH)
        if error or value is None:
            return  # failed again: the FAIL already told stands
        reported[int(epoch or 0)] = float(value)
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.number[trial_id])
        state = TrialState.PRUNED if stopped_early(result or {}) else TrialState.COMPLETE
        self.study.add_trial(optuna.trial.create_trial(
            state=state, value=float(value), params=frozen.params, distributions=frozen.distributions,
            intermediate_values=reported, user_attrs={RAY_TRIAL_ATTR: trial_id, "retry_of": frozen.number}))


def open_study(search_dir: Path, algorithm: str, seed: int, num_samples: int, *, metric: str, mode: str,
               create: bool) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The search's study in ``search_dir/optuna.db`` (created with ``create``, its objective named after
    ``metric``), with its sampler, and the storage it lives in."""
    storage = store.study_storage(store.study_url(search_dir))
    sampler = make_sampler(algorithm, seed, num_samples)
    name = store.study_name(search_dir)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler), storage
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                direction="maximize" if mode == "max" else "minimize")
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])  # optuna-dashboard and the plots name the objective
    return study, storage


def make_searcher(cfg: SearchConfig, search_dir: Path, *, create: bool = True,
                  run_id_of: Callable[[str, float], str | None] | None = None) -> StudySearcher:
    """The searcher of a search folder: a new study (``create``) or the stored one."""
    s = cfg.search
    return StudySearcher(search_dir, (s.algorithm, s.seed, s.num_samples), cfg.space, to_dict(build_recipe(cfg.recipe)),
                         s.metric, s.mode, create=create, lm_gate=_lm_gate(cfg), run_id_of=run_id_of)


def _lm_gate(cfg: SearchConfig) -> LMGate | None:
    """With ``search_lm: true`` trials train their own LMs: gate them so none waits for one holding a GPU.
    (With ``search_lm: false`` the one LM is trained before the trials: ``tuner.train_shared_lm_first``.)"""
    if not cfg.search.search_lm or build_recipe(cfg.recipe).classifier.from_scratch:
        return None
    return LMGate(LMSettingsOf(cfg.recipe), num_samples=cfg.search.num_samples, max_held=cfg.search.max_concurrent)


def load_study(search_dir: str | Path) -> optuna.Study:
    """The Optuna study of a search (e.g. for optuna.visualization or warm start), from its ``optuna.db``."""
    study = store.load_study(search_dir)
    if study is None:
        raise FileNotFoundError(f"{search_dir}: no {store.OPTUNA_DB} (the search's Optuna study)")
    return study
