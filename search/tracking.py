"""MLflow for the search: its structure, and the Tune callback that records every trial.

Layout of one search in MLflow (what a user sees in the UI):

- **experiment** ``mlflow.experiment`` (default ``search.name``), tagged as model training (the UI
  itself follows a global GenAI / model-training switch: the printed link selects model training); created with ``artifact_location`` for a local store (``./mlartifacts``), or
  left to the tracking server's artifact proxy.
- **parent run** per search (named like its Ray folder; tag ``search_role=parent``): the search
  settings and the base recipe's key settings as params, ``search_config.yaml`` and
  ``search_space.yaml``; at the end the ``leaderboard.csv`` / ``leaderboard.json`` table, ``best.yaml``,
  the best value as its one metric (``best_valid_accuracy``), the counts and timings as ``summary.*`` tags and
  ``summary.json``, the search's plots under ``plots/``, and the tag
  ``search_status`` (finished | failed | interrupted).
- **child run** per trial, nested with the ``mlflow.parentRunId`` tag, named by its index and key
  values, and found again by its tag ``optuna_trial`` (a retried or resumed trial reopens its run; its tag
  ``ray_trial_id`` follows the Ray trial it runs as now):
  sampled values as params (rounded for display, ``[i]`` written ``.i``; the full values are in
  ``recipe.yaml``), per-epoch **learning metrics only** (:data:`EPOCH_METRICS`, ``step`` = epoch), the
  bookkeeping as tags (``trial_status``: running | completed | stopped_by_asha | errored | interrupted;
  ``lm_key``, ``lm_trained``, ``lm_seconds``, ``lm_seconds_saved``, ``resumed_from_epoch``, ``nodes``);
  at the end its best model (weights only, no optimizer state) under ``best_model/`` and its
  learning curves and learning-rate schedule under ``plots/``.

All of it is written from the driver by :class:`MLflowTrialCallback` (a Ray Tune ``Callback``) through
a :class:`~search.mlflow_writer.MlflowWriter`: Tune's event loop only queues the events; a background
thread writes them in order and retries through a store outage; what finally failed is reported in
the search summary. :func:`check_reachable` fails in seconds, before any trial runs, when the store
cannot be reached.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import yaml
from ray import tune
from ray.tune.experiment import Trial

from search import store_location
from search import trainable as T
from search.mlflow_writer import MlflowWriter
from search.outcome import (  # the trial_status tag's values
    COMPLETED,
    ERRORED,
    INTERRUPTED,
    RUNNING,
    STOPPED,
    best_completed,
    stopped_early,
    trial_outcome,
)

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
OPTUNA_TRIAL_TAG = "optuna_trial"  # the trial's number in the search's Optuna study
ROLE_TAG = "search_role"  # parent | trial | retrain
STATUS_TAG = "trial_status"
# The sampled values at full precision, as JSON (params are rounded for display): what warm start reads.
SAMPLED_TAG = "sampled_values"
SEARCH_STATUS_TAG = "search_status"
#: MLflow 3's UI opens an experiment on its GenAI page unless it is tagged as model development.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: What a child run records per epoch; everything else a trial reports is bookkeeping (tags).
EPOCH_METRICS = ("valid_accuracy", "valid_loss", "valid_macro_f1", "train_loss", "lr")
SUMMARY_PREFIX = "summary."
#: The base recipe's settings shown on the parent run (the rest is in search_config.yaml).
KEY_RECIPE_SETTINGS = ("data.dataset", "data.train", "data.max_train_rows", "model.preset", "text.max_vocab",
                       "lm.pretrained", "lm.epochs", "lm.backwards", "classifier.epochs", "classifier.unfreeze",
                       "seed", "precision")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


def http_defaults() -> None:
    """Bound MLflow's own HTTP retries (default: 7 retries, backoff 2, 120 s timeout = many minutes of
    waiting on a dead server); the writer retries with its own backoff. User-exported values win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _client(uri: str) -> Any:
    http_defaults()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


#: How long :func:`check_reachable` waits for another process creating the same SQLite store.
SQLITE_CREATE_TIMEOUT_S = 300.0


def _check_sqlite_writable(uri: str, db: Path) -> None:
    """SQLite writes the database and its journal beside it, so the folder must be writable (and the file,
    when it exists). Checked before MLflow opens it: given a read-only store, MLflow retries for minutes."""
    folder = db.parent
    while not folder.exists():  # a folder not there yet is created below: its nearest existing parent decides
        folder = folder.parent
    problem = None
    if not os.access(folder, os.W_OK | os.X_OK):
        problem = f"the folder {folder} is not writable"
    elif db.exists() and not os.access(db, os.R_OK | os.W_OK):
        problem = f"the database file {db} is read-only"
    if problem:
        raise TrackingError(f"MLflow tracking store {uri} cannot be written: {problem}; give --tracking-uri a "
                            "sqlite:/// path in a writable folder (e.g. sqlite:///mlflow.db), or make it writable")


