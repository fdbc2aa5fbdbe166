"""The searcher: an Optuna study driven through its ask-and-tell interface, behind Ray Tune's public
``Searcher`` interface (``suggest``, ``on_trial_result``, ``on_trial_complete``).

The study lives in the search folder (``optuna.db``, SQLite, named after the folder; ``search/store.py``):
``suggest`` asks it for a trial and samples the search space through that trial (define-by-run, so
conditional parameters work); every epoch's value is reported once, at its epoch; a trial ASHA stopped is
told as PRUNED (TPE then ranks it by its last reported value), a finished one as COMPLETE, a failed one as
FAIL. Each Optuna trial records the Ray trials it ran as and its MLflow run (user attributes
``ray_trial_id``, ``ray_trial_ids``, ``mlflow_run_id``), and each trial's config carries its Optuna number
(``optuna_trial``), which its MLflow run and its row in the leaderboard show.

TPE (seeded by ``search.seed``) proposes at random for its first ``startup_trials(num_samples)`` trials, then
from its model of the finished ones; ``algorithm: random`` samples at random throughout (docs/SEARCH.md).

A resume is this study continued, not Tune's saved state (``search/tuner.py``): :meth:`continue_unfinished`
queues the trials the stopped search had not finished (RUNNING in the study) or that failed; ``suggest`` hands
them out first, with their own values and the folders of their earlier runs (``trainable.EARLIER_RUNS``),
where the trial finds its newest checkpoint. A failed trial that succeeds on its retry is added as a new
Optuna trial (``retry_of``: finished trials are read-only), so the study counts it once, as what it became.
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

from search import records, store
from search.lm_gate import LMGate, LMSettingsOf
from search.outcome import EPOCH, stopped_early
from search.records import RAY_TRIAL_ATTR, RAY_TRIALS_ATTR, RETRY_OF_ATTR
from search.settings import SearchConfig
from search.space import SearchSpace
from search.trainable import EARLIER_RUNS, OPTUNA_NUMBER, trial_dirname
from ulmfit_core.config import build_recipe, to_dict

logger = logging.getLogger(__name__)

#: User attribute of each Optuna trial: its MLflow run.
MLFLOW_RUN_ATTR = "mlflow_run_id"
#: A trial asked as the search stopped and never handed to Tune, told FAIL by the resume.
ABANDONED_ATTR = "abandoned"
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
        self.number: dict[str, int] = {}  # Ray trial id -> Optuna trial number (every trial handed out)
        self.reported: dict[str, int] = {}  # Ray trial id -> last epoch reported to Optuna
        self.failed: dict[str, dict[int, float]] = {}  # retry of a trial told FAIL -> its epochs' values
        self.ran_as: dict[str, list[str]] = {}  # such a retry -> every Ray trial id of its trial
        self.linked: set[str] = set()  # Ray trial ids whose Optuna trial records its MLflow run
        self.pending: list[optuna.trial.FrozenTrial] = []  # a resume: trials to run again, handed out first

    # -- Tune's Searcher interface ------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space come from the search config

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next configuration: a trial to run again (a resume), else the study's next trial (a point to
        evaluate, then TPE or random); with an LM gate, one whose language model no other trial is training,
        or None (Tune asks again later)."""
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
        if self.pending:
            config = self._run_again(trial_id, self.pending.pop(0))
        else:
            trial = self.study.ask()
            sampled = self.space.sample(trial, self.base)
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
            trial.set_user_attr(RAY_TRIALS_ATTR, [trial_id])
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
        if trial is None:  # told already
            return None
        self._link_run(trial_id, trial)
        result = result or {}
        if not error:
            self._report(trial_id, result, trial)
        value = result.get(self.metric)
        if error or value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        elif stopped_early(result):
            self.study.tell(trial, state=TrialState.PRUNED)  # its value: the last epoch reported
        else:
            self.study.tell(trial, float(value))
        return None

    def save(self, checkpoint_path: str) -> None:
        """What Tune's experiment state keeps of this searcher: a note only. The study is in ``optuna.db``,
        and a resume reads it from there (:meth:`continue_unfinished`), never from Tune's saved state."""
        Path(checkpoint_path).write_text(json.dumps({"study": self.study.study_name, "optuna_db": store.OPTUNA_DB}),
                                         encoding="utf-8")

    def restore(self, checkpoint_path: str) -> None:
        raise ValueError("this search resumes from its optuna.db, not from Tune's saved state: run "
                         "`python launch.py search --resume DIR`")

    def __getstate__(self) -> dict[str, Any]:
        # Tune keeps the searcher with its experiment (tuner.pkl), which this project never reads back.
        return {**self.__dict__, "study": None, "storage": None, "live": {}, "run_id_of": None, "pending": []}

    # -- a resume ------------------------------------------------------------------------------------------
    def continue_unfinished(self) -> tuple[int, int]:
        """A resumed search: queue its trials that had not finished (RUNNING in the study) and those that
        failed, to be handed out first. Returns ``(trials to run again, trials of the budget not yet asked)``.
        A trial the search stopped in the middle of asking (Ctrl-C or a kill inside ``suggest``: RUNNING, never
        handed to Tune) is told FAIL, marked abandoned, and not counted against the budget."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if RAY_TRIAL_ATTR not in trial.user_attrs:
                self._open(trial.number).set_user_attr(ABANDONED_ATTR, "asked as the search stopped; never ran")
                self.study.tell(trial.number, state=TrialState.FAIL)
        own = records.own_trials(self.study)
        self.pending = [t for t in own.values() if t.state in (TrialState.RUNNING, TrialState.FAIL)]
        return len(self.pending), max(0, self.sampler[2] - len(own))

    def _run_again(self, trial_id: str, frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """The config of a trial run again as ``trial_id``: its own values (a FrozenTrial answers the space's
        ``suggest_*`` calls with them) and the folders of its earlier runs, where its checkpoints are."""
        earlier = records.ray_trial_ids(frozen)
        config = {**self.space.sample(frozen, self.base), OPTUNA_NUMBER: frozen.number,
                  EARLIER_RUNS: [trial_dirname(r) for r in earlier]}
        self.number[trial_id] = frozen.number
        if frozen.state == TrialState.RUNNING:
            trial = self._open(frozen.number)
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
            trial.set_user_attr(RAY_TRIALS_ATTR, [*earlier, trial_id])
            self.live[trial_id] = trial
            self.reported[trial_id] = max(frozen.intermediate_values, default=0)
        else:  # told FAIL: the retry's outcome becomes a new Optuna trial (_revive)
            self.failed[trial_id] = dict(frozen.intermediate_values)
            self.ran_as[trial_id] = [*earlier, trial_id]
        return config

    def _open(self, number: int) -> optuna.Trial:
        """The study's running trial ``number``, to report to and tell (Optuna's public storage API)."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return optuna.Trial(self.study, self.storage.get_trial_id_from_study_id_trial_number(study_id, number))

    # -- helpers -----------------------------------------------------------------------------------------
    def _report(self, trial_id: str, result: Mapping[str, Any], trial: optuna.Trial | None = None) -> None:
        """Report the result's epoch to Optuna once (a replayed or repeated epoch is not reported again)."""
        trial = trial or self.live.get(trial_id)
        epoch, value = result.get(EPOCH), result.get(self.metric)
        if trial_id in self.failed:  # a retry of a trial already told FAIL: kept for _revive
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
        for table in (self.live, self.number, self.reported, self.failed, self.ran_as):
            if old in table:
                table[new] = table.pop(old)
        if new in self.ran_as:
            self.ran_as[new] = [*self.ran_as[new][:-1], new]
        if new in self.live:
            trial = self.live[new]
            ids = [r for r in records.ray_trial_ids(self._frozen(self.number[new])) if r != old]
            trial.set_user_attr(RAY_TRIAL_ATTR, new)
            trial.set_user_attr(RAY_TRIALS_ATTR, [*ids, new])

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _revive(self, trial_id: str, result: dict | None, error: bool) -> None:
        """A trial told FAIL ran again (a resumed search retries failed trials): its outcome is added as a
        new Optuna trial with the same values, so the study counts it once, as what it became."""
        reported = self.failed.pop(trial_id)
        ran_as = self.ran_as.pop(trial_id, [trial_id])
        value, epoch = (result or {}).get(self.metric), (result or {}).get(EPOCH)
        if error or value is None:
            return  # failed again: the FAIL already told stands
        reported[int(epoch or 0)] = float(value)
        frozen = self._frozen(self.number[trial_id])
        state = TrialState.PRUNED if stopped_early(result or {}) else TrialState.COMPLETE
        attrs = {RAY_TRIAL_ATTR: trial_id, RAY_TRIALS_ATTR: ran_as, RETRY_OF_ATTR: frozen.number}
        run_id = self.run_id_of(trial_id, RUN_ID_WAIT_S) if self.run_id_of is not None else None
        if run_id:
            attrs[MLFLOW_RUN_ATTR] = run_id
        self.study.add_trial(optuna.trial.create_trial(
            state=state, value=float(value), params=frozen.params, distributions=frozen.distributions,
            intermediate_values=reported, user_attrs=attrs))


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
