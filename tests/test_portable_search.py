"""A project with its search folder and MLflow store copied to another folder, the original deleted: the copy
exports and retrains, logging into its own store and nowhere else; the serve command retrain prints works
as printed from another folder.

The search runs in a project folder as a user runs it (relative storage, ``sqlite:///mlflow.db``), so
``search.json`` and ``best.yaml`` hold paths relative to the project; the copied store's artifact
locations still name the old folder until ``launch.py relocate-store`` points them at the copy, and a
retrain before that stops in one line saying so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_search import ROOT, SHARED_DATASETS, SMOKE, ask_served_model, ray_environment
from docs_runner import server_port
from fixed_ports import holding_port

import launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_copied_search_exports_and_retrains_from_the_copy_alone(tmp_path, monkeypatch, capsys, datasets_dir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from search import tuner
    from search.settings import load_search_config

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    cfg = load_search_config(SMOKE, [f"search.data_dir={SHARED_DATASETS}", "search.num_cpus=2",
                                     "search.object_store_mb=200", "search.verbose=0"], smoke_test=True)
    with ray_environment():
        outcome = tuner.run_search(cfg)
    search_dir = outcome.search_dir.relative_to(project)
    for name in ("search.json", "best.yaml"):  # nothing pins this machine's folder...
        text = (outcome.search_dir / name).read_text()
        assert str(project) not in text.replace(json.dumps({"project_root": str(project)})[1:-1], ""), name
    assert json.loads((outcome.search_dir / "search.json").read_text())["project_root"] == str(project)  # ...but this

    copy = tmp_path / "elsewhere" / "project-copy"
    shutil.copytree(project, copy, symlinks=True)
    shutil.rmtree(project)
    monkeypatch.chdir(copy)
    best = f"{search_dir}/best.yaml"

    # The copied store still keeps its experiment's artifacts in the deleted folder: refused, in one line.
    capsys.readouterr()  # what the search printed
    assert launch.main(["retrain", "--config", best, "--out", "runs/best"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was copied or moved from" in err, err
    assert f"python launch.py relocate-store --tracking-uri sqlite:///{copy / 'mlflow.db'}" in err
    assert not project.exists() and not (copy / "runs" / "best").exists()

    assert launch.main(["relocate-store"]) == 0
    assert "artifact locations now point under" in capsys.readouterr().out
    assert launch.main(["export", "--search", str(search_dir)]) == 0  # from the copied folder's own records
    board = (search_dir / "leaderboard.csv").read_text()
    # A resume of the copy (a new process, as a user runs it): nothing is left to run, the records are rewritten.
    resumed = subprocess.run([sys.executable, str(ROOT / "launch.py"), "search", "--resume", str(search_dir)],
                             cwd=copy, capture_output=True, text=True, env=_env_without_tracking_uri())
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "every trial of the search had ended" in resumed.stdout
    assert (search_dir / "leaderboard.csv").read_text() == board
    assert launch.main(["retrain", "--config", best, "--out", "runs/best"]) == 0
    out = capsys.readouterr().out
    assert f"at sqlite:///{copy / 'mlflow.db'}" in out and "under its search's run" in out
    assert not project.exists()  # nothing was written to the old place
    serve = re.search(r"^serve it:\s+(.+)$", out, flags=re.M).group(1)
    assert "--port 5001" in serve  # not the MLflow UI's 5000
    answer = serve_and_ask(serve, tmp_path / "somewhere-else", ["Who wrote Hamlet ?", ""])
    assert len(answer) == 2 and all(row["label"] for row in answer)  # a blank row answers too

    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    (version,) = client.search_model_versions(f"name = 'ulmfit-{cfg.experiment}'")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert run.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")  # restored after the test
    predictions = mlflow.pyfunc.load_model(f"models:/ulmfit-{cfg.experiment}@champion").predict(["Who wrote Hamlet ?"])
    assert len(predictions) == 1
    # The trials' runs recorded before the move read from the copy too.
    trial_run = client.get_run(json.loads((copy / search_dir / "search.json").read_text())["parent_run_id"])
    assert trial_run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri())


def _env_without_tracking_uri() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def serve_and_ask(command: str, cwd: Path, texts: list[str]) -> list[dict]:
    """Run the printed serve command as printed, from ``cwd`` (not the project), and ask it about ``texts``."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "no_proxy": "127.0.0.1,localhost"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = cwd / "serve.log"
    port = server_port(command)
    with holding_port(port):  # the guides' model server asks for the same port
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return ask_served_model(proc, f"http://127.0.0.1:{port}", log, texts, "the printed serve command")
