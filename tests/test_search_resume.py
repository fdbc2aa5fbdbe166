"""Kill the search driver mid-way (SIGKILL), then ``search --resume DIR``: every trial finishes, no
finished trial runs again, and the MLflow experiment holds exactly one child run per trial. A resume reads
the project's own files only: every pickle Ray left in the folder is replaced by one that would run code,
and nothing runs."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest_search import (
    PYTHON,
    ROOT,
    SMOKE,
    assert_missing_trials_abandoned,
    base_overrides,
    child_runs,
    parent_runs,
    ray_environment,
    stop_group,
)

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
    """Optuna trial number -> epochs logged, for the trials MLflow shows running."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {r.data.tags["optuna_trial"]: len(client.get_metric_history(r.info.run_id, "valid_accuracy"))
            for r in child_runs(uri, "resume") if r.data.tags["trial_status"] == "running"}


def _wait_for(uri: str, storage: Path, proc: subprocess.Popen, log: Path, n: int,
              running_epochs: int = 0) -> None:
    """Until ``n`` trials have finished and (with ``running_epochs``) a running trial has logged that many."""
    deadline = time.time() + 240

    def reached() -> bool:
        if _finished_runs(uri, "resume", storage) < n:
            return False
        return not running_epochs or any(n >= running_epochs for n in _epochs_of_running_trials(uri).values())

    while not reached():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"fewer than {n} trials finished (or none ran {running_epochs} epochs) in time"
        time.sleep(0.3)


class RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: if the marker folder appears, something ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant_payloads(search_dir: Path, marker: Path) -> list[Path]:
    """Replace every file of Ray's own state in the search folder (its pickles, and the JSON experiment
    state that embeds pickled objects) with a pickle that runs code."""
    import pickle

    planted = [p for p in search_dir.rglob("*") if p.is_file() and
               (p.suffix == ".pkl" or p.name.startswith(("experiment_state-", "search_gen_state-")))]
    for path in planted:
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    return planted


def test_interrupted_and_killed_driver_resume_without_duplicate_runs(tmp_path, datasets_dir):
    """Ctrl-C (SIGINT) first: Tune saves its state, the search exits 130 marked interrupted. Then the
    resumed driver is SIGKILLed, and a second resume finishes the search."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "runs"
    args = ["search", "--config", str(SMOKE)]
    for o in base_overrides(tmp_path, uri) + [f"search.num_samples={N_TRIALS}", "search.name=resume",
                                              "recipe.data.max_train_rows=1200", "recipe.classifier.epochs=4"]:
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
        killed_runs = child_runs(uri, "resume")
        before = {r.data.tags["optuna_trial"]: r.data.tags["trial_status"] for r in killed_runs}
        ran_as = {r.data.tags["optuna_trial"]: r.data.tags["ray_trial_id"] for r in killed_runs}
        assert sum(s in ("completed", "stopped_by_asha") for s in before.values()) < N_TRIALS, before
        # trials the kill interrupted after at least one epoch: the resumed search must continue them from
        # their checkpoints, not from epoch 0
        interrupted = {n: e for n, e in _epochs_of_running_trials(uri).items() if e >= 1}
        assert max(interrupted.values(), default=0) >= 2, interrupted
        marker = tmp_path / "code-ran"
        planted = _plant_payloads(search_dir, marker)
        assert any(p.name == "tuner.pkl" for p in planted) and any(p.parent != search_dir for p in planted)

        third = _cli(["search", "--resume", str(search_dir)], tmp_path / "third.log")
        try:
            rc = third.wait(300)
        finally:
            stop_group(third)
        log = (tmp_path / "third.log").read_text()
        assert rc == 0, log[-4000:]
    assert "best config:" in log and "mlflow ui --backend-store-uri" in log

    assert not marker.exists()  # no planted pickle was loaded
    runs = child_runs(uri, "resume")
    numbers = sorted(int(r.data.tags["optuna_trial"]) for r in runs)
    assert len(set(numbers)) == len(numbers) == N_TRIALS, numbers  # one run per trial, the whole budget
    assert_missing_trials_abandoned(search_dir, numbers)  # a number may be missing only where the kill landed in suggest
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_status"] in ("completed", "stopped_by_asha")
               for r in runs)
    board = list(csv.DictReader((search_dir / "leaderboard.csv").open()))
    assert sorted(int(row["trial"]) for row in board) == numbers
    assert all(row["status"] in ("completed", "stopped_by_asha") for row in board)
    client = MlflowClient(uri)
    epochs = {row["trial"]: int(row["epochs"]) for row in board}
    for r in runs:  # every epoch the leaderboard counts is in MLflow, once: resumed trials continued their numbering
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "valid_accuracy")]
        assert steps == list(range(1, epochs[r.data.tags["optuna_trial"]] + 1)), (r.data.tags["optuna_trial"], steps)
    for r in runs:
        number = r.data.tags["optuna_trial"]
        if number not in interrupted or r.data.tags["ray_trial_id"] == ran_as[number]:
            continue  # not interrupted, or it ended before the kill (the study told, MLflow not): not run again
        # run again from the trial's newest complete checkpoint: every epoch MLflow showed had its checkpoint
        # persisted before it was reported, so at least that one (more when the kill came before MLflow
        # logged the next)
        resumed = int(r.data.tags.get("resumed_from_epoch", 0))
        assert resumed >= interrupted[number], (number, interrupted[number], resumed)
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name("resume")
    assert not client.search_runs([exp.experiment_id], "", run_view_type=ViewType.DELETED_ONLY)  # none retired
    (parent,) = parent_runs(uri, "resume")  # the resumed search kept its parent run
    assert parent.data.tags["search_status"] == "finished" and parent.info.status == "FINISHED"
    assert (search_dir / "best.yaml").exists()
