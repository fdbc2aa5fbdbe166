"""The study a real search stores (``<search_dir>/optuna.db``), a second search warm-started from the
first (from its folder; the MLflow reader gives the same trials) with a point to evaluate first and ASHA
at the unfreezing rungs, and a resume of that second search that adds nothing twice.

Small on purpose: tiny model, 300 rows, 3 + 2 trials of 3 epochs on a local Ray with 2 CPUs.
"""
from __future__ import annotations

import dataclasses

import optuna
import pytest
from conftest_search import child_runs, ray_environment, smoke_config
from optuna.trial import TrialState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIRST = ["search.name=first", "search.num_samples=3", "search.max_concurrent=2", "recipe.classifier.epochs=3"]
POINT = {"classifier.lr": 0.02, "classifier.drop_mult": 0.5, "classifier.use_clr[0]": 32}


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    from search import tuner

    tmp = tmp_path_factory.mktemp("study")
    with ray_environment():
        first = tuner.run_search(smoke_config(tmp, FIRST))
        second_cfg = smoke_config(tmp, [
            "search.name=second", "search.num_samples=2", "search.max_concurrent=2", "recipe.classifier.epochs=3",
            f"search.warm_start=[{first.search_dir}]", "search.scheduler.rungs=unfreeze",
            "search.points_to_evaluate=[{classifier.lr: 0.02, classifier.drop_mult: 0.5, 'classifier.use_clr[0]': 32}]"])
        second = tuner.run_search(second_cfg)
        resumed = tuner.resume_search(second.search_dir)
    return first, second_cfg, second, resumed, tmp


def _study(search_dir):
    return optuna.load_study(storage=f"sqlite:///{search_dir}/optuna.db", study_name=search_dir.name)


def test_the_stored_study_holds_every_trial_with_its_state_and_value(searches):
    first, *_ = searches
    study = _study(first.search_dir)
    assert len(study.trials) == len(first.leaderboard) == 3
    by_lr = {round(t.params["classifier.lr"], 12): t for t in study.trials}
    for row in first.leaderboard:
        trial = by_lr[round(row["classifier.lr"], 12)]
        assert trial.state == {"completed": TrialState.COMPLETE, "stopped_by_asha": TrialState.PRUNED}[row["status"]]
        assert trial.value == pytest.approx(row["valid_accuracy"])
        assert max(trial.intermediate_values) == row["epochs"]


def test_a_warm_started_search_starts_from_the_earlier_trials(searches):
    first, cfg, second, _, _ = searches
    earlier = {t.number: t for t in _study(first.search_dir).trials}
    trials = _study(second.search_dir).trials
    seeded = [t for t in trials if "warm_start_source" in t.user_attrs]
    own = [t for t in trials if "warm_start_source" not in t.user_attrs]
    assert len(seeded) == 3 and len(own) == 2
    assert max(t.number for t in seeded) < min(t.number for t in own)  # all before the first new trial
    for t in seeded:
        source = earlier[int(t.user_attrs["warm_start_trial"].split()[-1])]
        assert (t.params, t.state, t.value) == (source.params, source.state, source.value)
    assert own[0].params == pytest.approx(POINT)  # the point to evaluate ran first
    (parent,) = [r for r in _parents(cfg) if r.info.run_id == second.parent_run_id]
    assert str(first.search_dir) in parent.data.tags["warm_start_from"]


def test_the_mlflow_reader_gives_the_same_trials_as_the_folder(searches):
    from search import warm_start

    first, cfg, *_ = searches
    from_folder = warm_start.from_search_dir(first.search_dir)
    from_mlflow = warm_start.from_experiment(cfg.mlflow.tracking_uri, "first")
    def facts(trials):
        return sorted((round(t.params["classifier.lr"], 12), t.state.name, round(t.value, 9),
                       tuple(sorted(t.intermediate))) for t in trials)

    assert len(from_mlflow.trials) == 3 and facts(from_mlflow.trials) == facts(from_folder.trials)
    assert from_mlflow.search_dir == from_folder.search_dir  # so listing both reads the search once
    twice = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, warm_start=[str(first.search_dir), "first"]))
    assert len(warm_start.read_earlier_searches(twice)) == 1


def test_a_resumed_warm_started_search_adds_nothing_twice(searches):
    _, _, second, resumed, _ = searches
    trials = _study(second.search_dir).trials
    assert len(trials) == 5  # 3 earlier + 2 own, as before the resume
    assert resumed.status == "finished" and len(resumed.leaderboard) == 2


def _parents(cfg):
    from conftest_search import parent_runs

    return parent_runs(cfg.mlflow.tracking_uri, "second")


def test_a_second_search_on_the_same_storage_finds_the_shared_lm_on_its_driver(searches):
    """The first search trained the shared LM; the second (same data and LM settings) found it in the
    cache before any task, and its trials loaded that LM without training one."""
    import json

    first, cfg, second, *_ = searches
    (trained,) = json.loads((first.search_dir / "search.json").read_text())["shared_lm"]
    (found,) = json.loads((second.search_dir / "search.json").read_text())["shared_lm"]
    assert trained["trained"] and trained["node_id"]
    assert not found["trained"] and found["node_id"] is None and found["lm_key"] == trained["lm_key"]
    assert found["seconds"] == pytest.approx(trained["seconds"])
    runs = child_runs(cfg.mlflow.tracking_uri, cfg.experiment)
    second_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == second.parent_run_id]
    assert second_runs and all(r.data.tags["lm_key"] == trained["lm_key"] and r.data.tags["lm_trained"] == "false"
                               for r in second_runs)
