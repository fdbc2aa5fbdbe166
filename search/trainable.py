"""The Ray Tune function trainable: a few lines around ``ulmfit_core.stages``.

This is the only module that calls Ray's reporting API (``tune.report`` / ``tune.get_checkpoint``),
which has changed four times across Ray releases: keep it here.

A trial's config (built by ``tuner.py``) holds the base recipe under :data:`RECIPE`, run settings
(shared LM and corpus caches, data dir) under :data:`RUN`, and the sampled values as flat dotted keys
(``"classifier.lr": 0.01``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from search.outcome import EPOCH, EPOCHS_TOTAL, stopped_early  # noqa: F401  (a trial's clock)
from ulmfit_core import memory, zoo
from ulmfit_core.config import build_recipe
from ulmfit_core.train import ResumeMismatch

if TYPE_CHECKING:
    from search.settings import SearchConfig

logger = logging.getLogger(__name__)

RECIPE = "recipe"  # trial config key: the base recipe (nested dict)
RUN = "run"  # trial config key: {"lm_root", "cache_dir", "data_dir", "models_dir", "threads"}
OPTUNA_NUMBER = "optuna_trial"  # trial config key: the trial's number in the search's Optuna study
#: Trial config key of a trial run again by a resumed search: the folders (in the search folder) of its
#: earlier runs, where its newest checkpoint is.
EARLIER_RUNS = "earlier_runs"

#: Keys every report carries besides ``epoch`` (and ``epochs_total``: search/outcome.py) and ``METRICS``.
LM_TRAINED = "lm_trained"  # 1.0: this trial trained its LM; 0.0: reused one (or none: from_scratch)
LM_SECONDS = "lm_seconds"  # seconds this trial spent in ensure_lm (training, or waiting for and loading one)
LM_SAVED = "lm_seconds_saved"  # when the LM was reused: the seconds its training took (compute saved)
LM_KEY = "lm_key"
NODE_ID = "node_id"
RESUMED_FROM = "resumed_from_epoch"  # epoch of the checkpoint this run of the trial started from (0: fresh)
#: First report after a resume only: the checkpoint's per-epoch metrics (JSON), so the tracker can log any
#: epoch it had not written when the driver died (Tune's saved state can be ahead of MLflow).
EARLIER_EPOCHS = "epochs_before_resume"


def sampled_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searched values of a trial config (everything but the base recipe, the run settings, the
    trial's Optuna number and its earlier runs)."""
    return {k: v for k, v in config.items() if k not in (RECIPE, RUN, OPTUNA_NUMBER, EARLIER_RUNS)}


def param_space(cfg: SearchConfig, search_dir: Path | None = None) -> dict[str, Any]:
    """What every trial's config holds besides its sampled values: the base recipe and the run settings."""
    storage = Path(cfg.search.storage).expanduser().resolve()
    return {
        RECIPE: cfg.recipe,
        RUN: {
            # Where each trial's checkpoints land (<search_dir>/trial_<id>): a resumed trial looks there too.
            "search_dir": str(search_dir) if search_dir is not None else None,
            "lm_root": str(Path(cfg.search.lm_root).expanduser().resolve() if cfg.search.lm_root
                           else storage / "_lm_cache"),
            "cache_dir": str(Path(cfg.search.cache_dir).expanduser().resolve() if cfg.search.cache_dir
                             else storage / "_corpus_cache"),
            # Resolved here: a trial runs in its own working directory (on a cluster, on another node).
            "data_dir": str(Path(cfg.search.data_dir or os.environ.get("ULMFIT_DATA") or "data")
                            .expanduser().resolve()),
            "models_dir": str(models_dir(cfg)),
            "threads": cfg.search.resources.threads,
        },
    }


def models_dir(cfg: SearchConfig) -> Path:
    """Where trials find zoo models: resolved on the driver (a trial runs in its own working directory)."""
    return Path(cfg.search.models_dir or zoo.default_models_dir()).expanduser().resolve()


