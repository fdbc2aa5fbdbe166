"""The searcher: Optuna (TPE, or random for a baseline) behind Ray Tune's ``OptunaSearch``, taught
three things Ray 2.60's integration gets wrong for this service (see :class:`PruningAwareOptunaSearch`).

The study lives in the search folder (``optuna.db``, SQLite, named after the folder; ``search/store.py``):
every ask, report and tell goes to that database, ``optuna-dashboard sqlite:///DIR/optuna.db`` shows it,
and a resumed search continues it (:meth:`PruningAwareOptunaSearch.restore`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search import store
from search import trainable as T
from search.lm_gate import LMGate, LMSettingsOf
from search.settings import SearchConfig
from search.space import SearchSpace
from ulmfit_core.config import build_recipe, to_dict

logger = logging.getLogger(__name__)


class DefineByRun:
    """Optuna define-by-run space (picklable: Ray saves the searcher with the experiment)."""

    def __init__(self, space: SearchSpace, base: dict[str, Any]):
        self.space, self.base = space, base

    def __call__(self, trial: optuna.Trial) -> None:
        self.space.sample(trial, self.base)  # values are captured by Ray's wrapper around `trial`
        return None


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna what really happened to each trial.

    1. **Stopped trials are PRUNED.** Ray 2.60's ``on_trial_complete`` tells every trial that has a
       final metric as COMPLETE, including those ASHA stopped after one epoch: TPE would rank a 1-epoch
       accuracy against 4-epoch ones. And Tune skips ``on_trial_result`` for the result that triggered a
       stop, so that last value never became an intermediate value either. Here the final value is
       reported at its step, and a trial whose last epoch is before its ``epochs_total`` is told as
       PRUNED (Optuna then takes its last intermediate value as its value, which TPE uses).
    2. **Each step is reported once.** Under FIFO the final result reaches ``on_trial_result`` and then
       ``on_trial_complete``; it is reported only the first time.
    3. **A retried trial counts.** A trial that errored was told to Optuna as FAIL; when a resumed
       search (``resume_errored``) runs it again, Ray's base class ignores every later result as
       "already finished". Here its outcome is added to the study as a new trial with the same params.

    With ``search_lm: true`` it also holds back a configuration whose language model another trial is
    training right now, so that no trial waits for it holding a GPU (:mod:`search.lm_gate`).

    And it continues the stored study after a restore (Ray pickles the study with the searcher; see
    :meth:`restore`), and accepts HyperBand's pause notices (``on_pause``; Ray's base class lacks them).
    """

    def __init__(self, *args: Any, lm_gate: LMGate | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lm_gate = lm_gate  # search_lm: true: hold trials whose LM another trial is training
        self._last_step: dict[str, int] = {}  # trial id -> last step reported to Optuna
        self._failed: dict[str, dict[int, float]] = {}  # trial id told FAIL -> intermediate values since
        self._last_result: dict[str, dict[str, Any]] = {}  # trial id -> what its last result said

    def _state(self) -> tuple[dict[str, int], dict[str, dict[int, float]]]:
        # Searchers saved before these attributes existed come back without them.
        if not hasattr(self, "_last_step"):
            self._last_step, self._failed = {}, {}
        if not hasattr(self, "_last_result"):
            self._last_result = {}
        return self._last_step, self._failed

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    @property
    def lm_gate(self) -> LMGate | None:
        return getattr(self, "_lm_gate", None)  # searchers saved before the gate existed have none

    def suggest(self, trial_id: str) -> dict | str | None:
        """Optuna's next configuration; with an LM gate, one whose language model no other trial is
        training right now (see ``search/lm_gate.py``), or None (Tune asks again later)."""
        gate = self.lm_gate
        if gate is None:
            return super().suggest(trial_id)
        released = gate.release()
        if released is not None:  # asked earlier under another id: the Optuna trial follows the new one
            asked_as, config = released
            self._ot_trials[trial_id] = self._ot_trials.pop(asked_as)
            gate.admit(trial_id, config)
            return config
        if not gate.may_ask():
            return None
        config = super().suggest(trial_id)
        if not isinstance(config, dict) or gate.admit(trial_id, config):
            return config
        logger.info("trial %s waits, holding no resources, for the language model another trial is training",
                    trial_id)
        return None

    def on_pause(self, trial_id: str) -> None:
        """HyperBand paused the trial at a milestone; it resumes or is stopped later: nothing to tell yet."""

    def on_unpause(self, trial_id: str) -> None:
        """The paused trial runs on; its next results are reported as usual."""

    def restore(self, checkpoint_path: str) -> None:
        """Ray's restore unpickles the study as it was at the last save, with the storage's cache of that
        moment. Reopen it from its database instead, so trials told after that save are seen as told."""
        super().restore(checkpoint_path)
        self._reopen_study()
        if self.lm_gate is not None:
            self.lm_gate.after_restore()

    def _reopen_study(self) -> None:
        url = _database_url(self._ot_study)
        if url is None:  # an in-memory study (a search from before optuna.db): the pickle is the study
            return
        study = optuna.load_study(study_name=self._ot_study.study_name, storage=store.study_storage(url),
                                  sampler=self._ot_study.sampler, pruner=optuna.pruners.NopPruner())
        stored = {t._trial_id: t for t in study.get_trials(deepcopy=False)}
        for ray_id, old in list(self._ot_trials.items()):
            self._ot_trials[ray_id] = optuna.Trial(study, old._trial_id)
            if stored[old._trial_id].state.is_finished():
                self._completed_trials.add(ray_id)  # told after the last save: results replayed now are old
        self._ot_study = study
        known = {t._trial_id for t in self._ot_trials.values()}
        _abandon_unknown_running(study, known)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.lm_gate is not None:
            self.lm_gate.on_result(trial_id)
        last_step, failed = self._state()
        value, step = result.get(self.metric), result.get("training_iteration")
        if trial_id in failed:
            if value is not None and step is not None:
                failed[trial_id][int(step)] = float(value)
            return
        if trial_id in self._completed_trials:  # replayed after a restore; the study already has it
            return
        super().on_trial_result(trial_id, result)
        self._last_result[trial_id] = {k: result.get(k) for k in (self.metric, "training_iteration",
                                                                  T.EPOCH, T.EPOCHS_TOTAL)}
        if step is not None and trial_id not in self._completed_trials:
            last_step[trial_id] = int(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.lm_gate is not None:
            self.lm_gate.on_end(trial_id)
        last_step, failed = self._state()
        if result is None and not error:  # a paused trial stopped by HyperBand: Ray passes no result
            result = self._last_result.get(trial_id)
        self._last_result.pop(trial_id, None)
        if trial_id in failed:
            return self._revive(trial_id, result, error)
        if error or not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            if error and trial_id in self._ot_trials:
                failed[trial_id] = {}
            return None
        ot_trial = self._ot_trials[trial_id]
        value, step = result.get(self.metric), result.get("training_iteration")
        if value is not None and step is not None and int(step) > last_step.get(trial_id, 0):
            ot_trial.report(value, step)
        if not T.stopped_early(result):
            return super().on_trial_complete(trial_id, result=result, error=error)
        from optuna.trial import TrialState

        try:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        except Exception as e:  # noqa: BLE001  (as the base class: e.g. a NaN metric)
            logger.warning("Optuna: cannot tell trial %s as pruned: %s", trial_id, e)
        self._completed_trials.add(trial_id)
        return None

    def _revive(self, trial_id: str, result: dict | None, error: bool) -> None:
        """A trial told FAIL ran again (after a resume): add its outcome as a new Optuna trial."""
        from optuna.trial import TrialState

        intermediate = self._failed.pop(trial_id)
        value, step = (result or {}).get(self.metric), (result or {}).get("training_iteration")
        if error or value is None:
            return  # failed again: the FAIL already recorded stands
        intermediate[int(step or 0)] = float(value)
        number = self._ot_trials[trial_id].number
        frozen = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number)
        state = TrialState.PRUNED if T.stopped_early(result or {}) else TrialState.COMPLETE
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=state, value=float(value), params=frozen.params, distributions=frozen.distributions,
            intermediate_values=intermediate, user_attrs={"ray_trial_id": trial_id, "retried": True}))