def _check_sqlite_store(uri: str) -> Path:
    """The database file a ``sqlite:`` URI names, refused at once when it cannot hold an MLflow store: an
    in-memory database (keeps nothing; MLflow waits on it), a folder (SQLite retries for minutes), a file that
    is not an SQLite database, or another application's database (MLflow would add its tables into it)."""
    fix = "give --tracking-uri a database file, e.g. sqlite:///mlflow.db"
    db = store_location.sqlite_file(uri)
    if db is None or db == Path().resolve() or db.name == ":memory:" or "mode=memory" in uri:
        raise TrackingError(f"MLflow tracking store {uri}: names no database file (an in-memory database keeps "
                            f"nothing); {fix}")
    if db.is_dir():
        raise TrackingError(f"MLflow tracking store {uri}: {db} is a folder, not a database file; {fix} "
                            f"(e.g. sqlite:///{db / 'mlflow.db'})")
    if db.is_file() and db.stat().st_size > 0:
        try:
            with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise TrackingError(f"MLflow tracking store {uri}: {db} is not an SQLite database ({e}); {fix}") from None
        if tables and not {"experiments", "alembic_version"} & tables:
            shown = ", ".join(sorted(tables)[:5])
            raise TrackingError(f"MLflow tracking store {uri}: {db} is another application's database (tables "
                                f"{shown}); MLflow would add its own tables into it. Give a file of its own, "
                                "e.g. sqlite:///mlflow.db")
    return db


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` within ~``timeout`` s unless the tracking store answers.

    HTTP(S): ``GET /health`` with a short timeout, then one API call. SQLite: the folder must be writable;
    it is created and the schema opened (the first open of a new database takes a few seconds) under a
    file lock beside the database (``mlflow.db.lock``), so that two searches starting at once on a new
    store do not both run MLflow's schema migrations (which fails: "Online migration expected to match
    one row").
    """
    lock: Any = contextlib.nullcontext()
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
    elif uri.startswith("sqlite:"):
        db = _check_sqlite_store(uri)
        _check_sqlite_writable(uri, db)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the folder of the MLflow database {uri}: {e}") from None
        lock = filelock.FileLock(f"{db}.lock", timeout=SQLITE_CREATE_TIMEOUT_S)
        env = {}
    else:
        env = {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with lock:
            _client(uri).search_experiments(max_results=1)
    except Exception as e:  # any failure here means no trial could be tracked
        raise TrackingError(f"MLflow tracking store {uri} does not work: {type(e).__name__}: {e}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_experiment(uri: str, name: str) -> Any:
    """The experiment ``name`` if it exists (None if not), after checking that new runs can go into it: not
    deleted, and its artifacts not left in the folder a copied or moved store came from. Called before any
    training, so a store that needs attention costs no work."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    if exp.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
    old = store_location.moved_from(client, uri, exp)
    if old is not None:
        raise TrackingError(
            f"MLflow store {uri} was copied or moved from {old}: experiment {name!r} still keeps its artifacts "
            f"there ({exp.artifact_location}), so new runs would write to the old place; run "
            f"`{store_location.relocate_command(uri)}` once to point them at {store_location.sqlite_file(uri).parent}")
    return exp


def ensure_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name`` (tagged as model training), created if new (with
    ``artifact_location`` for a local store)."""
    client = _client(uri)
    exp = check_experiment(uri, name)
    if exp is not None:
        experiment_id = exp.experiment_id
    else:
        location = None
        if artifact_location and not uri.startswith(("http://", "https://", "databricks")):
            location = Path(artifact_location).expanduser().resolve().as_uri()
        db = store_location.sqlite_file(uri)
        experiment_id = client.create_experiment(name, artifact_location=location,
                                                 tags={store_location.STORE_TAG: str(db)} if db else None)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment_id


def runs_page(uri: str, experiment_id: str) -> str:
    """Where the experiment's runs are in the MLflow UI (``mlflow ui`` serves a local store on :5000).

    MLflow 3.17's UI follows a global "GenAI | Model training" switch (starting on GenAI) rather than the
    experiment's kind tag; ``workflowType=machine_learning`` in the link selects model training."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# --- names and values as the UI shows them ----------------------------------------------------


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mlflow_key(key: str) -> str:
    """A search-space key as an MLflow param name (no brackets): ``classifier.use_clr[0]`` -> ``classifier.use_clr.0``."""
    return key.replace("[", ".").replace("]", "")


def column_name(key: str) -> str:
    """A key as a table column MLflow's table preview shows (no dots): ``classifier.lr`` -> ``classifier_lr``."""
    return mlflow_key(key).replace(".", "_")


def display(value: Any) -> str:
    """A value as shown in the UI: floats to 4 significant digits (full values stay in recipe.yaml)."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)[:6000]


def trial_run_name(number: int | None, trial_id: str, sampled: Mapping[str, Any], limit: int = 90) -> str:
    """``trial 4: lr=0.0123, drop_mult=0.5, ...``: the trial's number in the Optuna study (what
    optuna-dashboard shows; the Ray id when there is none) and the sampled values, short keys."""
    head = f"trial {number}" if number is not None else f"trial {trial_id}"
    values = ", ".join(f"{k.split('.')[-1]}={display(v)}" for k, v in sampled.items())
    name = f"{head}: {values}" if values else head
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _params(values: Mapping[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(mlflow_key(k), display(v)) for k, v in values.items()]


def _tags(values: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, display(v)) for k, v in values.items()]


def metric_value(key: str, value: Any) -> float:
    """A metric as MLflow stores it. A loss (or perplexity) is computed in float32: its float64 copy carries
    digits past a float32's 7 significant ones that are noise (``0.6931471824645996``), so it is stored to 7
    digits. Accuracies and F1 are exact ratios of counts and learning rates exact doubles: stored as they are,
    so what a warm start reads back from MLflow is what the search measured."""
    value = float(value)
    return float(f"{value:.7g}") if key.endswith(("loss", "perplexity")) else value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def epoch_metrics(values: Mapping[str, Any], step: int, timestamp: int) -> list:
    """One epoch's learning metrics (:data:`EPOCH_METRICS`, those with a finite value) at ``step``."""
    from mlflow.entities import Metric

    return [Metric(k, metric_value(k, values[k]), timestamp, step) for k in EPOCH_METRICS if _number(values.get(k))]


def log_params(client: Any, run_id: str, values: Mapping[str, Any]) -> None:
    """``values`` as params, 100 per call (MLflow's limit per batch)."""
    params = _params(values)
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


# --- the parent run ----------------------------------------------------------------------------


def start_parent(uri: str, experiment_id: str, run_name: str, search_dir: Path,
                 config: Mapping[str, Any], space: Mapping[str, Any]) -> str:
    """Create the search's parent run; returns its id."""
    from ulmfit_core.config import build_recipe, get_value, to_dict

    client = _client(uri)
    run = client.create_run(experiment_id, run_name=run_name, tags={
        ROLE_TAG: "parent", SEARCH_STATUS_TAG: "running", "search_dir": str(search_dir)})
    settings = flatten({"search": config.get("search", {}), "mlflow": config.get("mlflow", {})})
    base = to_dict(build_recipe(config["recipe"])) if config.get("recipe") else {}
    for key in KEY_RECIPE_SETTINGS:
        try:
            settings[f"recipe.{key}"] = get_value(base, key)
        except KeyError:
            pass
    log_params(client, run.info.run_id, settings)
    client.log_text(run.info.run_id, yaml.safe_dump(dict(config), sort_keys=False), "search_config.yaml")
    client.log_text(run.info.run_id, yaml.safe_dump(dict(space), sort_keys=False), "search_space.yaml")
    return run.info.run_id


def finish_ended_runs(uri: str, runs: Mapping[str, Any], board: Sequence[Mapping[str, Any]],
                      history_of: Callable[[int], Sequence[Mapping[str, Any]]] = lambda number: ()) -> int:
    """End the MLflow runs of trials that ended but whose run still says RUNNING: the driver died between a
    trial's end and its run's (a resume does not run such a trial again). The epochs it reported that the run
    lacks (the driver died with them queued) are logged first, from ``history_of(number)``: the per-epoch
    metrics of the trial's newest checkpoint, so the run shows every epoch the leaderboard counts. ``runs``: the
    runs by Optuna number; ``board``: the leaderboard rows (the study's outcomes). Returns how many were ended."""
    client, ended = _client(uri), 0
    for row in board:
        run = runs.get(str(row.get("trial")))
        if run is None or run.info.status != "RUNNING" or row["status"] not in (COMPLETED, STOPPED, ERRORED):
            continue
        run_id = run.info.run_id
        logged = max((m.step for m in client.get_metric_history(run_id, EPOCH_METRICS[0])), default=0)
        now = int(time.time() * 1000)
        missed = [m for entry in history_of(int(row["trial"])) if int(entry.get(T.EPOCH) or 0) > logged
                  for m in epoch_metrics(entry, int(entry[T.EPOCH]), now)]
        for i in range(0, len(missed), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=missed[i:i + 1000])
        client.set_tag(run_id, STATUS_TAG, row["status"])
        client.set_terminated(run_id, "FAILED" if row["status"] == ERRORED else "FINISHED")
        ended += 1
    return ended


def finish_parent(uri: str, parent_run_id: str, status: str, leaderboard: list[dict[str, Any]],
                  summary: Mapping[str, float], best_yaml: Path | None, plots: Sequence[Path] = ()) -> None:
    """Leaderboard table, best config, plots and final status; of the summary, the best value as the run's one
    metric (``best_<metric>``: what the runs table and the charts show for the search), the counts and
    timings as ``summary.*`` tags and ``summary.json`` (bookkeeping stays out of the charts)."""
    from mlflow.entities import Metric

    from search.store import LEADERBOARD_CSV, leaderboard_csv

    client = _client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, metric_value(k, v), now, 0) for k, v in summary.items() if k.startswith("best_") and _number(v)]
    tags = {f"{SUMMARY_PREFIX}{k}": v for k, v in summary.items() if not k.startswith("best_")}
    client.log_batch(parent_run_id, metrics=metrics, tags=_tags({**tags, SEARCH_STATUS_TAG: status}))
    client.log_dict(parent_run_id, dict(summary), "summary.json")
    if leaderboard:
        columns = list(dict.fromkeys(k for row in leaderboard for k in row))
        client.log_text(parent_run_id, leaderboard_csv(leaderboard), LEADERBOARD_CSV)
        client.log_table(parent_run_id, {column_name(c): [row.get(c) for row in leaderboard] for c in columns},
                         "leaderboard.json")
    if best_yaml is not None and Path(best_yaml).exists():
        client.log_artifact(parent_run_id, str(best_yaml))
    for plot in plots:
        client.log_artifact(parent_run_id, str(plot), "plots")
    client.set_terminated(parent_run_id, {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


def check_search_store(uri: str, parent_run_id: str, search_dir: Path) -> None:
    """Before a search resumes: the store its search.json names exists and holds its parent run. A search
    folder copied without its store, or next to another project's store, is refused here, before anything
    is created or reopened (check_reachable would create a new, empty SQLite store)."""
    fix = ("copy the project's MLflow store (mlflow.db and mlartifacts/) along with the search folder, or start a "
           "new search")
    db = store_location.sqlite_file(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"{search_dir}: its MLflow store {uri} does not exist (search.json logs there); {fix}")
    check_reachable(uri)
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).get_run(parent_run_id)
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(f"{search_dir}: the MLflow store {uri} holds no run {parent_run_id}, this search's "
                            f"parent run (another project's store?); {fix}") from None


def reopen_parent(uri: str, parent_run_id: str) -> None:
    """A resumed search's parent run is running again."""
    client = _client(uri)
    client.update_run(parent_run_id, status="RUNNING")
    client.set_tag(parent_run_id, SEARCH_STATUS_TAG, "running")


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


# --- trials: the Tune callback and what it records -----------------------------------------------


@dataclass
class TrialSnapshot:
    """What the callback copies from a Ray ``Trial`` when an event happens (the trial object moves on)."""

    trial_id: str
    config: dict[str, Any]
    status: str
    last_result: dict[str, Any]
    error: str | None = None
    best_checkpoint: str | None = None  # local path of the trial's best checkpoint (None: none yet)
    best_epoch: int | None = None
    latest_checkpoint: str | None = None


def snapshot(trial: Trial) -> TrialSnapshot:
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    best = getattr(manager, "best_checkpoint_result", None) if manager else None
    latest = trial.checkpoint
    best_ckpt = best.checkpoint if best is not None else latest
    return TrialSnapshot(
        trial_id=trial.trial_id, config=dict(trial.config), status=trial.status,
        last_result=dict(trial.last_result or {}), error=getattr(trial, "error_msg", None),
        best_checkpoint=getattr(best_ckpt, "path", None),
        best_epoch=int(best.metrics[T.EPOCH]) if best is not None and best.metrics.get(T.EPOCH) else None,
        latest_checkpoint=getattr(latest, "path", None))


#: Writers of the callbacks alive in this process, by parent run: what the search summary reports.
_WRITERS: dict[str, MlflowWriter] = {}


def write_failures(parent_run_id: str) -> list[str]:
    """Writes to MLflow that finally failed during this process's part of the search."""
    writer = _WRITERS.get(parent_run_id)
    return list(writer.failures) if writer else []


class MLflowTrialCallback(tune.Callback):
    """Driver-side Ray Tune callback writing one MLflow child run per trial (see module docstring).

    Every hook only snapshots the trial and queues the event on a :class:`MlflowWriter`; the
    :class:`TrialRecorder` writes it from the writer's thread. The trial -> run mapping is rebuilt from
    run tags (the Optuna number), so a resumed search reopens runs instead of duplicating them. Picklable
    (Ray keeps its callbacks in ``tuner.pkl``, which this project never reads back): the writer is not pickled.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, log_checkpoints: bool = True,
                 flush_timeout: float = 600.0):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.log_checkpoints, self.flush_timeout = log_checkpoints, flush_timeout
        self._writer: MlflowWriter | None = None
        self._recorder: TrialRecorder | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None, "_recorder": None}

    @property
    def writer(self) -> MlflowWriter:
        if self._writer is None:
            self._writer = _WRITERS.setdefault(self.parent_run_id, MlflowWriter())
            self._recorder = TrialRecorder(self.tracking_uri, self.experiment_id, self.parent_run_id,
                                           self._writer, self.log_checkpoints)
        return self._writer

    def run_id_of(self, trial_id: str, wait_s: float = 0.0) -> str | None:
        """The trial's MLflow run id once the writer has created it (the searcher records it on the Optuna
        trial), waiting up to ``wait_s`` for the writer to get there; None when it has not."""
        deadline = time.monotonic() + wait_s
        while True:
            run_id = self._recorder.runs.get(trial_id) if self._recorder is not None else None
            if run_id is not None or time.monotonic() >= deadline:
                return run_id
            time.sleep(0.05)

    def _submit(self, what: str, method: str, *args: Any) -> None:
        writer = self.writer
        recorder = self._recorder
        writer.submit(what, lambda: getattr(recorder, method)(*args))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(f"start of trial {trial.trial_id}", "start", snapshot(trial))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        # The event time fixes the metrics' timestamps, so a write retried after a lost answer repeats
        # exactly the same metrics (which MLflow then stores once).
        self._submit(f"epoch {result.get(T.EPOCH)} of trial {trial.trial_id}", "result", snapshot(trial),
                     dict(result), int(time.time() * 1000))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = STOPPED if stopped_early(trial.last_result or {}) else COMPLETED
        self._submit(f"end of trial {trial.trial_id}", "finish", snapshot(trial), status)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(f"error of trial {trial.trial_id}", "finish", snapshot(trial), ERRORED)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._submit("end of the search", "experiment_end", [snapshot(t) for t in trials])
        if not self.writer.flush(self.flush_timeout):
            self.writer.failures.append(f"MLflow writes still queued after {self.flush_timeout:.0f} s at the end")


@dataclass
class TrialRecorder:
    """Writes trial events into MLflow; runs on the writer's thread only (its state needs no lock)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    writer: MlflowWriter
    log_checkpoints: bool = True
    runs: dict[str, str] = field(default_factory=dict)  # trial_id -> run_id
    by_number: dict[str, str] = field(default_factory=dict)  # Optuna trial number -> run_id
    last_step: dict[str, int] = field(default_factory=dict)  # run_id -> last epoch logged
    tags_sent: dict[str, dict[str, str]] = field(default_factory=dict)  # run_id -> bookkeeping tags set
    looked_up: bool = False
    _client_obj: Any = None

    @property
    def client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = _client(self.tracking_uri)
        return self._client_obj

    def _call(self, what: str, fn: Any) -> Any:
        return self.writer.call(what, fn)

    def _done(self, what: str, fn: Any) -> bool:
        """``fn()`` through the writer's retries; True when it ran (MLflow's writes return None)."""
        return self._call(what, lambda: (fn(), True)[1]) is not None

    def lookup_all(self) -> None:
        """Once per driver process: map trial ids to the child runs that already exist (a resume)."""
        if self.looked_up:
            return
        runs = self._call("look up the search's runs",
                          lambda: child_runs(self.tracking_uri, self.experiment_id, self.parent_run_id))
        if runs is None:
            return  # tried again at the next event
        self.looked_up = True
        for run in runs:
            tid = run.data.tags.get(TRIAL_TAG)
            if not tid:
                continue
            self.runs[tid] = run.info.run_id
            if run.data.tags.get(OPTUNA_TRIAL_TAG) is not None:
                self.by_number[run.data.tags[OPTUNA_TRIAL_TAG]] = run.info.run_id
            self.tags_sent[run.info.run_id] = {k: v for k, v in run.data.tags.items()}
            history = self._call(f"read the history of {run.info.run_id}",
                                 lambda r=run: self.client.get_metric_history(r.info.run_id, EPOCH_METRICS[0]))
            self.last_step[run.info.run_id] = max((m.step for m in history or []), default=0)

    def run_id(self, snap: TrialSnapshot) -> str | None:
        """The child run of a trial, created on first sight (params, tags, resolved recipe); a trial a
        resumed search runs again under a new Ray id gets its run back by its Optuna number."""
        self.lookup_all()
        if snap.trial_id in self.runs:
            return self.runs[snap.trial_id]
        number = snap.config.get(T.OPTUNA_NUMBER)
        if number is not None and str(number) in self.by_number:
            run_id = self.runs[snap.trial_id] = self.by_number[str(number)]
            self._set_tags(run_id, {TRIAL_TAG: snap.trial_id})
            return run_id
        from ulmfit_core.config import build_recipe, to_dict

        sampled = T.sampled_values(snap.config)
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: snap.trial_id, ROLE_TAG: "trial", STATUS_TAG: RUNNING,
                SAMPLED_TAG: json.dumps(sampled, default=str)}
        if number is not None:
            tags[OPTUNA_TRIAL_TAG] = str(number)  # tag values are strings (a REST store refuses an int)
        run = self._call(f"create the run of trial {snap.trial_id}", lambda: self.client.create_run(
            self.experiment_id, run_name=trial_run_name(number, snap.trial_id, sampled), tags=tags))
        if run is None:
            return None
        run_id = run.info.run_id
        self.runs[snap.trial_id] = run_id  # first, so a failure below never leads to a second run
        if number is not None:
            self.by_number[str(number)] = run_id
        self.last_step[run_id] = 0
        self.tags_sent[run_id] = {}
        self._call(f"params of trial {snap.trial_id}", lambda: log_params(self.client, run_id, sampled))
        recipe = to_dict(build_recipe(snap.config[T.RECIPE], sampled))
        self._call(f"recipe of trial {snap.trial_id}", lambda: self.client.log_text(
            run_id, yaml.safe_dump(recipe, sort_keys=False), "recipe.yaml"))
        return run_id

    # -- events ------------------------------------------------------------------------------------
    def start(self, snap: TrialSnapshot) -> None:
        run_id = self.run_id(snap)
        if run_id is None:
            return
        run = self._call(f"status of trial {snap.trial_id}", lambda: self.client.get_run(run_id))
        if run is not None and run.info.status != "RUNNING":  # a retried or resumed trial: reopen its run
            self._call(f"reopen trial {snap.trial_id}", lambda: self.client.update_run(run_id, status="RUNNING"))
            self._set_tags(run_id, {STATUS_TAG: RUNNING})

    def result(self, snap: TrialSnapshot, result: Mapping[str, Any], timestamp: int) -> None:
        run_id = self.run_id(snap)
        if run_id is None:
            return
        epoch = int(result.get(T.EPOCH, result.get("training_iteration", 0)))
        self._set_tags(run_id, self._bookkeeping(run_id, result))
        if result.get(T.EARLIER_EPOCHS):
            self._log_missed_epochs(snap, run_id, json.loads(result[T.EARLIER_EPOCHS]), before=epoch, timestamp=timestamp)
        if epoch > self.last_step.get(run_id, 0):  # else replayed from a checkpoint after a restore: logged already
            self._log_epoch(run_id, result, epoch, timestamp, f"epoch {epoch} of trial {snap.trial_id}")

    def _log_missed_epochs(self, snap: TrialSnapshot, run_id: str, history: list[dict[str, Any]], *, before: int,
                           timestamp: int) -> None:
        """A resumed trial's checkpoint history: log the epochs this run lacks (the driver died with them
        queued, after Tune had saved their checkpoint), in order, up to the epoch being reported."""
        for entry in sorted(history, key=lambda h: int(h.get(T.EPOCH, 0))):
            step = int(entry.get(T.EPOCH, 0))
            if self.last_step.get(run_id, 0) < step < before and not self._log_epoch(
                    run_id, entry, step, timestamp, f"epoch {step} of trial {snap.trial_id} (from its checkpoint)"):
                return  # kept in order: a later epoch is not logged before this one

    def _log_epoch(self, run_id: str, values: Mapping[str, Any], step: int, timestamp: int, what: str) -> bool:
        """One epoch's metrics at ``step``; on success (or with nothing to log) the run's last step moves
        to it. False when the write failed after the writer's retries (the writer has said so)."""
        metrics = epoch_metrics(values, step, timestamp)
        if metrics and not self._done(what, lambda: self.client.log_batch(run_id, metrics=metrics)):
            return False
        self.last_step[run_id] = step
        return True

    def _bookkeeping(self, run_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
        """Tags from a report: the LM this trial used (trained it, or reused it and saved its time), where
        it ran, and the epoch it resumed from. ``lm_trained`` stays true once an attempt trained the LM."""
        sent = self.tags_sent.setdefault(run_id, {})
        tags: dict[str, Any] = {}
        nodes = set(filter(None, sent.get("nodes", "").split(",")))
        node = result.get(T.NODE_ID)
        if node and node not in nodes:
            tags["nodes"] = ",".join(sorted(nodes | {node}))
            tags["node_ip"] = result.get("node_ip", "")
        if T.LM_KEY in result and sent.get("lm_trained") != "true":
            tags.update({"lm_key": result[T.LM_KEY], "lm_trained": str(bool(result.get(T.LM_TRAINED))).lower(),
                         T.LM_SECONDS: result.get(T.LM_SECONDS, 0.0), T.LM_SAVED: result.get(T.LM_SAVED, 0.0)})
        if T.RESUMED_FROM in result:
            tags[T.RESUMED_FROM] = int(result[T.RESUMED_FROM])
        return {k: v for k, v in tags.items() if sent.get(k) != display(v)}

    def _set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        if not tags:
            return
        if self._done(f"tags of run {run_id}", lambda: self.client.log_batch(run_id, tags=_tags(tags))):
            self.tags_sent.setdefault(run_id, {}).update({k: display(v) for k, v in tags.items()})

    def finish(self, snap: TrialSnapshot, status: str) -> None:
        run_id = self.run_id(snap)
        if run_id is None:
            return
        tags: dict[str, Any] = {STATUS_TAG: status}
        if status == ERRORED and snap.error:
            tags["error"] = str(snap.error)[-4000:]
        if snap.best_epoch is not None:
            tags["best_checkpoint_epoch"] = snap.best_epoch
        self._set_tags(run_id, tags)
        if status != ERRORED:
            if self.log_checkpoints:
                self._log_best_model(snap, run_id)
            self._log_plots(snap, run_id)
        self._call(f"end the run of trial {snap.trial_id}",
                   lambda: self.client.set_terminated(run_id, "FAILED" if status == ERRORED else "FINISHED"))

    def _log_best_model(self, snap: TrialSnapshot, run_id: str) -> None:
        """The best checkpoint's classifier, weights only (no optimizer or RNG state), under ``best_model/``."""
        if not snap.best_checkpoint or not Path(snap.best_checkpoint).is_dir():
            return
        from ulmfit_core.artifacts import export_checkpoint_model

        with tempfile.TemporaryDirectory(prefix="ulmfit-best-") as tmp:
            export_checkpoint_model(snap.best_checkpoint, Path(tmp) / "best_model")
            self._call(f"best model of trial {snap.trial_id}",
                       lambda: self.client.log_artifacts(run_id, str(Path(tmp) / "best_model"), "best_model"))

    def _log_plots(self, snap: TrialSnapshot, run_id: str) -> None:
        """Learning curves and the learning-rate schedule the trial used, from its latest checkpoint."""
        from search import plots
        from ulmfit_core.artifacts import TRAIN_LOG_FILE, read_json

        folder = snap.latest_checkpoint
        if not folder or not (Path(folder) / TRAIN_LOG_FILE).is_file():
            return
        log = read_json(Path(folder) / TRAIN_LOG_FILE)
        with tempfile.TemporaryDirectory(prefix="ulmfit-plots-") as tmp:
            try:  # drawn here, on the writer's thread, once per trial (~0.3 s of CPU)
                made = plots.trial_plots(log, tmp)
            except Exception as e:  # noqa: BLE001 (plots are a view of the results, never a reason to fail)
                logger.warning("plots of trial %s skipped: %s: %s", snap.trial_id, type(e).__name__, e)
                return
            for path in made:
                self._call(f"plot {path.name} of trial {snap.trial_id}",
                           lambda p=path: self.client.log_artifact(run_id, str(p), "plots"))

    def experiment_end(self, snaps: list[TrialSnapshot]) -> None:
        """Finish runs whose trial ended while no event reached the writer; a trial Ctrl-C left unfinished
        is marked interrupted (a resume runs it again and reopens its run)."""
        for snap in snaps:
            run_id = self.runs.get(snap.trial_id)
            if run_id is None or snap.status not in ("TERMINATED", "ERROR"):
                continue
            run = self._call(f"status of trial {snap.trial_id}", lambda r=run_id: self.client.get_run(r))
            if run is None or run.info.status != "RUNNING":
                continue
            status = trial_outcome(snap.last_result, snap.status == "ERROR")
            if status == INTERRUPTED:  # Ctrl-C: Tune saved the trial as running; a resume reopens the run
                self._set_tags(run_id, {STATUS_TAG: INTERRUPTED})
                self._call(f"stop the run of trial {snap.trial_id}",
                           lambda r=run_id: self.client.set_terminated(r, "KILLED"))
            else:
                self.finish(snap, status)


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
    rows = [{"status": r.data.tags.get(STATUS_TAG), metric: r.data.metrics.get(metric), "run": r}
            for r in child_runs(uri, exp.experiment_id, parent.info.run_id)]
    best = best_completed(rows, metric, mode)
    if best is None:
        raise TrackingError(f"the newest search in experiment {experiment!r} has no completed trial")
    run = best["run"]
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
    tag, and per finished child run its status tag, params (MLflow names, rounded), the exact sampled values
    (``None`` for runs logged before they were recorded) and the metric's history by step."""
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
            exact = run.data.tags.get(SAMPLED_TAG)
            trials.append({"run_id": run.info.run_id, "status": run.data.tags[STATUS_TAG],
                           "params": dict(run.data.params), "sampled": json.loads(exact) if exact else None,
                           "history": history})
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent.info.run_id, "search_config.yaml", tmp)
            recipe = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("recipe")
        except Exception:  # noqa: BLE001 (a parent run without it: the recipe cannot be compared)
            recipe = None
    return {"parent_run_id": parent.info.run_id, "metric": metric,
            "mode": parent.data.params.get("search.mode", "max"), "recipe": recipe,
            "search_dir": parent.data.tags.get("search_dir"), "trials": trials}


def tag_parent(uri: str, parent_run_id: str, tags: Mapping[str, Any]) -> None:
    _client(uri).log_batch(parent_run_id, tags=_tags(tags))


def run_id_of_trial(uri: str, experiment_id: str, parent_run_id: str, number: int) -> str | None:
    """The MLflow run of the search's trial ``number`` (its Optuna number)."""
    for run in child_runs(uri, experiment_id, parent_run_id):
        if run.data.tags.get(OPTUNA_TRIAL_TAG) == str(number):
            return run.info.run_id
    return None


#: The registered model's alias for its version with the best test accuracy.
CHAMPION = "champion"
#: A model version's tag holding the test accuracy the champion alias compares.
TEST_ACCURACY_TAG = "test_accuracy"


def headline_test_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """The test accuracy of what is registered: the ensemble's when there is one, else the model's."""
    for key in ("ensemble_test_accuracy", "test_accuracy"):
        if _number(metrics.get(key)):
            return float(metrics[key])
    return None


def log_retrain(uri: str, experiment: str, artifact_location: str | None, recipe: Mapping[str, Any],
                metrics: Mapping[str, Any], model_dirs: Sequence[Path], model_name: str,
                source: Mapping[str, Any], files: Sequence[Path] = (), *, started: float | None = None,
                parent_run_id: str | None = None, version_tags: Mapping[str, Any] | None = None,
                description: str = "", tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Log a retrained model as a run and register it as one MLflow pyfunc model (``search.serving``; the
    forward + backward ensemble of ``model_dirs`` as one).

    The run: the recipe as params and ``recipe.yaml``, the learning and test metrics (timings as tags),
    ``files`` such as plots and reports under ``plots/``; it starts at ``started`` (the retrain's own start,
    so MLflow shows how long the work took) and is nested under the search's parent run when that run is in
    this store, with ``tags`` besides its own. The registered version gets ``description``, ``version_tags`` and its test accuracy as a tag;
    the alias :data:`CHAMPION` moves to it when its test accuracy beats the current champion's.

    Returns ``{"run_id", "model_name", "version", "model_uri", "champion", "nested"}``.
    """
    from mlflow.entities import Metric

    from search import serving

    client = _client(uri)
    exp_id = ensure_experiment(uri, experiment, artifact_location)
    tags = {**(tags or {}), ROLE_TAG: "retrain", **{f"source_{k}": v for k, v in source.items() if v is not None}}
    nested = bool(parent_run_id) and _run_in_experiment(client, parent_run_id, exp_id)
    if nested:
        tags[PARENT_TAG] = parent_run_id
    timings = {k: v for k, v in metrics.items() if k.endswith("_seconds") and _number(v)}
    tags.update({k: f"{float(v):.1f}" for k, v in timings.items()})
    name = f"retrain of trial {source['trial_id']}" if source.get("trial_id") else "retrain"
    start_ms = int((started or time.time()) * 1000)
    tags = {k: str(v) for k, v in tags.items()}  # a REST store refuses a tag value that is not a string
    run = client.create_run(exp_id, run_name=name, tags=tags, start_time=start_ms)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    log_params(client, run_id, flatten(recipe))
    client.log_batch(run_id, metrics=[Metric(k, metric_value(k, v), now, 0) for k, v in metrics.items()
                                      if _number(v) and k not in timings])
    client.log_text(run_id, yaml.safe_dump(dict(recipe), sort_keys=False), "recipe.yaml")
    for path in files:
        client.log_artifact(run_id, str(path), "plots")
    info = serving.log_classifier_model(run_id, list(model_dirs), tracking_uri=uri, registered_model_name=model_name)
    client.set_terminated(run_id, "FINISHED")
    version = str(info.registered_model_version)
    accuracy = headline_test_accuracy(metrics)
    if description:
        client.update_model_version(model_name, version, description=description)
    for key, value in {**(version_tags or {}), TEST_ACCURACY_TAG: accuracy}.items():
        if value is not None:
            client.set_model_version_tag(model_name, version, key, str(value))
    champion = crown_if_best(client, model_name, version, accuracy)
    return {"run_id": run_id, "model_name": model_name, "version": version,
            "model_uri": f"models:/{model_name}/{version}", "champion": champion, "nested": nested}


def _run_in_experiment(client: Any, run_id: str, experiment_id: str) -> bool:
    try:
        return client.get_run(run_id).info.experiment_id == experiment_id
    except Exception:  # noqa: BLE001 (not in this store: the retrain is logged on its own)
        return False


def crown_if_best(client: Any, model_name: str, version: str, accuracy: float | None) -> bool:
    """Move the :data:`CHAMPION` alias to ``version`` when its test accuracy beats the current champion's
    (or there is none). A version without a test accuracy never takes it."""
    if accuracy is None:
        return False
    try:
        current = client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # noqa: BLE001 (MLflow raises when the alias is not set yet)
        current = None
    if current is not None and str(current.version) != str(version):
        held = current.tags.get(TEST_ACCURACY_TAG)
        if held is not None and float(held) >= accuracy:
            return False
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return True
