"""Fault drill: the search's storage fills up mid-search (a small tmpfs the test mounts, as root). The search
stops with one line that names the folder and the resume command; once there is space again (the tmpfs
grown), that command finishes every trial, with one MLflow run per trial."""
from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest_search import (
    PYTHON,
    ROOT,
    SHARED_DATASETS,
    SMOKE,
    assert_missing_trials_abandoned,
    child_runs,
    ray_environment,
    stop_group,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N_TRIALS = 4


@pytest.fixture
def small_disk(tmp_path):
    """A 9 MB tmpfs: room for the search's records and a few checkpoints (2 MB each), not for 4 trials."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let the test mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _cli(args: list[str], tmp_path: Path, name: str) -> tuple[int, str, str]:
    with ray_environment():
        proc = subprocess.Popen([PYTHON, "-m", "search.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, env=dict(os.environ))
        try:
            out, err = proc.communicate(timeout=400)
        finally:
            stop_group(proc)
    (tmp_path / f"{name}.log").write_text(out + err)
    return proc.returncode, out, err


def test_a_full_disk_stops_the_search_in_one_line_and_the_printed_resume_finishes_it(tmp_path, small_disk,
                                                                                     datasets_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store, the LM and the token cache live elsewhere
    rc, out, err = _cli(["search", "--config", str(SMOKE), "--storage", str(small_disk), "--tracking-uri", uri,
                         "--data-dir", str(SHARED_DATASETS), "--set", f"search.num_samples={N_TRIALS}",
                         "--set", f"search.lm_root={tmp_path / 'lm'}", "--set", f"search.cache_dir={tmp_path / 'cache'}",
                         "--set", f"mlflow.artifact_location={tmp_path / 'mlartifacts'}",
                         "--set", "search.num_cpus=2", "--set", "search.object_store_mb=200"], tmp_path, "full")
    assert rc == 2, (out + err)[-4000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err, err[-4000:]
    # whichever write hits the full disk first names it: a checkpoint (the OS) or the study (SQLite)
    assert last.startswith("error: ") and re.search(r"the disk is full \((No space left on device|database or disk is "
                                                    r"full)\) while the search wrote there", last), last
    resume = re.search(r"`(python launch\.py search --resume (\S+))`", last)
    assert resume, last
    (search_dir,) = small_disk.glob("smoke-*")
    assert Path(resume.group(2)).resolve() == search_dir.resolve()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space again
    rc, out, err = _cli(["search", "--resume", str(search_dir)], tmp_path, "resumed")
    assert rc == 0, (out + err)[-4000:]
    board = list(csv.DictReader((search_dir / "leaderboard.csv").open()))
    numbers = sorted(int(row["trial"]) for row in board)
    assert len(set(numbers)) == N_TRIALS, board  # the whole budget ran, each trial once
    assert_missing_trials_abandoned(search_dir, numbers)  # where the full disk hit SQLite inside suggest
    assert all(row["status"] in ("completed", "stopped_by_asha") for row in board), board
    assert all(int(row["epochs"]) == 3 for row in board if row["status"] == "completed"), board
    runs = child_runs(uri, "smoke")
    assert sorted(int(r.data.tags["optuna_trial"]) for r in runs) == numbers  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)
