"""The searcher drives its Optuna study through ask/tell and tells it what really happened: each epoch once,
stopped trials as PRUNED, retried trials once; a resume continues the stored study."""
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
    assert trial.user_attrs == {RAY_TRIAL_ATTR: "a", "ray_trial_ids": ["a"], MLFLOW_RUN_ATTR: "run-a"}


def test_a_stopped_trial_is_pruned_with_its_last_epoch(tmp_path):
    _, searcher = _searcher(tmp_path)
    searcher.suggest("b")
    searcher.on_trial_result("b", _result(1, 0.1))
    searcher.on_trial_complete("b", _result(1, 0.1))  # ASHA stopped it after epoch 1 of 3
    trial = _trial(searcher, "b")
    assert trial.state == TrialState.PRUNED and trial.value == pytest.approx(0.1)
    assert trial.intermediate_values == {1: pytest.approx(0.1)}


def test_a_resumed_searcher_runs_unfinished_and_failed_trials_again_and_counts_each_once(tmp_path):
    """The driver stops with trial a completed, b running at epoch 2, c failed after epoch 1 and d asked but
    never reported. A searcher opened on the same folder (a resume: nothing of the first is kept but the
    study in optuna.db) hands out b, c and d first, with their own values and earlier folders; each epoch
    reaches Optuna once, c's success is recorded once as what it became, and then the budget's rest is asked."""
    search_dir, first = _searcher(tmp_path, num_samples=6)
    params = {t: first.suggest(t) for t in "abcd"}
    for epoch in (1, 2, 3):
        first.on_trial_result("a", _result(epoch, 0.1 * epoch))
    first.on_trial_complete("a", _result(3, 0.3))
    first.on_trial_result("b", _result(1, 0.2))
    first.on_trial_result("b", _result(2, 0.4))
    first.on_trial_result("c", _result(1, 0.5))
    first.on_trial_complete("c", error=True)
    interrupted = first.study.ask()  # Ctrl-C inside suggest: asked, never handed to Tune
    del first  # the driver dies

    resumed = make_searcher(_config(num_samples=6), search_dir, create=False)
    assert resumed.continue_unfinished() == (3, 2)  # b, c, d run again; 6 - 4 asked = 2 new
    abandoned = resumed.study.get_trials()[interrupted.number]
    assert abandoned.state == TrialState.FAIL and "abandoned" in abandoned.user_attrs  # and not in the budget
    again = {new: resumed.suggest(new) for new in ("b2", "c2", "d2")}
    for old, new in (("b", "b2"), ("c", "c2"), ("d", "d2")):
        assert T.sampled_values(again[new]) == T.sampled_values(params[old])
        assert again[new][T.OPTUNA_NUMBER] == params[old][T.OPTUNA_NUMBER]
        assert again[new][T.EARLIER_RUNS] == [f"trial_{old}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        resumed.on_trial_result("b2", _result(2, 0.4))  # replayed from its checkpoint's epoch: not again
        resumed.on_trial_result("b2", _result(3, 0.6))
        resumed.on_trial_complete("b2", _result(3, 0.6))
    resumed.on_trial_result("c2", _result(2, 0.7))
    resumed.on_trial_complete("c2", _result(3, 0.8))
    resumed.on_trial_complete("d2", error=True)  # fails again: its FAIL stands
    fresh = resumed.suggest("e")
    assert fresh[T.OPTUNA_NUMBER] not in {p[T.OPTUNA_NUMBER] for p in params.values()} and T.EARLIER_RUNS not in fresh

    from search.records import RAY_TRIALS_ATTR, RETRY_OF_ATTR, own_trials

    own = own_trials(resumed.study)
    assert sorted(own) == [0, 1, 2, 3, fresh[T.OPTUNA_NUMBER]]  # one entry per trial, c's retry in c's place
    b, c, d = (own[params[t][T.OPTUNA_NUMBER]] for t in "bcd")
    assert b.state == TrialState.COMPLETE and b.intermediate_values == {1: 0.2, 2: 0.4, 3: 0.6}
    assert b.user_attrs[RAY_TRIALS_ATTR] == ["b", "b2"] and b.user_attrs[RAY_TRIAL_ATTR] == "b2"
    assert c.state == TrialState.COMPLETE and c.value == pytest.approx(0.8)
    assert c.user_attrs[RETRY_OF_ATTR] == params["c"][T.OPTUNA_NUMBER] and c.user_attrs[RAY_TRIALS_ATTR] == ["c", "c2"]
    assert c.intermediate_values == {1: 0.5, 2: 0.7, 3: 0.8}
    assert c.params == {"classifier.lr": pytest.approx(params["c"]["classifier.lr"])}
    assert d.state == TrialState.FAIL


def test_the_study_is_stored_in_the_search_folder_named_after_it(tmp_path):
    search_dir, searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", _result(3, 0.6))
    study = optuna.load_study(storage=f"sqlite:///{search_dir}/optuna.db", study_name=search_dir.name)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, pytest.approx(0.6))]
    assert study.metric_names == ["valid_accuracy"]  # the objective is named (optuna-dashboard shows it)
    assert [t.state for t in load_study(search_dir).trials] == [TrialState.COMPLETE]


def test_tunes_saved_searcher_state_is_a_note_and_never_restores(tmp_path):
    """Tune saves its searcher with the experiment; this searcher writes JSON there and refuses to be
    restored from it: a resume reads optuna.db (test above), never Tune's pickles."""
    _, searcher = _searcher(tmp_path)
    searcher.suggest("a")
    saved = tmp_path / "searcher-state.pkl"  # Tune's file name; the content is ours
    searcher.save(str(saved))
    assert json.loads(saved.read_text())["optuna_db"] == "optuna.db"
    assert pickle.loads(pickle.dumps(searcher)).study is None  # what Tune holds of it: no study, no live trials
    with pytest.raises(ValueError, match="search --resume"):
        searcher.restore(str(saved))


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
