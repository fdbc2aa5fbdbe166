"""The searcher drives its Optuna study through ask/tell and tells it what really happened: each epoch once,
stopped trials as PRUNED, retried trials once; its state is JSON and a restore reopens the stored study."""
from __future__ import annotations

import json
import pickle
import warnings

import optuna
import pytest
from optuna.trial import TrialState

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import trainable as T
from search.searcher import MLFLOW_RUN_ATTR, RAY_TRIAL_ATTR, load_study, make_searcher, startup_trials
from search.settings import search_config_from_dict
from search.tuner import make_scheduler

SPACE = {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}


def _config(space=SPACE, epochs=3, num_samples=8, algorithm="tpe", **scheduler):
    return search_config_from_dict({
        "recipe": {"data": {"dataset": "trec"}, "model": {"preset": "tiny"},
                   "classifier": {"epochs": epochs, "unfreeze": [1]}},
        "space": space, "search": {"scheduler": scheduler or None, "seed": 0, "num_samples": num_samples,
                                   "algorithm": algorithm}})


def _result(step, value, total=3):
    return {"valid_accuracy": value, "training_iteration": step, T.EPOCH: step, T.EPOCHS_TOTAL: total}


def _searcher(tmp_path, name="demo-20250101-000000", run_ids=None, **config):
    search_dir = tmp_path / name
    search_dir.mkdir()
    def run_id_of(trial_id, wait_s=0.0):
        return (run_ids or {}).get(trial_id)

    return search_dir, make_searcher(_config(**config), search_dir, run_id_of=run_id_of)


def _trial(searcher, trial_id):
    return next(t for t in searcher.study.get_trials(deepcopy=False) if t.number == searcher.number[trial_id])


def test_each_epoch_is_reported_once_and_the_end_is_told(tmp_path):
    _, searcher = _searcher(tmp_path, run_ids={"a": "run-a"}, type="fifo")
    config = searcher.suggest("a")
    assert config[T.OPTUNA_NUMBER] == 0 and set(T.sampled_values(config)) == {"classifier.lr"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        for step in (1, 2, 3):
            searcher.on_trial_result("a", _result(step, 0.1 * step))
        searcher.on_trial_complete("a", _result(3, 0.3))  # under FIFO the last result arrives twice
    trial = _trial(searcher, "a")
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.3)
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # steps are epochs
    assert trial.user_attrs == {RAY_TRIAL_ATTR: "a", MLFLOW_RUN_ATTR: "run-a"}


def test_a_stopped_trial_is_pruned_with_its_last_epoch(tmp_path):
    _, searcher = _searcher(tmp_path)
    searcher.suggest("b")
    searcher.on_trial_result("b", _result(1, 0.1))
    searcher.on_trial_complete("b", _result(1, 0.1))  # ASHA stopped it after epoch 1 of 3
    trial = _trial(searcher, "b")
    assert trial.state == TrialState.PRUNED and trial.value == pytest.approx(0.1)
    assert trial.intermediate_values == {1: pytest.approx(0.1)}


def test_a_trial_retried_after_a_restore_counts_once(tmp_path):
    _, searcher = _searcher(tmp_path)
    params = searcher.suggest("a")
    searcher.on_trial_result("a", _result(1, 0.4))
    searcher.on_trial_complete("a", error=True)  # told FAIL
    assert _trial(searcher, "a").state == TrialState.FAIL
    searcher.on_trial_result("a", _result(2, 0.5))  # a resumed search runs it again from its checkpoint
    searcher.on_trial_result("a", _result(3, 0.7))
    searcher.on_trial_complete("a", _result(3, 0.7))
    complete = searcher.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    (retried,) = complete
    assert retried.value == pytest.approx(0.7) and retried.user_attrs[RAY_TRIAL_ATTR] == "a"
    assert retried.params == {"classifier.lr": pytest.approx(params["classifier.lr"])}
    assert retried.intermediate_values == {2: pytest.approx(0.5), 3: pytest.approx(0.7)}


