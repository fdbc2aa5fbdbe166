"""Best-config export (``best.yaml``), its reader, and retraining it.

``best.yaml`` has three sections::

    record:   # the two below as one JSON string with its sha256: retrain checks the file against it
      sha256: ...
      exported: '{"recipe": ..., "result": ...}'
    recipe:   # the complete resolved RecipeConfig of the best trial: every value, the data paths
      data: {...}
      ...
    result:   # where it came from and what it reached
      metric: valid_accuracy
      mode: max
      value: 0.874          # the trial's final-epoch value: what `retrain` should reproduce
      metrics: {...}        # all final-epoch metrics of that trial
      trial_id: 3c9f1_00004
      mlflow_run_id: ...
      ...

``retrain`` refuses a file that differs from its record (a key missing, a value edited or cut short)
unless ``--allow-edits`` is given (search/best_record.py).

The best trial is the best *completed* one (trained all its epochs): a trial ASHA stopped after one
epoch has no full-length result that a retrain (which trains every epoch) could reproduce.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from search import best_record, outcome, portable, records, store, store_location, tracking
from search import trainable as T
from search.console_log import LibraryLog
from search.errors import SearchConfigError
from ulmfit_core import artifacts
from ulmfit_core.config import ConfigError, RecipeConfig, build_recipe, parse_overrides, read_yaml, to_dict
from ulmfit_core.inference import classifier_dirs
from ulmfit_core.metrics import METRICS
from ulmfit_core.stages import ReportFn

logger = logging.getLogger(__name__)

def export_best(search: str | Path | None = None, *, experiment: str | None = None,
                tracking_uri: str | None = None, out: str | Path | None = None) -> Path:
    """Write ``best.yaml`` for a search folder (from Ray's records) or an MLflow experiment (its
    newest search). Returns the path written: ``out``, else ``<search>/best.yaml``, else ``./best-<experiment>.yaml``."""
    if (search is None) == (experiment is None):
        raise ValueError("give exactly one of a search folder or an MLflow experiment name")
    if search is not None:
        doc = _best_from_search_dir(Path(search).expanduser().resolve())
        path = Path(out) if out else Path(search) / store.BEST_YAML
    else:
        uri = tracking_uri or "sqlite:///mlflow.db"
        tracking.check_reachable(uri)
        doc = _best_from_mlflow(uri, experiment)
        path = Path(out) if out else Path(f"best-{experiment}.yaml")
    return write_best(doc, path)


_NOTHING_TO_EXPORT = ("no trial completed all its epochs, so there is no best configuration to export; continue "
                      "the search (`python launch.py search --resume {dir}`) or start one with more trials")


def _best_from_search_dir(search_dir: Path) -> dict[str, Any]:
    cfg, meta = store.read_search_json(search_dir)
    s = cfg.search
    rows = [{"status": r.status, s.metric: r.result.get(s.metric), "record": r}
            for r in records.read_trials(search_dir, store.open_study_checked(search_dir), cfg)]
    found = outcome.best_completed(rows, s.metric, s.mode)
    if found is None:
        raise SearchConfigError(f"{search_dir}: {_NOTHING_TO_EXPORT.format(dir=search_dir)}")
    best: records.TrialRecord = found["record"]
    sampled = T.sampled_values(best.config)
    # The trial ran with absolute paths of the search's machine; best.yaml keeps them relative to that
    # project, so it retrains wherever the project (or this folder) is now.
    ran_in = Path(meta.get("recorded_project_root") or meta["project_root"])
    recipe = portable.recipe_paths(to_dict(build_recipe(best.config[T.RECIPE], sampled)),
                                   lambda v: portable.relative(v, ran_in))
    run_id = None
    try:
        run_id = tracking.run_id_of_trial(meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"],
                                          best.number)
    except Exception as e:  # noqa: BLE001 (the config is exported either way)
        logger.warning("MLflow lookup of trial %s failed: %s", best.number, e)
    last = best.result
    return {"recipe": recipe, "result": {
        "metric": s.metric, "mode": s.mode, "value": float(last[s.metric]),
        "metrics": {k: float(last[k]) for k in sorted(last) if k in METRICS},
        "epochs": int(last.get(T.EPOCH, 0)), "trial_id": best.trial_id, "sampled": sampled,
        "mlflow_run_id": run_id, "mlflow_parent_run_id": meta["parent_run_id"],
        "mlflow_experiment": meta["experiment"], "tracking_uri": meta["tracking_uri"],
        "search_dir": str(search_dir), "threads": best.config[T.RUN]["threads"],
        **{k: portable.relative(best.config[T.RUN].get(k), ran_in) for k in _RUN_FOLDERS}},
        "project_root": meta["project_root"]}


#: Folders of the search's run settings that a retrain reuses when they are there.
_RUN_FOLDERS = ("data_dir", "cache_dir", "models_dir")


def _best_from_mlflow(uri: str, experiment: str) -> dict[str, Any]:
    found = tracking.best_trial_run(uri, experiment)
    extra: dict[str, Any] = {}
    recipe = found["recipe"]
    search_dir = found.get("search_dir")
    if search_dir and (Path(search_dir) / store.SEARCH_JSON).exists():  # run settings a retrain reuses
        cfg, meta = store.read_search_json(search_dir)
        extra = {"threads": cfg.search.resources.threads, "data_dir": cfg.search.data_dir}
        ran_in = Path(meta.get("recorded_project_root") or meta["project_root"])
        recipe = portable.recipe_paths(recipe, lambda v: portable.relative(v, ran_in))
    return {"recipe": recipe, "result": {
        "metric": found["metric"], "mode": found["mode"], "value": found["value"], "trial_id": found["trial_id"],
        "mlflow_run_id": found["run_id"], "mlflow_parent_run_id": found["parent_run_id"],
        "mlflow_experiment": experiment, "tracking_uri": uri, "search_dir": search_dir, **extra}}


def write_best(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``best.yaml``. The locations in ``result`` (the search folder, a SQLite store, the search's
    folders) are written relative to the project (``doc["project_root"]``, default the current directory),
    and the recipe's paths are already: the file works wherever the project is copied."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(doc)
    root = Path(doc.pop("project_root", None) or Path.cwd()).resolve()
    r = dict(doc["result"])
    r["search_dir"] = portable.relative(r.get("search_dir"), root)
    r["tracking_uri"] = portable.relative_uri(r.get("tracking_uri"), root)
    for key in _RUN_FOLDERS:
        r[key] = portable.relative(r.get(key), root)
    doc["result"] = r
    doc = {best_record.RECORD: best_record.make_record(doc), **doc}
    header = (f"# Best trial {r.get('trial_id')} of {r.get('search_dir') or r.get('mlflow_experiment')}: "
              f"{r['metric']} = {r['value']}\n"
              f"# MLflow run {r.get('mlflow_run_id')} at {r.get('tracking_uri')}\n"
              f"# Retrain: python launch.py retrain --config {portable.shown(path)}\n"
              f"# record: is what the trial ran; retrain refuses a recipe that differs from it unless given "
              f"--allow-edits\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def read_best(path: str | Path, overrides: Sequence[str] = (), *,
              allow_edits: bool = False) -> tuple[RecipeConfig, dict[str, Any]]:
    """``(recipe, result metadata)`` from a ``best.yaml`` with ``--set``-style ``overrides``; a plain
    recipe YAML gives empty metadata. A ``best.yaml`` missing recipe sections is refused (a retrain on
    defaults would silently be another model), and so is one that differs from its record unless
    ``allow_edits``; ``meta["check"]`` holds what the check found (:class:`best_record.Check`)."""
    values = read_yaml(path)
    if "recipe" in values or best_record.RECORD in values:
        recipe, meta = values.get("recipe"), dict(values.get("result") or {})
        missing = [k for k in ("data", "text", "model", "lm", "classifier")
                   if not isinstance(recipe, dict) or k not in recipe]
        if missing:
            raise ConfigError(f"{path}: recipe has no {', '.join(missing)} section(s); an exported best.yaml holds "
                              "the complete recipe: export it again (`python launch.py export --search DIR`)")
        meta["check"] = best_record.check(values)
        if not allow_edits:
            best_record.require_unedited(path, meta["check"])
        # Relative paths are the project's: found from where the file sits in its search folder, else the
        # current directory (portable.project_root).
        root = portable.project_root(Path(path).parent, meta.get("search_dir"))
        recipe = portable.recipe_paths(recipe, lambda v: portable.absolute(v, root))
        meta.update({k: portable.absolute(meta.get(k), root) for k in (*_RUN_FOLDERS, "search_dir")},
                    tracking_uri=portable.absolute_uri(meta.get("tracking_uri"), root), project_root=str(root))
    else:
        recipe, meta = values, {}
    try:
        return build_recipe(recipe, parse_overrides(list(overrides))), meta
    except ConfigError as e:
        raise ConfigError(f"{path}: recipe.{e}") from None


def default_retrain_dir(best_yaml: str | Path, meta: Mapping[str, Any]) -> Path:
    """``runs/retrain/<experiment>-<trial>``: one folder per exported trial, so two searches' retrains
    never share (or resume) one folder."""
    experiment = meta.get("mlflow_experiment") or Path(best_yaml).stem
    trial = meta.get("trial_id") or "config"
    return Path("runs") / "retrain" / f"{experiment}-{trial}"


def _local_or_none(path: str | None) -> str | None:
    """A folder recorded on the search's machine, if it exists here (never created: best.yaml is portable)."""
    return path if path and Path(path).exists() else None


