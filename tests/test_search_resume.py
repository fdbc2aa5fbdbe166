"""Kill the search driver mid-way (SIGKILL), then ``search --resume DIR``: every trial finishes, no
finished trial runs again, and the MLflow experiment holds exactly one child run per trial."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest_search import PYTHON, ROOT, SMOKE, base_overrides, child_runs, parent_runs, ray_environment, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N_TRIALS = 8


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    # Its own session, so the driver and the Ray processes it starts can be cleaned up as a group.
    return subprocess.Popen([PYTHON, "-m", "search.cli", *args], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))


def _finished_runs(uri: str, experiment: str, storage: Path) -> int:
    if not list(storage.glob("resume-*/search.json")):  # the driver is still creating the database:
        return 0  # opening it here too would race its schema migration
    runs = child_runs(uri, experiment)
    return sum(r.data.tags.get("trial_status") in ("completed", "stopped_by_asha") for r in runs)


def _epochs_of_running_trials(uri: str) -> dict[str, int]:
    """Trial id -> epochs logged, for the trials MLflow shows running."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {r.data.tags["ray_trial_id"]: len(client.get_metric_history(r.info.run_id, "valid_accuracy"))
            for r in child_runs(uri, "resume") if r.data.tags["trial_status"] == "running"}


def _trials_in_saved_state(storage: Path) -> set[str]:
    """Trial ids in the newest experiment state Ray saved to storage: the trials a resume will know.
    Ray writes that file every few seconds (``TUNE_GLOBAL_CHECKPOINT_S``), so a trial started just
    before a kill may be missing from it."""
    states = sorted(storage.glob("resume-*/experiment_state-*.json"))
    if not states:
        return set()
    try:
        state = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being rewritten right now
        return set()
    return {json.loads(trial_json)["trial_id"] for trial_json, _ in state["trial_data"]}


def _wait_for(uri: str, storage: Path, proc: subprocess.Popen, log: Path, n: int,
              running_epochs: int = 0) -> None:
    """Until ``n`` trials have finished and (with ``running_epochs``) a running trial that Ray's saved
    state already knows has logged that many."""
    deadline = time.time() + 240

    def reached() -> bool:
        if _finished_runs(uri, "resume", storage) < n:
            return False
        if not running_epochs:
            return True
        saved = _trials_in_saved_state(storage)
        return any(n >= running_epochs and tid in saved for tid, n in _epochs_of_running_trials(uri).items())

    while not reached():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"fewer than {n} trials finished (or none ran {running_epochs} epochs) in time"
        time.sleep(0.3)


def test_interrupted_and_killed_driver_resume_without_duplicate_runs(tmp_path, datasets_dir):
    """Ctrl-C (SIGINT) first: Tune saves its state, the search exits 130 marked interrupted. Then the
    resumed driver is SIGKILLed, and a second resume finishes the search."""
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "runs"
    args = ["search", "--config", str(SMOKE)]
    for o in base_overrides(tmp_path, uri) + [f"search.num_samples={N_TRIALS}", "search.name=resume",
                                              "recipe.data.max_train_rows=600", "recipe.classifier.epochs=4"]:
        args += ["--set", o]
    with ray_environment():
        first = _cli(args, tmp_path / "first.log")
        try:
            _wait_for(uri, storage, first, tmp_path / "first.log", 2)
            os.kill(first.pid, signal.SIGINT)  # Ctrl-C
            rc = first.wait(120)
        finally:
            stop_group(first)
        log = (tmp_path / "first.log").read_text()
        assert rc == 130, log[-3000:]
        assert "continue with `python launch.py search --resume" in log
        (parent,) = parent_runs(uri, "resume")
        assert parent.data.tags["search_status"] == "interrupted" and parent.info.status == "KILLED"
        (search_dir,) = storage.glob("resume-*")

        # This driver dies once a running trial has logged 2 epochs.
        second = _cli(["search", "--resume", str(search_dir)], tmp_path / "second.log")
        try:
            _wait_for(uri, storage, second, tmp_path / "second.log", _finished_runs(uri, "resume", storage) + 1,
                      running_epochs=2)
            os.kill(second.pid, signal.SIGKILL)  # the driver dies without any cleanup
            second.wait(30)
        finally:
            stop_group(second)  # the Ray processes that driver had started (same process group)
        before = {r.data.tags["ray_trial_id"]: r.data.tags["trial_status"] for r in child_runs(uri, "resume")}
        assert sum(s in ("completed", "stopped_by_asha") for s in before.values()) < N_TRIALS, before
        # trials the kill interrupted after at least one epoch: the resumed search must continue them from
        # their checkpoints, not from epoch 0
        running = {tid: n for tid, n in _epochs_of_running_trials(uri).items() if n >= 1}
        saved = _trials_in_saved_state(storage)
        interrupted = {tid: n for tid, n in running.items() if tid in saved}
        # a trial started within the last few seconds may be missing from Ray's saved state: the resumed
        # search cannot continue it (its searcher proposes a new trial) and must retire its run, not leave it
        unsaved = set(running) - saved
        assert max(interrupted.values(), default=0) >= 2, (running, saved)

        third = _cli(["search", "--resume", str(search_dir)], tmp_path / "third.log")
        try:
            rc = third.wait(300)
        finally:
            stop_group(third)
        log = (tmp_path / "third.log").read_text()
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
        assert steps == list(range(1, len(steps) + 1))
    resumed = {r.data.tags["ray_trial_id"]: int(r.data.tags.get("resumed_from_epoch", 0)) for r in runs}
    for tid, epochs_before in interrupted.items():
        # resumed from the trial's newest complete checkpoint, whatever Tune's saved state (up to 5 s old, and
        # synced in the background) knew: every epoch MLflow showed had its checkpoint persisted before it was
        # reported, so at least that one (more when the kill came before MLflow logged the next)
        assert resumed[tid] >= epochs_before, (tid, epochs_before, resumed[tid])
    assert any(resumed[tid] >= 1 for tid in interrupted)  # continued from a checkpoint, not from epoch 0
    if unsaved:  # retired: deleted (restorable) and tagged, so the experiment holds one run per trial
        from mlflow.entities import ViewType

        exp = client.get_experiment_by_name("resume")
        deleted = client.search_runs([exp.experiment_id], "tags.search_role = 'trial'",
                                     run_view_type=ViewType.DELETED_ONLY)
        retired = {r.data.tags["ray_trial_id"]: r.data.tags["trial_status"] for r in deleted}
        assert all(retired.get(tid) == "abandoned" for tid in unsaved), (unsaved, retired)
    (parent,) = parent_runs(uri, "resume")  # the resumed search kept its parent run
    assert parent.data.tags["search_status"] == "finished" and parent.info.status == "FINISHED"
    assert (search_dir / "best.yaml").exists()