def test_the_study_is_stored_in_the_search_folder_named_after_it(tmp_path):
    search_dir, searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", _result(3, 0.6))
    study = optuna.load_study(storage=f"sqlite:///{search_dir}/optuna.db", study_name=search_dir.name)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, pytest.approx(0.6))]
    assert study.metric_names == ["valid_accuracy"]  # the objective is named (optuna-dashboard shows it)
    assert [t.state for t in load_study(search_dir).trials] == [TrialState.COMPLETE]


def test_a_restored_searcher_continues_the_stored_study_from_json_state(tmp_path):
    """Tune keeps the searcher and saves its state now and then; what happened after the last save is in the
    database only. The state is JSON, and the restored searcher works on the database's study."""
    _, searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.suggest("d")
    searcher.on_trial_result("a", _result(1, 0.3))
    searcher.on_trial_result("d", _result(1, 0.2))
    saved = tmp_path / "searcher-state.pkl"  # Tune's file name; the content is ours
    searcher.save(str(saved))
    kept = pickle.dumps(searcher)  # what Tune holds of it: no study, no live trials
    assert json.loads(saved.read_text())["number"] == {"a": 0, "d": 1}
    searcher.on_trial_result("a", _result(2, 0.4))
    searcher.on_trial_complete("a", _result(3, 0.5))  # a ends after the save ...
    searcher.suggest("b")  # ... and b is asked but never run: the driver dies here.

    restored = pickle.loads(kept)
    assert restored.study is None
    restored.restore(str(saved))
    restored.on_trial_complete("a", _result(3, 0.5))  # Tune replays a's end: the study has it already
    restored.on_trial_result("d", _result(2, 0.6))  # d runs on: reported to its own Optuna trial
    restored.on_trial_complete("d", _result(3, 0.7))
    trials = restored.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].intermediate_values == {1: pytest.approx(0.2), 2: pytest.approx(0.6), 3: pytest.approx(0.7)}
    assert "abandoned" in trials[2].user_attrs  # b
    with pytest.raises(ValueError, match="not a searcher state"):
        (tmp_path / "other.pkl").write_text("[]")
        restored.restore(str(tmp_path / "other.pkl"))


def test_tpe_models_after_a_quarter_of_the_search(tmp_path):
    assert [startup_trials(n) for n in (4, 8, 24, 40, 100)] == [2, 2, 6, 10, 10]
    _, searcher = _searcher(tmp_path, num_samples=24)
    assert isinstance(searcher.study.sampler, optuna.samplers.TPESampler)
    _, random = _searcher(tmp_path, name="random-20250101-000000", algorithm="random")
    assert isinstance(random.study.sampler, optuna.samplers.RandomSampler)


def test_asha_horizon_covers_a_searched_epoch_count():
    cfg = _config({**SPACE, "classifier.epochs": [2, 5]}, epochs=2)
    assert cfg.max_t == 5
    assert make_scheduler(cfg).rungs[-1] == 5
    # A trial of 5 epochs that reaches epoch 5 is complete, not stopped early.
    assert not T.stopped_early(_result(5, 0.8, total=5))


def test_steps_are_epochs_even_when_tunes_iteration_count_lags(tmp_path):
    """A trial resumed from a checkpoint newer than Tune's saved state knew reports epoch 3 as Tune's first
    iteration: Optuna, like ASHA and MLflow, counts epochs."""
    _, searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"valid_accuracy": 0.6, "training_iteration": 1, T.EPOCH: 3, T.EPOCHS_TOTAL: 3})
    searcher.on_trial_complete("a", {"valid_accuracy": 0.6, "training_iteration": 1, T.EPOCH: 3, T.EPOCHS_TOTAL: 3})
    trial = _trial(searcher, "a")
    assert trial.intermediate_values == {3: pytest.approx(0.6)} and trial.state == TrialState.COMPLETE