#: Where a retrain logs when neither --tracking-uri nor the search's store applies: this folder's store.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def retrain_tracking_uri(tracking_uri: str | None, meta: Mapping[str, Any]) -> tuple[str, str | None]:
    """The store a retrain logs to, and a line saying which and why when it is not simply the search's.

    ``--tracking-uri`` when given; else the search's store where the project is now (``read_best`` made
    a SQLite path relative to the project absolute against it, so a copied project logs into its own copy,
    never into the original); else, when the search's SQLite file is not on this machine, this folder's
    ``sqlite:///mlflow.db``. Never another store silently."""
    recorded = meta.get("tracking_uri")
    here = portable.absolute_uri(DEFAULT_TRACKING_URI, Path.cwd())
    if tracking_uri:
        note = None if not recorded or recorded == tracking_uri else \
            f"MLflow: logging to {tracking_uri} (--tracking-uri); the search recorded {recorded}"
        return tracking_uri, note
    if not recorded:
        return here, None
    db = store_location.sqlite_file(recorded)
    if db is not None and not db.is_file():
        return here, (f"MLflow: the search's store {recorded} is not on this machine, so the retrain is logged to "
                      f"{here} (pass --tracking-uri to choose another)")
    return recorded, None


def retrain(best_yaml: str | Path, out_dir: str | Path | None = None, *, tracking_uri: str | None = None,
            model_name: str | None = None, data_dir: str | None = None, cache_dir: str | None = None,
            models_dir: str | None = None, overrides: Sequence[str] = (), directions: Sequence[str] | None = None,
            tokenizers: Sequence[str] | None = None, allow_edits: bool = False, report: ReportFn | None = None, lm_report: ReportFn | None = None,
            announce: Callable[[str], None] | None = None, log: LibraryLog | None = None) -> dict[str, Any]:
    """Retrain a ``best.yaml`` with ``stages.run_recipe`` (LM, classifier, test evaluation; with
    ``directions`` ``["fwd", "bwd"]`` both and their ensemble; ``tokenizers`` likewise), log the run to MLflow with its plots and
    register the model (the ensemble as one) as a pyfunc model. The tracking store and every direction's
    pretrained start are checked before any training; ``announce`` receives the lines saying which store
    and which starts are used. Returns the final metrics, the registered version, the output folder, and how
    far the retrained metric is from the one the search recorded.

    A ``best.yaml`` that differs from its record (what the trial ran) is refused unless ``allow_edits``;
    then the differences, and any ``overrides``, are tags of the retrain's MLflow run.

    The torch thread count is set to the trial's, because on CPU the reduction order (and so the
    last bits of every sum) depends on it.
    """
    import torch

    from ulmfit_core import memory, stages

    started = time.time()
    cfg, meta = read_best(best_yaml, overrides, allow_edits=allow_edits)
    check: best_record.Check | None = meta.pop("check", None)
    if check is not None and announce and (check.edits or not check.intact):
        announce(f"{best_yaml}: retraining it as it is (--allow-edits): "
                 + (f"{len(check.edits)} key(s) differ from the exported trial, logged as edit.* tags"
                    if check.intact else check.problem))
    run_tags = {**(check.tags() if check is not None else {}),
                **({"retrain_set": " ".join(overrides)} if overrides else {})}
    out = Path(out_dir) if out_dir else default_retrain_dir(best_yaml, meta)
    artifacts.check_writable_folder(out, "--out")
    uri, note = retrain_tracking_uri(tracking_uri, meta)
    if note and announce:
        announce(note)
    tracking.check_reachable(uri)
    experiment = meta.get("mlflow_experiment") or "ulmfit-retrain"
    tracking.check_experiment(uri, experiment)  # a moved store stops here, before any training
    if meta.get("threads"):
        torch.set_num_threads(int(meta["threads"]))
    memory.for_training_on(cfg.device)  # as a trial did: reuse freed memory (ulmfit_core/memory.py)
    metrics = stages.run_recipe(cfg, out, report=report, lm_report=lm_report,
                                data_dir=data_dir or _local_or_none(meta.get("data_dir")),
                                cache_dir=cache_dir or _local_or_none(meta.get("cache_dir")),
                                models_dir=models_dir or _local_or_none(meta.get("models_dir")),
                                directions=directions, announce=announce, tokenizers=tokenizers)
    members = classifier_dirs(out)
    ran = artifacts.read_json(out / artifacts.METRICS_FILE)
    ran_directions = "+".join(ran.get("members") or ran.get("directions") or [])
    version_tags = {"search_dir": portable.relative(meta.get("search_dir"), Path(meta.get("project_root") or ".")),
                    "trial_id": meta.get("trial_id"), "data_fingerprint": ran.get("data_fingerprint"),
                    "preset": cfg.model.preset, "directions": ran_directions,
                    "source_run_id": meta.get("mlflow_run_id")}
    quiet = log.capturing_prints() if log is not None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="ulmfit-retrain-plots-") as tmp, quiet:
        files = test_report_plots(out, Path(tmp))
        registered = tracking.log_retrain(
            uri, experiment, "mlartifacts", ran["config"], metrics, members, model_name or f"ulmfit-{experiment}",
            {"trial_id": meta.get("trial_id"), "run_id": meta.get("mlflow_run_id"), "config": str(best_yaml)}, files,
            started=started, parent_run_id=meta.get("mlflow_parent_run_id"), version_tags=version_tags, tags=run_tags,
            description=_version_description(meta, metrics, ran_directions, cfg.model.preset))
    if log is not None:
        log.move_into(out)
    result: dict[str, Any] = {"metrics": dict(metrics), **registered, "tracking_uri": uri, "out_dir": str(out)}
    metric = meta.get("metric")
    if metric and meta.get("value") is not None and metric in metrics:
        result["recorded"] = float(meta["value"])
        result["difference"] = abs(float(metrics[metric]) - float(meta["value"]))
    return result


