"""Kill the search driver mid-way (SIGKILL), then ``search --resume DIR``: every trial finishes, no
finished trial runs again, and the MLflow experiment holds exactly one child run per trial."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest_search import PYTHON, ROOT, SMOKE, base_overrides, child_runs, parent_runs, ray_environment, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N_TRIALS = 6


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    # Its own session, so the driver and the Ray processes it starts can be cleaned up as a group.
    return subprocess.Popen([PYTHON, "-m", "search.cli", *args], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))


def _finished_runs(uri: str, experiment: str, storage: Path) -> int:
    if not list(storage.glob("resume-*/search.json")):  # the driver is still creating the database:
        return 0  # opening it here too would race its schema migration
    runs = child_runs(uri, experiment)
    return sum(r.data.tags.get("trial_status") in ("completed", "stopped_by_asha") for r in runs)


def test_killed_driver_resumes_without_duplicate_runs(tmp_path, datasets_dir):
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["search", "--config", str(SMOKE)]
    for o in base_overrides(tmp_path, uri) + [f"search.num_samples={N_TRIALS}", "search.name=resume",
                                              "recipe.data.max_train_rows=600", "recipe.classifier.epochs=4"]:
        args += ["--set", o]
    with ray_environment():
        first = _cli(args, tmp_path / "first.log")
        try:
            deadline = time.time() + 240
            while _finished_runs(uri, "resume", tmp_path / "runs") < 2:  # some trials done, the rest pending or running
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "no trial finished in time"
                time.sleep(0.3)
            os.kill(first.pid, signal.SIGKILL)  # the driver dies without any cleanup
            first.wait(30)
        finally:
            stop_group(first)  # the Ray processes that driver had started (same process group)
        before = {r.data.tags["ray_trial_id"]: r.data.tags["trial_status"] for r in child_runs(uri, "resume")}
        assert 2 <= sum(s != "running" for s in before.values()) < N_TRIALS, before

        (search_dir,) = (tmp_path / "runs").glob("resume-*")
        second = _cli(["search", "--resume", str(search_dir)], tmp_path / "second.log")
        try:
            rc = second.wait(300)
        finally:
            stop_group(second)
        log = (tmp_path / "second.log").read_text()
        assert rc == 0, log[-4000:]
    assert "best config:" in log and "mlflow ui --backend-store-uri" in log

    runs = child_runs(uri, "resume")
    trial_ids = [r.data.tags["ray_trial_id"] for r in runs]
    analysis = ExperimentAnalysis(str(search_dir))
    assert len(analysis.trials) == N_TRIALS
    assert all(t.status == "TERMINATED" for t in analysis.trials)
    assert sorted(trial_ids) == sorted(t.trial_id for t in analysis.trials)  # exactly one run per trial
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_status"] in ("completed", "stopped_by_asha")
               for r in runs)
    client = MlflowClient(uri)
    for r in runs:  # resumed trials continued their epoch numbering without logging an epoch twice
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "valid_accuracy")]
        assert steps == sorted(set(steps)) and steps[0] == 1
        if before.get(r.data.tags["ray_trial_id"]) in ("completed", "stopped_by_asha"):
            assert "resumed_from_epoch" not in r.data.metrics or r.data.metrics["resumed_from_epoch"] == 0
    (parent,) = parent_runs(uri, "resume")  # the resumed search kept its parent run
    assert parent.data.tags["search_status"] == "finished" and parent.info.status == "FINISHED"
    assert (search_dir / "best.yaml").exists()
