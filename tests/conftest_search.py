"""Helpers and fixtures for the search tests (imported by tests/test_search_*.py).

Everything runs on loopback and is started and stopped by the tests: Ray nodes (local or
``ray.cluster_utils.Cluster``), an ``mlflow server``, driver subprocesses. Only processes started
here are stopped, by their own ids; never ``ray stop``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
SMOKE = ROOT / "configs" / "search_smoke.yaml"
PYTHON = sys.executable

import search  # noqa: E402,F401  (sets Ray's environment defaults before ray is imported)


def base_overrides(tmp: Path, tracking_uri: str | None = None) -> list[str]:
    """Overrides that put every output of a search under ``tmp`` and keep it small."""
    return [
        f"search.storage={tmp / 'runs'}",
        f"search.data_dir={SHARED_DATASETS}",
        f"mlflow.tracking_uri={tracking_uri or 'sqlite:///' + str(tmp / 'mlflow.db')}",
        f"mlflow.artifact_location={tmp / 'mlartifacts'}",
        "search.num_cpus=2", "search.object_store_mb=200", "search.verbose=0",
    ]


def smoke_config(tmp: Path, overrides: list[str] = (), tracking_uri: str | None = None):
    from search.settings import load_search_config

    return load_search_config(SMOKE, base_overrides(tmp, tracking_uri) + list(overrides))


@contextlib.contextmanager
def ray_environment():
    """Worker processes find this checkout; Ray's files go to a short private folder; Ray is shut
    down afterwards (only the instance started inside).

    Token auth off, as the project's own local Ray starts (search/local_ray.py), for a test's own
    ``ray.init`` or ``Cluster`` too: Ray keeps the auth mode of the first instance a process starts, so one
    test's instance with token auth (``ray.init``'s default) made a later in-process search's trials fail to
    start (their actors cancelled before running)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("OMP_NUM_THREADS", "1")
        tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
        mp.setenv("RAY_TMPDIR", tmp)
        try:
            yield tmp
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def ray_env():
    with ray_environment() as tmp:
        yield tmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts) that a test can kill
    (SIGKILL, as a crash) and start again on the same port and store."""

    def __init__(self, root: Path, port: int | None = None, backend_store_uri: str | None = None,
                 env: dict[str, str] | None = None):
        self.root, self.port = root, port or free_port()
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'server.db'}"
        self.env = env or {}
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "mlflow_server.log"

    def start(self, timeout: float = 90) -> str:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        mlflow_bin = str(Path(PYTHON).parent / "mlflow")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [mlflow_bin, "server", "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", str(self.root / "server_artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server's whole process group: no clean shutdown, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts), stopped afterwards."""
    with mlflow_server_process(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as uri:
        yield uri


@contextlib.contextmanager
def mlflow_server_process(backend_store_uri: str, workdir: Path, env: dict[str, str] | None = None):
    """``mlflow server`` on a free port of 127.0.0.1 backed by ``backend_store_uri``, artifacts proxied to
    ``workdir/server_artifacts``; yields its URI once ``/health`` answers, stops its process group after."""
    server = MlflowServer(workdir, backend_store_uri=backend_store_uri, env=env)
    try:
        yield server.start()
    finally:
        server.stop()


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (then SIGKILL) the process group this test started with ``start_new_session=True``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (e.g. Ray processes of a killed driver)
    except ProcessLookupError:
        pass


def ask_served_model(proc: subprocess.Popen, url: str, log: Path, texts: list[str], what: str) -> list[dict]:
    """Wait (up to 180 s) until the ``mlflow models serve`` process ``proc`` answers ``url``/ping, then POST
    ``texts`` as one ``text`` column and return the predictions; stops the process group either way. Fails the
    test with the end of ``log`` when ``what`` does not come up."""
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{what} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}
        request = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read())["predictions"]
    finally:
        stop_group(proc)


def child_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.search_role = 'trial'", max_results=1000)


def parent_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.search_role = 'parent'", max_results=100)


def assert_missing_trials_abandoned(search_dir: Path, numbers: list[int]) -> None:
    """Every study trial without a run among ``numbers`` was abandoned: the driver died (a kill, a full disk)
    inside ``suggest``, between the study's ask and the record of its Ray trial, so that trial never ran,
    and the resume marked it FAIL + abandoned and asked a new one in its place."""
    from optuna.trial import TrialState

    from search.records import RETRY_OF_ATTR
    from search.searcher import ABANDONED_ATTR, load_study

    for trial in load_study(search_dir).get_trials(deepcopy=False):
        if trial.number not in numbers and RETRY_OF_ATTR not in trial.user_attrs:
            assert trial.state == TrialState.FAIL and ABANDONED_ATTR in trial.user_attrs, trial


def run_search_cli(tmp: Path, overrides: list[str] = (), timeout: float = 600) -> str:
    """``launch.py search --config configs/search_smoke.yaml --smoke-test`` (2 tiny trials) as a user
    runs it, everything under ``tmp``; returns its stdout and stderr together. Fails the test on a
    non-zero exit. The driver runs in its own session and its group is stopped afterwards; Ray's
    console-output variable is left unset, so the search's own default applies."""
    args = [PYTHON, str(ROOT / "launch.py"), "search", "--config", str(SMOKE), "--smoke-test"]
    for o in base_overrides(tmp) + list(overrides):
        args += ["--set", o]
    with ray_environment():
        env = {k: v for k, v in os.environ.items() if k != "RAY_AIR_NEW_OUTPUT"}
        return run_to_completion(args, tmp, env, timeout)


def run_to_completion(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command in its own session (its process group is stopped afterwards, Ray's processes
    included); return its stdout and stderr together. Fails the test on a non-zero exit."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return text
