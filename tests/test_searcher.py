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


# -- the study stored in the search folder ----------------------------------------------------------


def _stored(tmp_path, name="demo-20250101-000000", **config):
    search_dir = tmp_path / name
    search_dir.mkdir()
    return search_dir, make_searcher(_config(**config), search_dir)


def test_the_study_is_stored_in_the_search_folder_under_its_name(tmp_path):
    import optuna

    from search.searcher import load_study

    search_dir, searcher = _stored(tmp_path)
    searcher.suggest("a")
    searcher.suggest("b")
    for step in (1, 2, 3):
        searcher.on_trial_result("a", _result(step, 0.2 * step))
    searcher.on_trial_complete("a", _result(3, 0.6))
    searcher.on_trial_result("b", _result(1, 0.1))
    searcher.on_trial_complete("b", _result(1, 0.1))  # stopped after epoch 1 of 3
    study = optuna.load_study(storage=f"sqlite:///{search_dir}/optuna.db", study_name=search_dir.name)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, pytest.approx(0.6)),
                                                           (TrialState.PRUNED, pytest.approx(0.1))]
    assert study.trials[0].intermediate_values == {1: pytest.approx(0.2), 2: pytest.approx(0.4), 3: pytest.approx(0.6)}
    assert [t.state for t in load_study(search_dir).trials] == [TrialState.COMPLETE, TrialState.PRUNED]


def test_a_restored_searcher_continues_the_stored_study(tmp_path):
    """Ray saves the searcher (a pickle) now and then; what happened after the last save is in the
    database only. The restored searcher works on the database's study, not the pickled copy."""
    from search.searcher import PruningAwareOptunaSearch, _database_url

    search_dir, searcher = _stored(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(1, 0.3))
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))  # Ray's periodic save; the driver then goes on ...
    searcher.on_trial_result("a", _result(2, 0.4))
    searcher.on_trial_result("a", _result(3, 0.5))
    searcher.on_trial_complete("a", _result(3, 0.5))  # ... tells a's end ...
    searcher.suggest("b")  # ... asks for a trial Ray's saved state will never know ... and dies.

    restored = PruningAwareOptunaSearch()
    restored.restore(str(saved))
    assert _database_url(restored.study) == f"sqlite:///{search_dir}/optuna.db"
    restored.on_trial_result("a", _result(3, 0.5))  # Ray replays a's last result: already in the study
    restored.on_trial_complete("a", _result(3, 0.5))
    restored.suggest("c")
    trials = restored.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert trials[0].value == pytest.approx(0.5) and len(trials[0].intermediate_values) == 3
    assert "abandoned" in trials[1].user_attrs  # b: asked after the save, never run
    assert [t.number for t in trials] == [0, 1, 2]  # one study, no duplicates
