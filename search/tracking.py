"""MLflow for the search: the only module in ``search/`` that imports mlflow.

Layout of one search in MLflow:

- **experiment** ``mlflow.experiment`` (default ``search.name``); created with ``artifact_location``
  for a local store (``./mlartifacts``), or left to the tracking server's artifact proxy.
- **parent run** per search (named like its Ray folder; tag ``search_role=parent``): the search
  settings as params, ``search_config.yaml`` and ``search_space.yaml``; at the end the
  ``leaderboard.csv`` / ``leaderboard.json`` table, ``best.yaml``, summary metrics and the tag
  ``search_status`` (finished | failed | interrupted).
- **child run** per trial, nested with the ``mlflow.parentRunId`` tag and found again by its tag
  ``ray_trial_id`` -- so a retried or resumed trial reopens its run instead of creating another:
  sampled values as params (``[i]`` written ``.i``), the resolved ``recipe.yaml``, per-epoch metrics
  (``step`` = epoch) sent in one ``log_batch`` per report, tags ``trial_status`` (running | completed |
  stopped_by_asha | errored | interrupted; abandoned for the rare run retired after a resume, see
  :meth:`MLflowTrialCallback.on_experiment_end`), ``lm_key``, ``lm_trained``, ``nodes``; the best
  checkpoint (``checkpoint.pt``, ``vocab.json``, labels, config) under ``checkpoint/``.

All of it is written from the driver by :class:`MLflowTrialCallback` (a Ray Tune ``Callback``), so
trial processes need no MLflow access. HTTP retries are bounded (:func:`http_defaults`) and
:func:`check_reachable` fails in seconds, before any trial runs, when the store cannot be reached.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.experiment import Trial

from search import trainable as T

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
ROLE_TAG = "search_role"  # parent | trial | retrain
STATUS_TAG = "trial_status"
SEARCH_STATUS_TAG = "search_status"
COMPLETED, STOPPED, ERRORED, RUNNING = "completed", "stopped_by_asha", "errored", "running"
INTERRUPTED = "interrupted"  # the search stopped (Ctrl-C) before the trial ended; a resume continues it
ABANDONED = "abandoned"  # see MLflowTrialCallback.on_experiment_end


def outcome(result: Mapping[str, Any] | None, errored: bool = False) -> str:
    """How a trial ended, from its last result: errored, interrupted (no final ``done`` result: the
    driver stopped first), stopped_by_asha (done before its last epoch) or completed."""
    if errored:
        return ERRORED
    result = result or {}
    if not result.get("done"):
        return INTERRUPTED
    return STOPPED if T.stopped_early(result) else COMPLETED


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


def http_defaults() -> None:
    """Bound MLflow's HTTP retries (default: 7 retries, backoff 2, 120 s timeout = many minutes of
    waiting on a dead server). User-exported values win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _client(uri: str):
    http_defaults()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` within ~``timeout`` s unless the tracking store answers.

    HTTP(S): ``GET /health`` with a short timeout, then one API call. SQLite: the database folder is
    created and the schema opened (the first open of a new database takes a few seconds).
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user-given URI)
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it (e.g. `mlflow server "
                f"--host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db --artifacts-destination "
                f"./mlartifacts`), fix --tracking-uri, or omit it to use the local sqlite:///mlflow.db") from None
        env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout) + 1)}
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the folder of the MLflow database {uri}: {e}") from None
        env = {}
    else:
        env = {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # any failure here means no trial could be tracked
        raise TrackingError(f"MLflow tracking store {uri} does not work: {type(e).__name__}: {e}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ensure_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location`` for a local store) if new."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
        return exp.experiment_id
    location = None
    if artifact_location and not uri.startswith(("http://", "https://", "databricks")):
        location = Path(artifact_location).expanduser().resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mlflow_key(key: str) -> str:
    """A search-space key as an MLflow param name (no brackets): ``classifier.use_clr[0]`` -> ``classifier.use_clr.0``."""
    return key.replace("[", ".").replace("]", "")


def _params(values: Mapping[str, Any]):
    from mlflow.entities import Param

    return [Param(mlflow_key(k), str(v)[:6000]) for k, v in values.items()]


def _tags(values: Mapping[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in values.items()]


def start_parent(uri: str, experiment_id: str, run_name: str, search_dir: Path,
                 config: Mapping[str, Any], space: Mapping[str, Any]) -> str:
    """Create the search's parent run; returns its id."""
    client = _client(uri)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        ROLE_TAG: "parent", SEARCH_STATUS_TAG: "running", "search_dir": str(search_dir)})
    settings = _flatten({"search": config.get("search", {}), "mlflow": config.get("mlflow", {})})
    client.log_batch(run.info.run_id, params=_params(settings))
    client.log_text(run.info.run_id, yaml.safe_dump(dict(config), sort_keys=False), "search_config.yaml")
    client.log_text(run.info.run_id, yaml.safe_dump(dict(space), sort_keys=False), "search_space.yaml")
    return run.info.run_id


def finish_parent(uri: str, parent_run_id: str, status: str, leaderboard: list[dict[str, Any]],
                  summary: Mapping[str, float], best_yaml: Path | None) -> None:
    """Leaderboard table, best config, summary metrics and final status on the parent run."""
    from mlflow.entities import Metric

    client = _client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if _number(v)]
    client.log_batch(parent_run_id, metrics=metrics, tags=_tags({SEARCH_STATUS_TAG: status}))
    if leaderboard:
        from search.store import LEADERBOARD_CSV, leaderboard_csv

        columns = list(dict.fromkeys(k for row in leaderboard for k in row))
        client.log_text(parent_run_id, leaderboard_csv(leaderboard), LEADERBOARD_CSV)
        client.log_table(parent_run_id, {c: [row.get(c) for row in leaderboard] for c in columns},
                         "leaderboard.json")
    if best_yaml is not None and Path(best_yaml).exists():
        client.log_artifact(parent_run_id, str(best_yaml))
    client.set_terminated(parent_run_id, {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


def reopen_parent(uri: str, parent_run_id: str) -> None:
    """A resumed search's parent run is running again."""
    client = _client(uri)
    client.update_run(parent_run_id, status="RUNNING")
    client.set_tag(parent_run_id, SEARCH_STATUS_TAG, "running")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of a parent (all pages)."""
    client = _client(uri)
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class MLflowTrialCallback(tune.Callback):
    """Driver-side Ray Tune callback writing one MLflow child run per trial (see module docstring).

    Picklable (Ray stores it in ``tuner.pkl`` and brings it back on ``Tuner.restore``): the MLflow
    client is rebuilt lazily and the trial -> run mapping is rebuilt from run tags, so a resumed
    search reopens runs instead of duplicating them.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, metrics: Iterable[str],
                 space_keys: Iterable[str], log_checkpoints: bool = True):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metrics = tuple(metrics)
        self.space_keys = tuple(space_keys)
        self.log_checkpoints = log_checkpoints
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}  # run_id -> last epoch logged (replays after a restore are skipped)
        self._nodes: dict[str, set[str]] = {}  # run_id -> node ids the trial ran on
        self._lm_trained: dict[str, bool] = {}  # run_id -> a run of this trial trained its LM
        self._client_obj = None
        self._looked_up = False

    # -- pickling: drop the client -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        state["_looked_up"] = False
        return state

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self._runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs.update(state.get("runs", {}))

    @property
    def _client(self):
        if self._client_obj is None:
            self._client_obj = _client(self.tracking_uri)
        return self._client_obj

    # -- run lookup ----------------------------------------------------------------------------
    def _lookup_all(self) -> None:
        """Once per driver process: map trial ids to the child runs that already exist."""
        if self._looked_up:
            return
        self._looked_up = True
        for run in child_runs(self.tracking_uri, self.experiment_id, self.parent_run_id):
            tid = run.data.tags.get(TRIAL_TAG)
            if not tid:
                continue
            self._runs[tid] = run.info.run_id
            self._lm_trained[run.info.run_id] = run.data.tags.get("lm_trained") == "true"
            nodes = run.data.tags.get("nodes", "")
            self._nodes[run.info.run_id] = set(filter(None, nodes.split(",")))
            if run.info.run_id not in self._last_step:
                history = self._client.get_metric_history(run.info.run_id, self.metrics[0])
                self._last_step[run.info.run_id] = max((m.step for m in history), default=0)

    def run_id(self, trial: Trial) -> str:
        """The child run of ``trial``, created on first sight (params, tags, resolved recipe)."""
        self._lookup_all()
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        from ulmfit_core.config import build_recipe, to_dict

        sampled = T.sampled_values(trial.config)
        run = self._client.create_run(self.experiment_id, run_name=f"trial_{tid}", tags={
            PARENT_TAG: self.parent_run_id, TRIAL_TAG: tid, ROLE_TAG: "trial", STATUS_TAG: RUNNING})
        run_id = run.info.run_id
        self._runs[tid] = run_id  # first, so a failure below never leads to a second run
        self._last_step[run_id] = 0
        self._client.log_batch(run_id, params=_params(sampled))
        recipe = to_dict(build_recipe(trial.config[T.RECIPE], sampled))
        self._client.log_text(run_id, yaml.safe_dump(recipe, sort_keys=False), "recipe.yaml")
        return run_id

    # -- Tune hooks ------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._guard(self._start, trial)

    def _start(self, trial) -> None:
        run_id = self.run_id(trial)
        run = self._client.get_run(run_id)
        if run.info.status != "RUNNING":  # a retried or resumed trial: reopen its run
            self._client.update_run(run_id, status="RUNNING")
            self._client.set_tag(run_id, STATUS_TAG, RUNNING)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self._guard(self._result, trial, result)

    def _result(self, trial, result: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        epoch = int(result.get(T.EPOCH, result.get("training_iteration", 0)))
        tags: dict[str, Any] = {}
        node = result.get(T.NODE_ID)
        if node and node not in self._nodes.setdefault(run_id, set()):
            self._nodes[run_id].add(node)
            tags["nodes"] = ",".join(sorted(self._nodes[run_id]))
            tags["node_ip"] = result.get("node_ip", "")
        if T.LM_KEY in result and not self._lm_trained.get(run_id):
            trained = bool(result.get(T.LM_TRAINED))
            self._lm_trained[run_id] = trained
            tags.update({"lm_key": result[T.LM_KEY], "lm_trained": str(trained).lower()})
        if epoch <= self._last_step.get(run_id, 0):  # replayed after a restore: logged already
            if tags:
                self._client.log_batch(run_id, tags=_tags(tags))
            return
        now = int(time.time() * 1000)
        names = list(self.metrics) + [T.LM_SECONDS, T.LM_SAVED, T.RESUMED_FROM, "epoch_seconds"]
        metrics = [Metric(k, float(result[k]), now, epoch) for k in names if _number(result.get(k))]
        self._client.log_batch(run_id, metrics=metrics, tags=_tags(tags))
        self._last_step[run_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = STOPPED if T.stopped_early(trial.last_result or {}) else COMPLETED
        self._guard(self._finish, trial, status)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._guard(self._finish, trial, ERRORED)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Finish runs whose trial ended while no driver was listening (killed between the two), and
        retire runs of trials Ray no longer knows.

        A driver killed within a few seconds of starting a trial can die before Ray saved that trial
        in its experiment state (``TUNE_GLOBAL_CHECKPOINT_S``); the resumed search never continues
        it (its searcher proposes a new trial instead). Such a run is tagged ``trial_status=abandoned``
        and deleted (MLflow keeps deleted runs restorable), so the experiment holds one run per trial.
        """
        self._guard(self._retire_abandoned, {t.trial_id for t in trials})
        for trial in trials:
            run_id = self._runs.get(trial.trial_id)
            if run_id is None or trial.status not in ("TERMINATED", "ERROR"):
                continue
            try:
                if self._client.get_run(run_id).info.status != "RUNNING":
                    continue
                status = outcome(trial.last_result, trial.status == "ERROR")
                if status == INTERRUPTED:  # Ctrl-C: Tune saved the trial as running; a resume reopens the run
                    self._client.set_tag(run_id, STATUS_TAG, INTERRUPTED)
                    self._client.set_terminated(run_id, "KILLED")
                else:
                    self._finish(trial, status)
            except Exception as e:  # noqa: BLE001
                logger.warning("MLflow: could not finish the run of trial %s: %s", trial.trial_id, e)

    def _retire_abandoned(self, known: set[str]) -> None:
        self._lookup_all()
        for tid, run_id in list(self._runs.items()):
            if tid not in known:
                self._client.log_batch(run_id, tags=_tags({
                    STATUS_TAG: ABANDONED, "note": "trial started before the driver died and unknown to the "
                                                   "resumed search (Ray's saved state predates it)"}))
                self._client.set_terminated(run_id, "KILLED")
                self._client.delete_run(run_id)
                del self._runs[tid]

    def _finish(self, trial, status: str) -> None:
        run_id = self.run_id(trial)
        tags = {STATUS_TAG: status}
        if status == ERRORED and getattr(trial, "error_msg", None):
            tags["error"] = str(trial.error_msg)[-4000:]
        self._client.log_batch(run_id, tags=_tags(tags))
        if self.log_checkpoints and status != ERRORED:
            self._log_best_checkpoint(trial, run_id)
        self._client.set_terminated(run_id, "FAILED" if status == ERRORED else "FINISHED")

    def _log_best_checkpoint(self, trial, run_id: str) -> None:
        manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
        best = getattr(manager, "best_checkpoint_result", None) if manager else None
        checkpoint = best.checkpoint if best is not None else trial.checkpoint
        if checkpoint is None:
            return
        with tempfile.TemporaryDirectory(prefix="ulmfit-ckpt-") as tmp:
            local = checkpoint.to_directory(tmp)
            for hidden in Path(local).glob(".*"):  # Ray's own metadata files
                hidden.unlink()
            self._client.log_artifacts(run_id, local, "checkpoint")
        if best is not None and best.metrics.get(T.EPOCH) is not None:
            self._client.set_tag(run_id, "best_checkpoint_epoch", int(best.metrics[T.EPOCH]))

    def _guard(self, fn, *args) -> None:
        """Tracking never stops a search: a failed MLflow call is logged and the search goes on."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            logger.warning("MLflow tracking failed in %s: %s: %s", fn.__name__, type(e).__name__, e)


# -- export and retrain ------------------------------------------------------------------------------


def best_trial_run(uri: str, experiment: str) -> dict[str, Any]:
    """From the newest parent run of ``experiment``: its best completed child run (by the search's own
    metric and mode, read from the parent's params) and that trial's resolved recipe."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no MLflow experiment {experiment!r} at {uri}")
    parents = client.search_runs([exp.experiment_id], f"tags.{ROLE_TAG} = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise TrackingError(f"experiment {experiment!r} has no search (parent) run")
    parent = parents[0]
    metric = parent.data.params.get("search.metric", "valid_accuracy")
    mode = parent.data.params.get("search.mode", "max")
    order = "DESC" if mode == "max" else "ASC"
    runs = client.search_runs([exp.experiment_id],
                              f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and tags.{STATUS_TAG} = '{COMPLETED}'",
                              order_by=[f"metrics.{metric} {order}"], max_results=1)
    if not runs:
        raise TrackingError(f"the newest search in experiment {experiment!r} has no completed trial")
    run = runs[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, "recipe.yaml", tmp)
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {"recipe": recipe, "run_id": run.info.run_id, "trial_id": run.data.tags.get(TRIAL_TAG),
            "metric": metric, "mode": mode, "value": run.data.metrics.get(metric),
            "parent_run_id": parent.info.run_id,
            "search_dir": parent.data.tags.get("search_dir"), "experiment": experiment}


# -- warm start (search/warm_start.py reads earlier searches through these two) ------------------------


def newest_search_trials(uri: str, experiment: str) -> dict[str, Any]:
    """The newest search (parent run) of ``experiment`` as plain data: its metric, mode and ``search_dir``
    tag, and per finished child run its status tag, params (MLflow names) and the metric's history by step."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = exp and client.search_runs([exp.experiment_id], f"tags.{ROLE_TAG} = 'parent'",
                                         order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise TrackingError(f"no search (parent run) in MLflow experiment {experiment!r} at {uri}")
    parent = parents[0]
    metric = parent.data.params.get("search.metric", "valid_accuracy")
    trials = []
    for run in child_runs(uri, exp.experiment_id, parent.info.run_id):
        if run.data.tags.get(STATUS_TAG) in (COMPLETED, STOPPED):
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
            trials.append({"run_id": run.info.run_id, "status": run.data.tags[STATUS_TAG],
                           "params": dict(run.data.params), "history": history})
    return {"parent_run_id": parent.info.run_id, "metric": metric,
            "mode": parent.data.params.get("search.mode", "max"),
            "search_dir": parent.data.tags.get("search_dir"), "trials": trials}


def tag_parent(uri: str, parent_run_id: str, tags: Mapping[str, Any]) -> None:
    _client(uri).log_batch(parent_run_id, tags=_tags(tags))


def run_id_of_trial(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    for run in child_runs(uri, experiment_id, parent_run_id):
        if run.data.tags.get(TRIAL_TAG) == trial_id:
            return run.info.run_id
    return None


def log_retrain(uri: str, experiment: str, artifact_location: str | None, recipe: Mapping[str, Any],
                metrics: Mapping[str, Any], model_dir: Path, model_name: str,
                source: Mapping[str, Any]) -> dict[str, Any]:
    """Log a retrained model as a run (params, final metrics, the model folder as artifacts) and
    register it in the model registry; returns ``{"run_id", "model_name", "version", "model_uri"}``."""
    client = _client(uri)
    exp_id = ensure_experiment(uri, experiment, artifact_location)
    tags = {ROLE_TAG: "retrain", **{f"source_{k}": v for k, v in source.items() if v is not None}}
    run = client.create_run(exp_id, run_name=f"retrain_{source.get('trial_id') or 'config'}", tags=tags)
    run_id = run.info.run_id
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    params = _flatten(recipe)
    for i in range(0, len(params), 100):  # log_batch takes at most 100 params per call
        chunk = dict(list(params.items())[i:i + 100])
        client.log_batch(run_id, params=_params(chunk))
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if _number(v)])
    client.log_text(run_id, yaml.safe_dump(dict(recipe), sort_keys=False), "recipe.yaml")
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id, "FINISHED")
    model_uri = f"runs:/{run_id}/model"
    try:
        client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 (not found: create it)
        client.create_registered_model(model_name, description="ULMFiT text classifier retrained from a search")
    version = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    return {"run_id": run_id, "model_name": model_name, "version": version.version, "model_uri": model_uri}