def train_trial(config: dict[str, Any]) -> None:
    """One trial: recipe -> corpus -> shared LM -> classifier, reporting every classifier epoch."""
    import ray
    import torch

    from ulmfit_core import stages
    from ulmfit_core.corpus import prepare_corpus

    run = config[RUN]
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch may have read it before a reused actor
    # switched trials, so set the thread count explicitly: trials x threads never exceed the cores.
    torch.set_num_threads(int(run["threads"]))
    cfg = build_recipe(config[RECIPE], sampled_values(config))
    memory.for_training_on(cfg.device)  # a trial's process trains: reuse freed memory (ulmfit_core/memory.py)
    corpus = prepare_corpus(cfg, data_dir=run.get("data_dir"), cache_dir=run.get("cache_dir"),
                            models_dir=run.get("models_dir"))
    extra: dict[str, Any] = {EPOCHS_TOTAL: cfg.classifier.epochs, LM_TRAINED: 0.0, LM_SECONDS: 0.0,
                             LM_SAVED: 0.0, NODE_ID: ray.get_runtime_context().get_node_id()}
    lm_dir = None
    if not cfg.classifier.from_scratch:
        t0 = time.perf_counter()
        lm = stages.ensure_lm(cfg, corpus, Path(run["lm_root"]), models_dir=run.get("models_dir"))
        lm_dir = lm.lm_dir
        extra.update({LM_KEY: lm_dir.name, LM_TRAINED: float(lm.trained), LM_SECONDS: time.perf_counter() - t0,
                      LM_SAVED: 0.0 if lm.trained else stages.lm_training_seconds(lm_dir)})

    with tempfile.TemporaryDirectory(prefix="ulmfit-trial-") as tmp:
        search_dir = Path(run["search_dir"]) if run.get("search_dir") else None
        own_dirs = [search_dir / name for name in [*config.get(EARLIER_RUNS, []),
                                                   trial_dirname(tune.get_context().get_trial_id())]] \
            if search_dir is not None else []
        resume_from, meta = _restore(Path(tmp) / "resume", own_dirs)
        extra[RESUMED_FROM] = int(meta.get(EPOCH) or 0)
        earlier = _checkpoint_history(resume_from) if resume_from is not None else None
        if meta.get(LM_TRAINED):  # an earlier attempt of this trial trained the LM it now reuses
            extra.update({LM_TRAINED: 1.0, LM_SECONDS: meta.get(LM_SECONDS, 0.0), LM_SAVED: 0.0})
        lm_facts = {k: extra[k] for k in (LM_TRAINED, LM_SECONDS)}
        if resume_from is not None and extra[RESUMED_FROM] >= cfg.classifier.epochs:
            # Finished before the driver died, but the experiment state saved before that did not
            # know: report the final result again (no training happens), so Tune sees it complete.
            _report({**meta["metrics"], **extra, **_earlier(earlier)}, None, {})
            return

        def report(metrics: Mapping[str, Any], checkpoint_dir: Path | None) -> None:
            nonlocal earlier
            metrics = {**metrics, **extra, **_earlier(earlier)}
            earlier = None  # the first report only
            _report(metrics, checkpoint_dir, {EPOCH: metrics.get(EPOCH), "metrics": _plain(metrics), **lm_facts})

        try:
            stages.train_classifier(cfg, corpus, lm_dir, Path(tmp) / "model", report=report, resume_from=resume_from)
        except ResumeMismatch as e:  # a checkpoint of other settings (e.g. an older format): start the trial over
            logger.warning("trial %s starts fresh: %s", tune.get_context().get_trial_id(), e)
            extra[RESUMED_FROM] = 0
            stages.train_classifier(cfg, corpus, lm_dir, Path(tmp) / "fresh", report=report, resume=False)


