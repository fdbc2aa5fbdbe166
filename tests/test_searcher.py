"""The searcher tells Optuna what really happened: pruned trials, one report per step, retried trials;
and ASHA's horizon covers a searched classifier.epochs."""
from __future__ import annotations

import pickle
import warnings

import pytest
from optuna.trial import TrialState

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import trainable as T
from search.searcher import make_searcher
from search.settings import search_config_from_dict
from search.tuner import make_scheduler

SPACE = {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}


def _config(space=SPACE, epochs=3, **scheduler):
    return search_config_from_dict({
        "recipe": {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "classifier": {"epochs": epochs}},
        "space": space, "search": {"scheduler": scheduler or None, "seed": 0}})


def _result(step, value, total=3):
    return {"valid_accuracy": value, "training_iteration": step, T.EPOCH: step, T.EPOCHS_TOTAL: total}


def _frozen(searcher, trial_id):
    number = searcher._ot_trials[trial_id].number
    return next(t for t in searcher._ot_study.get_trials(deepcopy=False) if t.number == number)


def test_final_step_is_reported_once_under_fifo():
    searcher = make_searcher(_config(type="fifo"))
    searcher.suggest("a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        for step in (1, 2, 3):
            searcher.on_trial_result("a", _result(step, 0.1 * step))
        searcher.on_trial_complete("a", _result(3, 0.3))
    trial = _frozen(searcher, "a")
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.3)
    assert sorted(trial.intermediate_values) == [1, 2, 3]


def test_a_trial_retried_after_a_restore_reaches_optuna():
    searcher = make_searcher(_config())
    params = searcher.suggest("a")
    searcher.on_trial_result("a", _result(1, 0.4))
    searcher.on_trial_complete("a", error=True)  # told FAIL
    assert _frozen(searcher, "a").state == TrialState.FAIL

    searcher = pickle.loads(pickle.dumps(searcher))  # Tuner.restore brings the searcher back
    searcher.on_trial_result("a", _result(2, 0.5))  # the retry, resumed from its epoch-1 checkpoint
    searcher.on_trial_result("a", _result(3, 0.7))
    searcher.on_trial_complete("a", _result(3, 0.7))
    complete = [t for t in searcher._ot_study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(complete) == 1
    (retried,) = complete
    assert retried.value == pytest.approx(0.7) and retried.user_attrs["ray_trial_id"] == "a"
    assert retried.params == {"classifier.lr": pytest.approx(params["classifier.lr"])}
    assert retried.intermediate_values == {2: pytest.approx(0.5), 3: pytest.approx(0.7)}


def test_asha_horizon_covers_a_searched_epoch_count():
    cfg = _config({**SPACE, "classifier.epochs": [2, 5]}, epochs=2)
    assert cfg.max_t == 5
    assert make_scheduler(cfg)._max_t == 5
    # A trial of 5 epochs that reaches epoch 5 is complete, not stopped early.
    assert not T.stopped_early(_result(5, 0.8, total=5))