def _sampler(algorithm: str, seed: int) -> dict[str, Any]:
    """OptunaSearch's sampler arguments: TPE (Ray builds ``TPESampler(seed=seed)``) or seeded random."""
    if algorithm == "random":
        import optuna

        return {"sampler": optuna.samplers.RandomSampler(seed=seed)}
    return {"seed": seed}


def _database_url(study: optuna.Study) -> str | None:
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    return backend.url if isinstance(backend, optuna.storages.RDBStorage) else None


def _abandon_unknown_running(study: optuna.Study, known: set[int]) -> None:
    """Trials asked after Ray's last save of the searcher: Ray's restored state never runs them, so they
    would stay RUNNING in the study forever. They are told FAIL, marked ``abandoned``."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id not in known:
            optuna.Trial(study, t._trial_id).set_user_attr(
                "abandoned", "asked before the driver died, after Ray's last saved state; never run")
            study.tell(t.number, state=TrialState.FAIL)


def make_searcher(cfg: SearchConfig, search_dir: Path | None = None) -> PruningAwareOptunaSearch:
    """The searcher; with ``search_dir`` its study is stored there (``optuna.db``), else in memory."""
    s = cfg.search
    base = to_dict(build_recipe(cfg.recipe))
    stored: dict[str, Any] = {}
    if search_dir is not None:
        stored = {"storage": store.study_storage(store.study_url(search_dir)), "study_name": store.study_name(search_dir)}
    searcher = PruningAwareOptunaSearch(space=DefineByRun(cfg.space, base), metric=s.metric, mode=s.mode,
                                        lm_gate=_lm_gate(cfg), **_sampler(s.algorithm, s.seed), **stored)
    searcher.study.set_metric_names([s.metric])  # optuna-dashboard and the plots name the objective
    return searcher


def _lm_gate(cfg: SearchConfig) -> LMGate | None:
    """With ``search_lm: true`` trials train their own LMs: gate them so none waits for one holding a GPU.
    (With ``search_lm: false`` the one LM is trained before the trials: ``tuner.train_shared_lm_first``.)"""
    if not cfg.search.search_lm or build_recipe(cfg.recipe).classifier.from_scratch:
        return None
    return LMGate(LMSettingsOf(cfg.recipe), num_samples=cfg.search.num_samples, max_held=cfg.search.max_concurrent)


def load_study(search_dir: str | Path) -> optuna.Study:
    """The Optuna study of a search, e.g. for optuna.visualization or warm start: from its ``optuna.db``,
    or for a search made before studies were stored, from Ray's saved searcher state."""
    study = store.load_study(search_dir)
    if study is not None:
        return study
    searcher = PruningAwareOptunaSearch()
    searcher.restore_from_dir(str(search_dir))
    return searcher._ot_study
