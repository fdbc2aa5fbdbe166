"""No metric lost when the tracking server goes away: a real ``mlflow server`` is killed (SIGKILL) in the
middle of a search and started again on the same port and store; every child run still holds every
epoch its trial ran, and the search reports no write that finally failed."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest_search import MlflowServer, child_runs, ray_env, smoke_config  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EPOCHS = 4


def _epochs_reported(search_root: Path) -> int:
    """Rows of the trials' Tune progress files so far (one per reported epoch)."""
    return sum(max(0, len(p.read_text().splitlines()) - 1) for p in search_root.glob("*/trial_*/progress.csv"))


def test_a_tracking_server_restart_mid_search_loses_no_epoch(tmp_path, datasets_dir, ray_env):
    from mlflow.tracking import MlflowClient

    from search import tuner

    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    uri = server.start()
    cfg = smoke_config(tmp_path, ["search.num_samples=2", "search.max_concurrent=1", "search.name=outage",
                                  f"recipe.classifier.epochs={EPOCHS}", "recipe.classifier.unfreeze=[]",
                                  "search.scheduler={type: fifo}"], tracking_uri=uri)
    events: list[str] = []

    def crash_and_restart() -> None:
        deadline = time.time() + 300
        while _epochs_reported(tmp_path / "runs") < 2 and time.time() < deadline:  # mid-way through trial 1
            time.sleep(0.2)
        server.kill()
        events.append(f"killed after {_epochs_reported(tmp_path / 'runs')} epochs")
        time.sleep(8)  # trials go on reporting while the store is down
        server.start()
        events.append(f"restarted after {_epochs_reported(tmp_path / 'runs')} epochs")

    chaos = threading.Thread(target=crash_and_restart, daemon=True)
    chaos.start()
    try:
        outcome = tuner.run_search(cfg)
        chaos.join(120)
        assert len(events) == 2, events
        killed_at = int(events[0].split()[2])
        restarted_at = int(events[1].split()[2])
        assert restarted_at > killed_at, events  # epochs really were reported while the server was down

        client = MlflowClient(uri)
        runs = {r.data.tags["ray_trial_id"]: r for r in child_runs(uri, "outage")}
        assert len(runs) == 2
        for row in outcome.leaderboard:
            assert row["status"] == "completed" and row["epochs"] == EPOCHS
            run = runs[row["trial_id"]]
            for metric in ("valid_accuracy", "valid_loss", "train_loss"):
                steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
                assert sorted(steps) == list(range(1, EPOCHS + 1)), (metric, steps, events)
            assert run.data.tags["trial_status"] == "completed" and run.info.status == "FINISHED"
        assert outcome.summary["tracking_write_failures"] == 0 and outcome.tracking_failures == []
    finally:
        server.stop()