def _version_description(meta: Mapping[str, Any], metrics: Mapping[str, Any], directions: str, preset: str) -> str:
    """What a registered version is, in the words the registry page shows: where it came from and its test scores."""
    what = f"ULMFiT classifier ({preset} AWD-LSTM, {directions or 'fwd'}" + (" ensemble)" if "+" in directions else ")")
    origin = (f"retrained from trial {meta['trial_id']} of search {Path(meta['search_dir']).name}"
              if meta.get("trial_id") and meta.get("search_dir") else "retrained from a recipe")
    if meta.get("metric") and meta.get("value") is not None:
        origin += f" (search {meta['metric']} {float(meta['value']):.4f})"
    prefix = "ensemble_test_" if "ensemble_test_accuracy" in metrics else "test_"
    scores = ", ".join(f"{k[len(prefix):]} {float(metrics[k]):.4f}" for k in sorted(metrics)
                       if k.startswith(prefix) and isinstance(metrics[k], (int, float)))
    return f"{what}, {origin}. Test set: {scores or 'none (the recipe has no data.test)'}."


def test_report_plots(run_dir: Path, out: Path) -> list[Path]:
    """From a run's ``test_report.json``: a confusion matrix, a per-class precision/recall/F1 chart and its
    numbers (JSON) for each direction and the ensemble."""
    from search import plots
    from ulmfit_core.stages import TEST_REPORT_FILE

    path = run_dir / TEST_REPORT_FILE
    if not path.is_file():
        return []
    files: list[Path] = []
    for name, rep in artifacts.read_json(path).items():
        labels, matrix = rep["labels"], rep["confusion_matrix"]
        files.append(plots.plot_confusion_matrix(labels, matrix, out / f"confusion_matrix_{name}.png",
                                                 title=f"test confusion matrix ({name})"))
        per_class = plots.classification_report(labels, matrix)
        files.append(plots.plot_classification_report(per_class, out / f"per_class_{name}.png"))
        files.append(artifacts.write_json(out / f"per_class_{name}.json", per_class))
    return files
