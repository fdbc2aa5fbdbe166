"""A search tracked by a real ``mlflow server`` on 127.0.0.1 (started and stopped by the test):
parent and child runs, per-epoch metrics, artifacts downloaded through the server, and the model
that ``retrain`` registers in the server's model registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_search import child_runs, mlflow_server, parent_runs, ray_env, smoke_config  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_search_export_retrain_against_a_tracking_server(tmp_path, datasets_dir, ray_env, mlflow_server, capsys):
    from mlflow.tracking import MlflowClient

    from search import tuner
    from search.cli import main

    uri = mlflow_server
    cfg = smoke_config(tmp_path, ["search.num_samples=2", "recipe.classifier.epochs=2", "search.name=server",
                                  "search.scheduler={grace_period: 2}"], tracking_uri=uri)
    outcome = tuner.run_search(cfg)
    import ray

    ray.shutdown()
    client = MlflowClient(uri)
    (parent,) = parent_runs(uri, "server")
    assert parent.data.tags["search_status"] == "finished"
    runs = child_runs(uri, "server")
    assert len(runs) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    for run in runs:
        assert run.data.tags["trial_status"] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "valid_accuracy")]
        assert steps == [1, 2]
        # Artifacts come back through the server (proxied: the client never sees the server's disk).
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        local = Path(client.download_artifacts(run.info.run_id, "best_model", str(tmp_path / run.info.run_id)))
        vocab = json.loads((local / "vocab.json").read_text())
        trial_dir = outcome.search_dir / f"trial_{run.data.tags['ray_trial_id']}"
        kept = sorted(trial_dir.glob("checkpoint_*"))
        assert 1 <= len(kept) <= 2  # an ended trial keeps its best and its latest checkpoint
        assert all(vocab == json.loads((k / "vocab.json").read_text()) for k in kept)
        assert (local / "model.pt").stat().st_size > 10_000
    board = Path(client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path / "p")))
    assert board.read_text().count("\n") == 3  # header + 2 trials

    # export (from the server alone) and retrain: logged and registered through the server.
    best = tmp_path / "best.yaml"
    assert main(["export", "--experiment", "server", "--tracking-uri", uri, "--out", str(best)]) == 0
    assert main(["retrain", "--config", str(best), "--out", str(tmp_path / "model"), "--tracking-uri", uri,
                 "--data-dir", str(cfg.search.data_dir), "--model-name", "ulmfit-server-test"]) == 0
    out = capsys.readouterr().out
    assert "registered:    models:/ulmfit-server-test/1" in out
    (version,) = client.search_model_versions("name = 'ulmfit-server-test'")
    retrain_run = client.get_run(version.run_id)
    assert retrain_run.data.tags["search_role"] == "retrain"
    assert "test_accuracy" in retrain_run.data.metrics
    # the registered pyfunc model holds the retrained weights, downloaded through the server
    import mlflow

    source = client.get_model_version_download_uri("ulmfit-server-test", "1")
    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    assert (model / "MLmodel").is_file()
    weights = model / "artifacts" / "classifier_0" / "model.pt"
    assert weights.read_bytes() == (tmp_path / "model" / "classifier" / "model.pt").read_bytes()