def train_shared_lm(recipe: dict[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """The language model every trial of a ``search_lm: false`` search shares, trained (or found in the
    cache) before any trial starts: run as a Ray task with a trial's resources (see
    ``tuner.train_shared_lm_first``), so no trial ever waits for it holding a GPU."""
    import ray
    import torch

    from ulmfit_core import stages
    from ulmfit_core.corpus import prepare_corpus

    torch.set_num_threads(int(run["threads"]))
    cfg = build_recipe(recipe)
    memory.for_training_on(cfg.device)
    corpus = prepare_corpus(cfg, data_dir=run.get("data_dir"), cache_dir=run.get("cache_dir"),
                            models_dir=run.get("models_dir"))
    lm = stages.ensure_lm(cfg, corpus, Path(run["lm_root"]), models_dir=run.get("models_dir"))
    seconds = lm.seconds if lm.trained else stages.lm_training_seconds(lm.lm_dir)
    return {"lm_key": lm.lm_dir.name, "trained": lm.trained, "seconds": seconds,
            "node_id": ray.get_runtime_context().get_node_id(), "finished_at": time.time()}


def _checkpoint_history(checkpoint_dir: Path) -> list[dict[str, Any]] | None:
    """The per-epoch metrics a classifier checkpoint folder recorded (None when it has none)."""
    from ulmfit_core import artifacts

    try:
        return list(artifacts.read_json(checkpoint_dir / artifacts.TRAIN_LOG_FILE)["history"])
    except (artifacts.ArtifactError, KeyError, TypeError):
        return None


def trial_history(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The per-epoch metrics of a trial's newest checkpoint among its runs' folders (``[]`` without one): every
    epoch it reported, read back when the driver died before MLflow got them (``tracking.finish_ended_runs``)."""
    newest: tuple[int, list[dict[str, Any]]] = (0, [])
    for folder in folders:
        for checkpoint in Path(folder).glob("checkpoint_*"):
            history = _checkpoint_history(checkpoint) or []
            last = max((int(h.get(EPOCH) or 0) for h in history), default=0)
            if last > newest[0]:
                newest = (last, history)
    return newest[1]


def _earlier(history: list[dict[str, Any]] | None) -> dict[str, str]:
    return {EARLIER_EPOCHS: json.dumps([_plain(h) for h in history])} if history else {}


def _plain(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a report (checkpoint metadata is JSON)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None, meta: dict[str, Any]) -> None:
    """Ray's reporting call; ``meta`` travels with the checkpoint. The checkpoint is copied to the
    run's storage before this returns, so the pipeline may overwrite ``checkpoint_dir`` next epoch."""
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        checkpoint.set_metadata(meta)
    tune.report(metrics, checkpoint=checkpoint)


def trial_dirname(trial_id: str) -> str:
    """A trial's folder in the search folder (Tune's ``trial_dirname_creator``)."""
    return f"trial_{trial_id}"


def _restore(into: Path, own_dirs: list[Path]) -> tuple[Path | None, dict[str, Any]]:
    """The trial's last checkpoint copied to ``into``, and the metadata saved with it; ``(None, {})`` for a
    fresh start.

    Tune hands back the checkpoint of an earlier attempt in this search's run (``FailureConfig`` retries).
    A trial a resumed search runs again finds its checkpoints in the folders of its earlier runs
    (``own_dirs``, with its own): every checkpoint a trial reported is there, and the newest complete one wins."""
    checkpoint = tune.get_checkpoint()
    meta = checkpoint.get_metadata() if checkpoint is not None else {}
    newer, newest_epoch = None, int(meta.get(EPOCH) or 0)
    for folder in own_dirs:
        found = newest_checkpoint(folder, after_epoch=newest_epoch)
        if found is not None:
            newer, newest_epoch = found, int(found[1].get(EPOCH) or 0)
    if newer is not None:
        path, meta = newer
        logger.info("trial resumes from %s (epoch %s)", path, meta.get(EPOCH))
        shutil.copytree(path, into)
        return into, meta
    if checkpoint is None:
        return None, {}
    with checkpoint.as_directory() as d:
        shutil.copytree(d, into)
    return into, meta


def newest_checkpoint(trial_dir: Path, after_epoch: int = 0) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint folder in ``trial_dir`` of the latest epoch past ``after_epoch`` whose checkpoint
    loads (one cut short by a kill does not), and its metadata; None when there is none."""
    from ulmfit_core.train import CHECKPOINT_FILE, load_checkpoint

    found = []
    for folder in Path(trial_dir).glob("checkpoint_*"):
        try:
            meta = json.loads((folder / ".metadata.json").read_text())  # Ray's checkpoint metadata: plain JSON
            epoch = int(meta.get(EPOCH) or 0)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if epoch > after_epoch:
            found.append((epoch, folder, meta))
    for _, folder, meta in sorted(found, key=lambda f: f[0], reverse=True):
        try:
            load_checkpoint(folder / CHECKPOINT_FILE)
        except Exception as e:  # noqa: BLE001  (truncated or unreadable: try the one before)
            logger.warning("checkpoint %s does not load (%s); trying an earlier one", folder, e)
            continue
        return folder, meta
    return None
