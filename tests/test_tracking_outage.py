"""No metric lost when the tracking server goes away: a real ``mlflow server`` is killed (SIGKILL) in the
middle of a search and started again on the same port and store; every child run still holds every
epoch its trial ran, and the search reports no write that finally failed."""
from __future__ import annotations

import threading
import time

import pytest
from conftest_search import MlflowServer, child_runs, ray_env, smoke_config  # noqa: F401
from ray import tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

EPOCHS = 4
_STATE: dict = {}  # lives here, not on the callback (Ray pickles callbacks into tuner.pkl)


class KillTheServerAtEpoch2(tune.Callback):
    """Counts reported epochs in Tune's event loop; at the second one (mid-way through trial 1) kills the
    tracking server and restarts it from a thread once at least one more epoch was reported without it."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _STATE["epochs"] = _STATE.get("epochs", 0) + 1
        if _STATE["epochs"] == 2:
            _STATE["server"].kill()
            _STATE["events"].append(f"killed after {_STATE['epochs']} epochs")
            threading.Thread(target=_restart_later, args=(_STATE["epochs"],), daemon=True).start()


def _restart_later(killed_at: int) -> None:
    deadline = time.time() + 120
    time.sleep(5)
    while _STATE.get("epochs", 0) <= killed_at and time.time() < deadline:  # trials go on while it is down
        time.sleep(0.2)
    _STATE["server"].start()
    _STATE["events"].append(f"restarted after {_STATE['epochs']} epochs")


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
    _STATE.update(server=server, events=events, epochs=0)
    try:
        outcome = tuner.run_search(cfg, callbacks=[KillTheServerAtEpoch2()])
        deadline = time.time() + 120
        while len(events) < 2 and time.time() < deadline:
            time.sleep(0.2)
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
        _STATE.clear()
        server.stop()
