"""Build and run the search: the study searcher (TPE, seeded; its study in the search folder, warm-started)
behind a ConcurrencyLimiter, a scheduler (search/schedulers.py: ASHA or FIFO), resources, storage,
FailureConfig, checkpoints, MLflow tracking; resume a search that stopped.

A resume never reads Ray's saved state (``tuner.pkl``, ``experiment_state-*.json``, the searcher's and
trials' pickles): it starts a new Tune experiment in the same folder from the project's own data --
``search.json``, the study in ``optuna.db`` (which trials ended, which did not) and each trial's checkpoint
folders. The searcher hands out the unfinished and failed trials first (each finds its newest checkpoint in
its earlier folders), then asks for the rest of the budget; ASHA is seeded with the study's epoch values;
each trial's MLflow run is found again by its Optuna number. The leaderboard and export read the trials from
the same data (``search/records.py``), so they cover every run of the search.

One search lives in one folder, ``<search.storage>/<search.name>-<YYYYmmdd-HHMMSS>``: Ray's experiment
state and trial checkpoints, plus ``search.json`` (the resolved search config and its MLflow ids, all a
resume needs), ``leaderboard.csv`` and ``best.yaml`` at the end. Language models and the tokenized
corpus are cached beside it (``<storage>/_lm_cache``, ``<storage>/_corpus_cache``) so trials -- and
later searches in the same storage -- share them. On a cluster ``storage`` must be a path every node
sees (NFS/EFS); LM sharing relies on its file locks.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import ConcurrencyLimiter

from search import outcome, plots, portable, records, store, tracking, warm_start
from search import trainable as T
from search.console_log import LibraryLog
from search.errors import storage_error, storage_problem
from search.local_ray import start_local_ray
from search.progress import progress_reporter, use_classic_progress_output
from search.rungs import asha_rungs
from search.schedulers import Asha, make_scheduler
from search.searcher import make_searcher
from search.settings import SearchConfig
from search.shared_storage import check_storage_shared
from search.trainable import models_dir, param_space  # noqa: F401  (tuner.param_space: the trials' config)
from ulmfit_core.config import RecipeConfig, build_recipe, to_dict
from ulmfit_core.corpus import Corpus
from ulmfit_core.metrics import METRICS
from ulmfit_core.pretrained import describe_start

logger = logging.getLogger(__name__)



# -- the searcher ------------------------------------------------------------------------------------


class CheckpointPruner(tune.Callback):
    """Keep every checkpoint of a running trial; once it has ended, only its best and its latest.

    Ray's ``num_to_keep`` deletes an older checkpoint as soon as a newer one is registered, but the
    experiment state on disk is saved every ``TUNE_GLOBAL_CHECKPOINT_S`` seconds, so after the driver
    dies the resumed search can point a trial at a checkpoint that is gone (seen here: "Could not
    recover from checkpoint as it does not exist on storage anymore"). So nothing is deleted while a
    trial runs, and an ended trial's extra checkpoints go only after the state has been saved since
    (``delay_s``) or at the end of the experiment (Tune saves its state before ending callbacks).
    Ray's bookkeeping keeps listing the deleted ones in ``Result.best_checkpoints``; ``Result.checkpoint``
    (latest) and the best stay.
    """

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self._pending: list[tuple[float, list]] = []  # (due time, checkpoints to delete)

    def __getstate__(self) -> dict:
        return {"delay_s": self.delay_s, "_pending": []}

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
        if manager is None:
            return
        keep = {id(r) for r in (manager.best_checkpoint_result, manager.latest_checkpoint_result) if r is not None}
        extra = [r.checkpoint for r in manager.best_checkpoint_results if id(r) not in keep]
        if extra:
            self._pending.append((time.monotonic() + self.delay_s, extra))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._delete(time.monotonic())

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._delete(math.inf)

    def _delete(self, now: float) -> None:
        due = [c for t, cs in self._pending if t <= now for c in cs]
        self._pending = [(t, cs) for t, cs in self._pending if t > now]
        for checkpoint in due:
            try:
                checkpoint.filesystem.delete_dir(checkpoint.path)
            except Exception as e:  # noqa: BLE001 (already gone, or storage hiccup: only disk is lost)
                logger.debug("could not delete checkpoint %s: %s", checkpoint.path, e)


def _state_save_period() -> float:
    value = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    try:
        return float(value)
    except ValueError:  # "auto": Tune adapts it from 10 s upwards
        return 120.0


# -- Ray -------------------------------------------------------------------------------------------


def init_ray(cfg: SearchConfig, address: str | None = None, log: LibraryLog | None = None) -> dict[str, float]:
    """Connect to ``address`` or start a local Ray (``num_cpus`` <= cores, every port on 127.0.0.1:
    ``search.local_ray``); returns cluster resources.

    On several nodes, checks that ``search.storage`` (and a separate ``search.lm_root``) is one folder
    every node sees (``search.shared_storage``). Refuses a trial larger than the cluster; warns when
    ``max_concurrent`` x CPUs exceeds it (Ray then runs fewer trials at once -- never more threads than
    cores, since a trial's threads = its CPUs).
    """
    s = cfg.search
    quiet = log is not None and log.active  # Ray's own console logging stays off: its records go to the log
    if not ray.is_initialized():
        if address:
            _check_ray_address(address)
            ray.init(address=address, log_to_driver=False, configure_logging=not quiet)
        else:
            start_local_ray(_local_num_cpus(s.num_cpus), s.object_store_mb * 1024 * 1024, configure_logging=not quiet)
        if log is not None:
            log.reroute("ray")
    for key, folder in _folders_every_node_needs(cfg).items():
        check_storage_shared(folder, key)  # returns at once on a single node
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    autoscaling = bool(address)
    if s.resources.cpu > cpus and not autoscaling:
        raise ValueError(f"search.resources.cpu={s.resources.cpu} but the Ray cluster has {cpus:g} CPUs")
    if s.resources.gpu > gpus and not autoscaling:
        raise ValueError(f"search.resources.gpu={s.resources.gpu} but the Ray cluster has {gpus:g} GPUs "
                         f"(set search.resources.gpu: 0 on a CPU-only machine)")
    if s.max_concurrent * s.resources.cpu > cpus and not autoscaling:
        logger.warning("max_concurrent=%d trials x %g CPUs > %g CPUs: at most %d trials run at once",
                       s.max_concurrent, s.resources.cpu, cpus, int(cpus // s.resources.cpu))
    return resources


def _local_num_cpus(requested: int | None) -> int:
    cores = os.cpu_count() or 1
    num_cpus = requested or cores
    if num_cpus > cores:
        warnings.warn(f"search.num_cpus={num_cpus} > {cores} cores: trials would oversubscribe "
                      f"the CPU; using {cores}", stacklevel=3)
        num_cpus = cores
    return num_cpus


def _folders_every_node_needs(cfg: SearchConfig) -> dict[str, Path]:
    """Checkpoints (retries resume on another node) and the shared LM cache (its file locks)."""
    folders = {"search.storage": Path(cfg.search.storage)}
    if cfg.search.lm_root:
        folders["search.lm_root"] = Path(cfg.search.lm_root)
    return folders


def _check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when a ``HOST:PORT`` Ray address does not answer (``ray.init`` would retry
    for many minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ValueError(f"--address {address}: no Ray cluster answers there ({e}); start one with "
                         f"`ray start --head` or `ray up cluster.yaml`, or omit --address for a local Ray") from None


def _trial_dirname(trial) -> str:
    return T.trial_dirname(trial.trial_id)


def make_trainable(cfg: SearchConfig) -> Any:
    """The trainable with its per-trial resources; the same object must be given to a restore."""
    res = {"cpu": cfg.search.resources.cpu, "gpu": cfg.search.resources.gpu}
    return tune.with_resources(T.train_trial, res)


def build_tuner(cfg: SearchConfig, search_dir: Path, callbacks: Sequence[tune.Callback],
                earlier: Sequence[warm_start.EarlierSearch] = (),
                run_id_of: Callable[[str, float], str | None] | None = None) -> tune.Tuner:
    """The Tuner of a new search; its study (``search_dir/optuna.db``) starts with the ``earlier``
    searches' trials and the points to evaluate first. ``run_id_of``: a trial's MLflow run, once it exists."""
    searcher = make_searcher(cfg, search_dir, run_id_of=run_id_of)
    warm_start.start_study(searcher.study, cfg, earlier)
    return _tuner(cfg, search_dir, searcher, make_scheduler(cfg), callbacks, cfg.search.num_samples)


def build_resumed_tuner(cfg: SearchConfig, search_dir: Path, callbacks: Sequence[tune.Callback],
                        run_id_of: Callable[[str, float], str | None] | None = None) -> tune.Tuner | None:
    """The Tuner that continues a stopped search from its study (see the module docstring); None when every
    trial of its budget has ended (the search stopped between its last trial and its records)."""
    searcher = make_searcher(cfg, search_dir, create=False, run_id_of=run_id_of)
    again, new = searcher.continue_unfinished()
    if again + new == 0:
        return None
    if searcher.lm_gate is not None:
        searcher.lm_gate.num_samples = again + new
    print(f"resume: {again} unfinished or failed trial(s) run again from their newest checkpoints, "
          f"{new} new trial(s)", flush=True)
    scheduler = make_scheduler(cfg)
    if isinstance(scheduler, Asha):
        scheduler.seed({number: dict(t.intermediate_values) for number, t in records.own_trials(searcher.study).items()})
    return _tuner(cfg, search_dir, searcher, scheduler, callbacks, again + new)


def _tuner(cfg: SearchConfig, search_dir: Path, searcher: Any, scheduler: Any, callbacks: Sequence[tune.Callback],
           num_samples: int) -> tune.Tuner:
    s = cfg.search
    use_classic_progress_output()  # else Ray's default output ignores progress_reporter (search/progress.py)
    return tune.Tuner(
        make_trainable(cfg),
        param_space=param_space(cfg, search_dir),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent),
            scheduler=scheduler, num_samples=num_samples, reuse_actors=s.reuse_actors,
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=search_dir.name, storage_path=str(search_dir.parent), callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # num_to_keep=None: CheckpointPruner deletes safely (see there); scores pick the best one.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=s.metric,
                                                    checkpoint_score_order=s.mode),
            verbose=s.verbose, progress_reporter=progress_reporter(cfg)),
    )


# -- running -----------------------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    search_dir: Path
    leaderboard: list[dict[str, Any]]
    best_yaml: Path | None
    summary: dict[str, float]
    tracking_uri: str
    experiment: str
    parent_run_id: str
    errors: list[str] = field(default_factory=list)
    status: str = "finished"  # or "interrupted": continue with resume_search(search_dir)
    experiment_id: str | None = None
    tracking_failures: list[str] = field(default_factory=list)  # MLflow writes that finally failed


def check_language_model_start(cfg: SearchConfig) -> str:
    """Resolve ``lm.pretrained`` for every direction the search can sample, before Ray starts: a zoo model
    not fetched fails here with the fetch command, or (``lm.pretrained_required: false``) is dropped from
    the base recipe, so every record shows the random start that really runs. Returns the line to print."""
    base = build_recipe(cfg.recipe)
    directions = {base.lm.backwards}
    for p in cfg.space.params:
        if p.key == "lm.backwards":
            directions |= {bool(v) for v in p.extremes()}
    lines = []
    for backwards in sorted(directions):
        oriented = build_recipe(to_dict(base), {"lm.backwards": backwards, "classifier.backwards": backwards})
        start_cfg, line = describe_start(oriented, models_dir(cfg))
        if start_cfg.lm.pretrained is None and base.lm.pretrained is not None:
            cfg.recipe.setdefault("lm", {})["pretrained"] = None  # not fetched, and not required
            return line
        lines.append(line)
    return "\n".join(lines)


def prepare_data_first(cfg: SearchConfig) -> Corpus:
    """Read and tokenize the base recipe's data on the driver, before Ray starts: a missing or malformed
    dataset is one clear error here (not a retried traceback per trial), and the token cache the trials
    read is built once. Returns the corpus."""
    from ulmfit_core.corpus import prepare_corpus

    run = param_space(cfg)[T.RUN]
    return prepare_corpus(build_recipe(cfg.recipe), data_dir=run["data_dir"], cache_dir=run["cache_dir"],
                          models_dir=run["models_dir"])


def train_shared_lm_first(cfg: SearchConfig, corpus: Corpus | None = None) -> list[dict[str, Any]] | None:
    """With ``search_lm: false`` every trial uses one language model: train it now, as a Ray task with one
    trial's resources, before any trial starts; trials then only load it, so none waits for it holding an
    accelerator. A space that searches the tokenizer (``space.UP_FRONT_KEYS``) gets one LM per value, each
    its own task, run side by side as resources allow. When the LM cache already holds the base recipe's
    (``corpus`` given: the driver's own), the driver finds it itself and starts no task (a worker process and
    its imports, seconds per search). None when trials need no LM or train their own."""
    recipe = build_recipe(cfg.recipe)
    if cfg.search.search_lm or recipe.classifier.from_scratch:
        return None
    run = param_space(cfg)[T.RUN]
    settings = cfg.space.lm_settings()
    found = _shared_lm_in_cache(recipe, corpus, run) if corpus is not None and settings == [{}] else None
    if found is not None:
        infos = [found]
    else:
        res = cfg.search.resources
        task = ray.remote(T.train_shared_lm).options(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)
        which = "the one all trials share" if settings == [{}] else \
            f"one per value of {', '.join(settings[0])} ({len(settings)})"
        print(f"language model: preparing {which} (trained once, before the trials)", flush=True)
        recipes = [to_dict(build_recipe(cfg.recipe, values)) for values in settings]
        infos = ray.get([task.remote(r, run) for r in recipes])
    for values, info in zip(settings, infos):
        shown = " ".join(f"{k}={v}" for k, v in values.items())
        print(f"language model{' ' + shown if shown else ''}: {'trained' if info['trained'] else 'found in the cache'}"
              f" ({info['lm_key']}, {info['seconds']:.0f} s of training)", flush=True)
    return infos


def _shared_lm_in_cache(recipe: RecipeConfig, corpus: Corpus, run: dict[str, Any]) -> dict[str, Any] | None:
    """``train_shared_lm``'s answer for an LM the cache already holds, found on the driver; else None."""
    from ulmfit_core import stages

    try:
        found = stages.find_lm(recipe, corpus, Path(run["lm_root"]), models_dir=run["models_dir"])
    except (OSError, ValueError) as e:  # e.g. files only the workers can read: their task decides
        logger.info("shared LM: not looked up on the driver (%s); a task checks the cache", e)
        return None
    if found is None:
        return None
    return {"lm_key": found.lm_dir.name, "trained": False, "seconds": stages.lm_training_seconds(found.lm_dir),
            "node_id": None, "finished_at": time.time()}


def run_search(cfg: SearchConfig, *, address: str | None = None,
               callbacks: Iterable[tune.Callback] = (), log: LibraryLog | None = None) -> SearchOutcome:
    """Validate, check MLflow, prepare the data, start Ray, train the shared LM, run every trial,
    export the best config. Blocks. ``log``: where the libraries' messages go (moved into the search
    folder once it exists)."""
    cfg.validate()  # an invalid space fails here, before Ray or MLflow start
    for note in cfg.notes:
        print(note, flush=True)
    print(check_language_model_start(cfg), flush=True)
    tracking.check_reachable(cfg.mlflow.tracking_uri)
    tracking.check_experiment(cfg.mlflow.tracking_uri, cfg.experiment)  # deleted, or left behind by a moved store
    corpus = None
    if address is None:  # local: a data error before Ray starts
        corpus = prepare_data_first(cfg)
    # Before this search's parent run exists: an experiment named here means its newest *earlier* search.
    earlier = warm_start.read_earlier_searches(cfg)
    init_ray(cfg, address, log)  # a missing cluster or a trial larger than it also fails before any record exists
    if address is not None:  # a cluster: the token cache is written only once its storage is known shared
        corpus = prepare_data_first(cfg)
    shared_lm = train_shared_lm_first(cfg, corpus)
    search_dir = store.new_search_dir(cfg)
    search_dir.mkdir(parents=True)
    if log is not None:
        log.move_into(search_dir)
    experiment_id = tracking.ensure_experiment(cfg.mlflow.tracking_uri, cfg.experiment,
                                               cfg.mlflow.artifact_location)
    parent = tracking.start_parent(cfg.mlflow.tracking_uri, experiment_id, search_dir.name, search_dir,
                                   cfg.to_dict(), cfg.space.to_dict())
    meta = {"config": cfg.to_dict(), "tracking_uri": cfg.mlflow.tracking_uri, "experiment": cfg.experiment,
            "experiment_id": experiment_id, "parent_run_id": parent, "created": time.time(), "shared_lm": shared_lm}
    store.write_search_json(search_dir, meta)
    if earlier:
        print(f"warm start from {warm_start.describe(earlier)}", flush=True)
        tracking.tag_parent(cfg.mlflow.tracking_uri, parent, {"warm_start_from": warm_start.describe(earlier)})
    mlflow_cb = tracking.MLflowTrialCallback(cfg.mlflow.tracking_uri, experiment_id, parent,
                                             cfg.mlflow.log_checkpoints)
    tuner = build_tuner(cfg, search_dir, _callbacks(mlflow_cb, callbacks), earlier, mlflow_cb.run_id_of)
    return _fit_and_finish(tuner, cfg, search_dir, meta)


def _callbacks(mlflow_cb: tracking.MLflowTrialCallback, extra: Iterable[tune.Callback]) -> list[tune.Callback]:
    # Tune's own per-trial params.json / result.json / progress.csv (off with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS,
    # which also drops the TensorBoard logger): the leaderboard, export and a resume read them (search/records.py).
    loggers = [JsonLoggerCallback(), CSVLoggerCallback()]
    return [mlflow_cb, CheckpointPruner(delay_s=_state_save_period() + 2.0), *loggers, *extra]


def resume_search(search_dir: str | Path, *, address: str | None = None,
                  callbacks: Iterable[tune.Callback] = (), log: LibraryLog | None = None) -> SearchOutcome:
    """Continue a search that stopped (Ctrl-C, a driver that died): ended trials stay; unfinished and
    errored ones run again from their newest checkpoints, their MLflow runs reopened (never duplicated);
    the rest of the budget is asked. Reads only the project's own files (see the module docstring)."""
    search_dir = Path(search_dir).expanduser().resolve()
    cfg, meta = store.read_search_json(search_dir)
    store.open_study_checked(search_dir, required=True)  # each piece checked before anything is written
    tracking.check_search_store(meta["tracking_uri"], meta["parent_run_id"], search_dir)
    if log is not None:
        log.move_into(search_dir)
    mlflow_cb = tracking.MLflowTrialCallback(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                                             cfg.mlflow.log_checkpoints)
    tuner = build_resumed_tuner(cfg, search_dir, _callbacks(mlflow_cb, callbacks), mlflow_cb.run_id_of)
    if tuner is None:
        print("resume: every trial of the search had ended; its leaderboard and best.yaml are written again",
              flush=True)
    else:
        init_ray(cfg, address, log)
    tracking.reopen_parent(meta["tracking_uri"], meta["parent_run_id"])
    return _fit_and_finish(tuner, cfg, search_dir, meta)


def _fit_and_finish(tuner: tune.Tuner | None, cfg: SearchConfig, search_dir: Path, meta: dict) -> SearchOutcome:
    """Run the trials and write the search's records; a full or read-only storage, in the driver or in trials
    that errored on it, ends the search with one line naming the folder and the resume command."""
    try:
        result = _fit_and_record(tuner, cfg, search_dir, meta)
    except Exception as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        if ray.is_initialized():  # now, while its late messages (trials cut off) still go to the search log
            ray.shutdown()
        raise storage_error(portable.shown(search_dir), problem) from None
    problem = next(filter(None, (storage_problem(row.get("error")) for row in result.leaderboard)), None)
    if problem is not None:  # trials failed writing their checkpoints: a resume runs them again
        raise storage_error(portable.shown(search_dir), problem)
    return result


def _fit_and_record(tuner: tune.Tuner | None, cfg: SearchConfig, search_dir: Path, meta: dict) -> SearchOutcome:
    uri, parent = meta["tracking_uri"], meta["parent_run_id"]
    status, errors_now = "failed", {}
    try:
        if tuner is not None:  # None: a resume with nothing left to run
            # This run's errors as Tune holds them in memory: its error.txt copies can lag (or fail, disk full).
            errors_now = {int(r.config[T.OPTUNA_NUMBER]): outcome.error_line(r.error) for r in tuner.fit()
                          if r.error is not None and (r.config or {}).get(T.OPTUNA_NUMBER) is not None}
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if status != "finished":
            try:
                tracking.finish_parent(uri, parent, status, [], {}, None)
            except Exception as e:  # noqa: BLE001
                logger.warning("MLflow: could not mark the search %s: %s", status, e)
    # The search's own records first (leaderboard, best.yaml, plots): an MLflow outage now loses none of them.
    trials = records.read_trials(search_dir, cfg=cfg)
    for t in trials:
        if t.status == outcome.ERRORED and t.number in errors_now:
            t.error = errors_now[t.number]
    runs = _trial_runs(uri, meta["experiment_id"], parent)
    board = leaderboard(trials, cfg, runs)
    # Ctrl-C makes Tune return normally, with trials left unfinished.
    # A trial that failed on a full disk is unfinished too: a resume runs it again.
    unfinished = any(row["status"] == outcome.INTERRUPTED or storage_problem(row.get("error")) for row in board)
    status = "interrupted" if unfinished or len(board) < cfg.search.num_samples else "finished"
    store.write_leaderboard(search_dir, board)
    best_yaml = None
    errors = [f"trial {t.number}: {t.error}" for t in trials if t.error]
    if outcome.best_completed(board, cfg.search.metric, cfg.search.mode) is not None:
        from search.export import export_best

        best_yaml = export_best(search_dir)
    made = search_plots(cfg, search_dir, board)
    summary = summarize(board, cfg, meta.get("shared_lm"))
    failures = tracking.write_failures(parent)
    summary["tracking_write_failures"] = len(failures)
    try:
        folders = {t.number: t.folders for t in trials}
        tracking.finish_ended_runs(uri, runs, board, lambda number: T.trial_history(folders.get(number, [])))
        tracking.finish_parent(uri, parent, status, board, summary, best_yaml, made)
    except Exception as e:  # noqa: BLE001 (the store is down: what MLflow misses is said, nothing is lost)
        failures.append(f"the search's parent run at the end: {type(e).__name__}: {e}")
    return SearchOutcome(search_dir, board, best_yaml, summary, uri, meta["experiment"], parent, errors, status,
                         experiment_id=meta["experiment_id"], tracking_failures=failures)


def search_plots(cfg: SearchConfig, search_dir: Path, board: list[dict[str, Any]]) -> list[Path]:
    """The search's plots under ``search_dir/plots``: Optuna's optimization history, parallel coordinates
    and parameter importances, and how many trials reached each of the rungs ASHA decided at. A plot that
    cannot be made (too few trials) is skipped with a logged reason; a failure never fails the search."""
    out = search_dir / "plots"
    try:
        made = [p for p in plots.plot_study(store.load_study(search_dir), out).values() if p is not None]
        rungs = asha_rungs(cfg)
        if rungs and board:
            made.append(plots.plot_asha_survival([int(r["epochs"] or 0) for r in board], rungs,
                                                 out / "asha_survival.png"))
    except Exception as e:  # noqa: BLE001 (plots are a view of the results, never a reason to fail)
        logger.warning("search plots skipped: %s: %s", type(e).__name__, e)
        return []
    return made


def _trial_runs(uri: str, experiment_id: str, parent: str) -> dict[str, Any]:
    """Each trial's MLflow child run by its Optuna number, for the leaderboard; none when the store does not answer."""
    try:
        return {r.data.tags.get(tracking.OPTUNA_TRIAL_TAG): r for r in tracking.child_runs(uri, experiment_id, parent)}
    except Exception as e:  # noqa: BLE001 (the leaderboard is written either way, without run ids)
        logger.warning("MLflow: the trials' runs could not be read for the leaderboard: %s", e)
        return {}


def leaderboard(trials: Sequence[records.TrialRecord], cfg: SearchConfig,
                runs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per trial, best first (``outcome.ranked``): completed trials by their final metric, then
    stopped, interrupted and errored ones."""
    s, runs = cfg.search, runs or {}
    rows = []
    for t in trials:
        m, run = t.result, runs.get(str(t.number))
        row = {"trial": t.number, "trial_id": t.trial_id, "status": t.status,
               "epochs": m.get(T.EPOCH), s.metric: m.get(s.metric)}
        for k in METRICS:
            row.setdefault(k, m.get(k))
        sampled = T.sampled_values(t.config)
        row.update({k: sampled[k] for k in cfg.space.keys if k in sampled})  # in the space's order
        row.update({"lm_trained": m.get(T.LM_TRAINED), "lm_seconds": m.get(T.LM_SECONDS),
                    T.LM_SAVED: m.get(T.LM_SAVED), "lm_key": m.get(T.LM_KEY), "node_ip": m.get("node_ip"),
                    "mlflow_run_id": run.info.run_id if run else None, "error": t.error})
        if run is not None and run.data.tags.get("lm_trained") == "true":
            row["lm_trained"] = 1.0  # trained in an earlier run of this trial (before a resume)
        rows.append(row)
    return outcome.ranked(rows, s.metric, s.mode)


def summarize(board: list[dict[str, Any]], cfg: SearchConfig,
              shared_lm: list[dict[str, Any]] | dict[str, Any] | None = None) -> dict[str, float]:
    """Counts, the best value, and the LM compute that sharing saved: for each trial that reused an
    LM, the seconds that LM's training took (``stages.lm_training_seconds``). ``shared_lm``: the LM
    trained before the trials (``train_shared_lm_first``), counted as a training when it was one."""
    trained = {row["lm_key"]: float(row.get("lm_seconds") or 0.0) for row in board
               if row.get("lm_trained") and row.get("lm_key")}
    for info in [shared_lm] if isinstance(shared_lm, dict) else shared_lm or []:  # a dict: one LM (search.json)
        if info.get("trained"):
            trained[info["lm_key"]] = float(info["seconds"])
    count = {status: sum(r["status"] == status for r in board) for status in outcome.RANK}
    out = {"trials": len(board), "trials_completed": count[outcome.COMPLETED],
           "trials_stopped_by_asha": count[outcome.STOPPED], "trials_errored": count[outcome.ERRORED],
           "trials_interrupted": count[outcome.INTERRUPTED],
           "lm_trainings": len(trained), "lm_seconds_trained": sum(trained.values()),
           "lm_seconds_saved": sum(float(r.get(T.LM_SAVED) or 0.0) for r in board)}
    best = outcome.best_completed(board, cfg.search.metric, cfg.search.mode)
    if best is not None:
        out[f"best_{cfg.search.metric}"] = best[cfg.search.metric]
    return out


def format_leaderboard(board: list[dict[str, Any]], metric: str, limit: int = 20) -> str:
    """A plain-text table of the leaderboard (best first)."""
    shown = [r for r in board[:limit]]
    if not shown:
        return "(no trials)"
    params = [k for k in shown[0] if "." in k]
    cols = ["trial", "trial_id", "status", "epochs", metric, *params]
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mlflow_ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {tracking_uri}"
