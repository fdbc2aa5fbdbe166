"""A real search on a local Ray (2 CPUs, 2 trials at a time) with the real pipeline on TREC-6, tracked
in a local SQLite MLflow store; some configurations are clearly worse (learning rates down to 1e-6).

One search (module fixture) is checked from several sides: ASHA stopped trials, Optuna saw them as
pruned, the trials shared one language model, MLflow holds the structure, and the exported best
config retrains to the value the search recorded for it.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest_search import child_runs, parent_runs, ray_environment, smoke_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 4
N_TRIALS = 6
OVERRIDES = [
    f"search.num_samples={N_TRIALS}", "search.max_concurrent=2", "search.name=local",
    # valid_loss separates a 1e-6 learning rate from a useful one after one epoch; accuracy on ~80
    # validation questions is too coarse that early.
    "search.metric=valid_loss", "search.mode=min",
    "search.scheduler={grace_period: 1, reduction_factor: 2}",
    "recipe.data.max_train_rows=800", f"recipe.classifier.epochs={EPOCHS}", "recipe.classifier.unfreeze=[]",
    "space={classifier.lr: {type: loguniform, low: 1.0e-6, high: 5.0e-2},"
    " classifier.drop_mult: {type: loguniform, low: 0.2, high: 2.0}}",
]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from search import tuner

    tmp = tmp_path_factory.mktemp("local")
    if not (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "trec").exists():
        pytest.skip("TREC not found")
    with ray_environment():
        cfg = smoke_config(tmp, OVERRIDES)
        t0 = time.perf_counter()
        outcome = tuner.run_search(cfg)
        seconds = time.perf_counter() - t0
    print(f"local search: {seconds:.1f} s, summary {outcome.summary}")
    return cfg, outcome, tmp


def test_asha_stops_the_clearly_worse_trials(searched):
    cfg, outcome, _ = searched
    board = outcome.leaderboard
    assert len(board) == N_TRIALS
    status = [r["status"] for r in board]
    assert status.count("stopped_by_asha") >= 1 and status.count("completed") >= 1
    assert "errored" not in status
    for r in board:
        assert r["epochs"] == EPOCHS if r["status"] == "completed" else r["epochs"] < EPOCHS
    # Stopped trials are the worse ones: the best stopped trial's lr is below the best completed trial's.
    best = board[0]
    assert best["status"] == "completed" and best["classifier.lr"] > 1e-4
    assert outcome.summary["trials_stopped_by_asha"] == status.count("stopped_by_asha")


def test_optuna_sees_asha_stopped_trials_as_pruned_with_intermediate_values(searched):
    from optuna.trial import TrialState

    from search.searcher import load_study

    cfg, outcome, _ = searched
    study = load_study(outcome.search_dir)
    by_lr = {round(t.params["classifier.lr"], 12): t for t in study.trials}
    assert len(by_lr) == N_TRIALS
    for row in outcome.leaderboard:
        t = by_lr[round(row["classifier.lr"], 12)]
        if row["status"] == "stopped_by_asha":
            assert t.state == TrialState.PRUNED
            assert sorted(t.intermediate_values) == list(range(1, row["epochs"] + 1))
            assert t.value == pytest.approx(row["valid_loss"])  # Optuna's value of a pruned trial: its last
        else:
            assert t.state == TrialState.COMPLETE
            assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
            assert t.value == pytest.approx(row["valid_loss"])


def test_trials_share_one_language_model(searched):
    cfg, outcome, tmp = searched
    runs = child_runs(cfg.mlflow.tracking_uri, cfg.experiment)
    assert len(runs) == N_TRIALS
    keys = {r.data.tags["lm_key"] for r in runs}
    assert len(keys) == 1  # one LM key for the whole search (search_lm: false)
    # trained once, before the trials (search.json records it); every trial reused it
    (shared,) = json.loads((outcome.search_dir / "search.json").read_text())["shared_lm"]
    assert shared["trained"] and shared["lm_key"] in keys
    assert all(r.data.tags["lm_trained"] == "false" for r in runs)
    lm_dirs = [p for p in (tmp / "runs" / "_lm_cache").iterdir() if p.is_dir()]
    assert [p.name for p in lm_dirs] == list(keys)
    saved = [float(r.data.tags["lm_seconds_saved"]) for r in runs]
    assert len(saved) == N_TRIALS and all(s == pytest.approx(shared["seconds"], rel=1e-3) for s in saved)
    assert outcome.summary["lm_trainings"] == 1
    assert outcome.summary["lm_seconds_trained"] == pytest.approx(shared["seconds"])
    assert outcome.summary["lm_seconds_saved"] == pytest.approx(sum(saved), rel=1e-3)  # tags show 4 digits


def test_mlflow_holds_parent_child_metrics_and_artifacts(searched):
    from mlflow.tracking import MlflowClient

    cfg, outcome, _ = searched
    uri = cfg.mlflow.tracking_uri
    client = MlflowClient(uri)
    (parent,) = parent_runs(uri, cfg.experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags["search_status"] == "finished"
    assert parent.data.params["search.num_samples"] == str(N_TRIALS)
    assert parent.data.params["recipe.model.preset"] == "tiny"  # the base recipe's key settings
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "search_config.yaml", "search_space.yaml", "leaderboard.csv", "leaderboard.json", "best.yaml"}
    assert list(parent.data.metrics) == ["best_valid_loss"]  # bookkeeping is tags, out of the charts
    assert parent.data.tags["summary.tracking_write_failures"] == "0"
    search_plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/asha_survival.png"} <= search_plots
    exp = client.get_experiment_by_name(cfg.experiment)
    assert exp.artifact_location == (Path(cfg.mlflow.artifact_location)).as_uri()
    board = {r["trial_id"]: r for r in outcome.leaderboard}
    for run in child_runs(uri, cfg.experiment):
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        row = board[tags["ray_trial_id"]]
        assert tags["trial_status"] == row["status"] and run.info.status == "FINISHED"
        # params are rounded for display (4 significant digits); recipe.yaml holds the exact value
        assert float(run.data.params["classifier.lr"]) == pytest.approx(row["classifier.lr"], rel=1e-3)
        history = client.get_metric_history(run.info.run_id, "valid_loss")
        assert [m.step for m in history] == list(range(1, row["epochs"] + 1))  # one value per epoch
        assert history[-1].value == pytest.approx(row["valid_loss"])
        # learning metrics only per epoch; bookkeeping went to tags
        assert set(run.data.metrics) == {"valid_accuracy", "valid_loss", "valid_macro_f1", "train_loss", "lr"}
        assert run.info.run_name.startswith("trial ") and "lr=" in run.info.run_name
        files = {a.path for a in client.list_artifacts(run.info.run_id, "best_model")}
        assert {"best_model/model.pt", "best_model/vocab.json", "best_model/labels.json"} <= files
        weights = torch.load(client.download_artifacts(run.info.run_id, "best_model/model.pt"), weights_only=True)
        assert set(weights) == {"state_dict", "config", "labels", "tokenizer", "format", "vocab_sha256"}  # no optimizer state
        plot_files = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/learning_curves.png", "plots/lr_schedule.png"} <= plot_files
        recipe = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "recipe.yaml")).read_text())
        assert recipe["classifier"]["lr"] == pytest.approx(row["classifier.lr"])
    rows = list(csv.DictReader((outcome.search_dir / "leaderboard.csv").open()))
    assert [r["trial_id"] for r in rows] == [r["trial_id"] for r in outcome.leaderboard]


def test_export_and_retrain_reproduce_the_recorded_metric(searched, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from search.cli import main
    from search.export import read_best, retrain

    cfg, outcome, tmp = searched
    best_cfg, meta = read_best(outcome.best_yaml)
    best = outcome.leaderboard[0]
    assert meta["trial_id"] == best["trial_id"] and meta["value"] == pytest.approx(best["valid_loss"])
    assert meta["mlflow_run_id"] == best["mlflow_run_id"]
    assert best_cfg.classifier.lr == pytest.approx(best["classifier.lr"])
    assert best_cfg.data.max_train_rows == 800 and best_cfg.model.emb_sz == 64  # complete, resolved

    # The same best trial found from MLflow alone.
    out = tmp_path / "best-from-mlflow.yaml"
    assert main(["export", "--experiment", cfg.experiment, "--tracking-uri", cfg.mlflow.tracking_uri,
                 "--out", str(out)]) == 0
    cfg2, meta2 = read_best(out)
    assert meta2["trial_id"] == meta["trial_id"] and cfg2 == best_cfg

    t0 = time.time()
    res = retrain(outcome.best_yaml, tmp_path / "model", model_name="ulmfit-local-test")
    seconds = time.time() - t0
    # Same data, seed and thread count on CPU: the run is bitwise repeatable.
    assert res["difference"] <= 1e-6, res
    assert 0.0 <= res["metrics"]["test_accuracy"] <= 1.0
    client = MlflowClient(cfg.mlflow.tracking_uri)
    (version,) = client.search_model_versions("name = 'ulmfit-local-test'")
    assert version.run_id == res["run_id"] and res["model_uri"] == "models:/ulmfit-local-test/1"
    # The registered version says what it is; the retrain run sits under its search and took real time.
    assert f"trial {best['trial_id']}" in version.description and "Test set: accuracy" in version.description
    assert version.tags["trial_id"] == best["trial_id"] and version.tags["preset"] == "tiny"
    assert version.tags["directions"] == "fwd" and len(version.tags["data_fingerprint"]) >= 16
    assert float(version.tags["test_accuracy"]) == pytest.approx(res["metrics"]["test_accuracy"])
    assert str(client.get_model_version_by_alias("ulmfit-local-test", "champion").version) == "1" and res["champion"]
    run = client.get_run(res["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
    trained = sum(res["metrics"][k] for k in ("data_seconds", "lm_seconds", "classifier_seconds"))
    assert (run.info.end_time - run.info.start_time) / 1000 >= trained and seconds >= trained  # the run spans it
    assert "lm_seconds" not in run.data.metrics and "lm_seconds" in run.data.tags  # timings are bookkeeping
    assert run.data.tags["best_yaml_check"] == "matches the exported trial"
    # the registered model is a pyfunc that predicts what the retrained folder predicts
    import mlflow

    from ulmfit_core import inference

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)  # restored after the test, unlike a global URI
    served = mlflow.pyfunc.load_model(res["model_uri"]).predict(
        __import__("pandas").DataFrame({"text": ["Who wrote Hamlet ?", "How far is the moon ?"]}))
    labels, probs = inference.predict_proba(tmp_path / "model" / "classifier", ["Who wrote Hamlet ?", "How far is the moon ?"])
    assert list(served["label"]) == [labels[i] for i in probs.argmax(1)]
    plots = {a.path for a in client.list_artifacts(res["run_id"], "plots")}
    assert {"plots/confusion_matrix_fwd.png", "plots/per_class_fwd.png", "plots/per_class_fwd.json"} <= plots


def test_retrain_both_directions_registers_the_ensemble_evaluate_uses(searched, tmp_path, datasets_dir, capsys,
                                                                     monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    import launch
    from search.export import retrain
    from ulmfit_core.config import ConfigError

    cfg, outcome, _ = searched
    out = tmp_path / "both"
    # An edited copy (TREC's questions are far shorter than either max_len): refused, then retrained with
    # --allow-edits, the edit logged on the run.
    edited = outcome.best_yaml.with_name("best-edited.yaml")
    edited.write_text(outcome.best_yaml.read_text().replace("max_len: 3000", "max_len: 2000"))
    with pytest.raises(ConfigError, match=r"recipe\.classifier\.max_len is 2000 \(the trial's: 3000\)"):
        retrain(edited, out, model_name="ulmfit-local-ensemble", directions=["fwd", "bwd"])
    assert not out.exists()
    res = retrain(edited, out, model_name="ulmfit-local-ensemble", directions=["fwd", "bwd"], allow_edits=True)
    tags = MlflowClient(cfg.mlflow.tracking_uri).get_run(res["run_id"]).data.tags
    assert tags["edit.recipe.classifier.max_len"] == "3000 -> 2000"
    assert tags["best_yaml_check"] == "1 edit(s) allowed (--allow-edits)"
    assert {"test_accuracy", "bwd_test_accuracy", "ensemble_test_accuracy"} <= set(res["metrics"])
    # evaluate --ensemble over the two folders, and evaluate on the run's folder (its ensemble.json)
    test_csv = datasets_dir / "trec" / "test.csv"
    assert launch.main(["evaluate", "--model", str(out / "classifier"), "--ensemble", str(out / "classifier_bwd"),
                        "--file", str(test_csv), "--json"]) == 0
    by_folders = json.loads(capsys.readouterr().out)
    assert launch.main(["evaluate", "--model", str(out), "--file", str(test_csv), "--json"]) == 0
    by_run = json.loads(capsys.readouterr().out)
    assert by_run["accuracy"] == by_folders["accuracy"] == pytest.approx(res["metrics"]["ensemble_test_accuracy"])
    # the registered model is that ensemble: the same labels on the test questions
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)  # restored after the test, unlike a global URI
    model = mlflow.pyfunc.load_model(res["model_uri"])
    texts = [row["text"] for row in csv.DictReader(test_csv.open())]
    served = model.predict(pd.DataFrame({"text": texts}))
    truth = [row["label"] for row in csv.DictReader(test_csv.open())]
    accuracy = sum(a == b for a, b in zip(served["label"], truth)) / len(truth)
    assert accuracy == pytest.approx(by_folders["accuracy"])
