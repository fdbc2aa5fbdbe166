"""Command-line entry points of the search: ``search``, ``export``, ``retrain``.

``launch.py`` calls :func:`add_commands` on its subparsers; ``python -m search.cli`` runs them alone.
Each command's handler is stored as ``func`` on the parsed arguments and returns an exit status.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.console_log import LibraryLog
from ulmfit_core.console import USER_ERROR_EXIT, USER_ERRORS, OneLineParser, report_user_error


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``search``, ``export`` and ``retrain`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("search", help="run a hyperparameter search (Ray Tune + Optuna + ASHA + MLflow)",
                              description="Run a search from a search-config YAML (see configs/search_*.yaml), "
                                          "or continue one with --resume.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="search-config YAML: recipe, space, search, mlflow sections")
    src.add_argument("--resume", metavar="DIR", help="continue the search in DIR (its driver was stopped)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. search.num_samples=4 or recipe.classifier.epochs=2")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto, or HOST:6379) instead of a local Ray")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default from the config: sqlite:///mlflow.db)")
    p.add_argument("--storage", help="folder for Ray results, checkpoints and the shared LM cache")
    p.add_argument("--data-dir", help="where data.dataset names are looked up")
    p.add_argument("--models-dir", help="where zoo models named by lm.pretrained are (default: $ULMFIT_MODELS or ./models)")
    p.add_argument("--smoke-test", action="store_true",
                   help="2 trials, tiny model, 300 rows, 2 epochs, as the search NAME_smoke: the wiring works")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, MLflow's and Optuna's own messages here instead of in the search folder's search.log")
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("export", help="write best.yaml: the complete config of a search's best trial")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search", metavar="DIR", help="a search folder (runs/search/NAME-TIME)")
    src.add_argument("--experiment", metavar="NAME", help="an MLflow experiment (its newest search)")
    p.add_argument("--tracking-uri", default=None, help="with --experiment (default sqlite:///mlflow.db)")
    p.add_argument("--out", help="where to write (default DIR/best.yaml or ./best-NAME.yaml)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("retrain", help="retrain a best.yaml, evaluate on test, log and register in MLflow")
    p.add_argument("--config", required=True, help="a best.yaml written by `export` (or a plain recipe YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set device=cuda (repeatable)")
    p.add_argument("--allow-edits", action="store_true",
                   help="retrain a best.yaml that differs from the trial it was exported from (edited by hand); "
                        "the differences are logged as MLflow tags")
    p.add_argument("--directions", nargs="+", choices=["fwd", "bwd"], metavar="DIR",
                   help="fwd, bwd or both: both trains the forward and backward classifiers and registers their "
                        "averaged ensemble as one model (default: the exported direction)")
    p.add_argument("--tokenizers", nargs="+", choices=["words", "subwords"], metavar="TOK",
                   help="words, subwords or both: a classifier per tokenizer (and direction), registered as one "
                        "averaged ensemble (default: the exported text.tokenizer)")
    p.add_argument("--out", default=None,
                   help="model folder (default runs/retrain/<experiment>-<trial>: one per exported trial)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the search's)")
    p.add_argument("--model-name", default=None, help="registered model name (default ulmfit-<experiment>)")
    p.add_argument("--data-dir", default=None, help="where data.dataset names are looked up")
    p.add_argument("--cache-dir", default=None, help="token cache (default: the search's when on this machine)")
    p.add_argument("--models-dir", default=None, help="where zoo models named by lm.pretrained are")
    p.add_argument("--verbose", action="store_true",
                   help="show MLflow's own messages here instead of in the model folder's retrain.log")
    p.set_defaults(func=cmd_retrain)

    p = subparsers.add_parser("relocate-store", help="point a copied or moved SQLite MLflow store at its own artifacts",
                              description="After copying or moving a project with its MLflow store (mlflow.db and "
                                          "mlartifacts/), rewrite the store's artifact locations from the old folder "
                                          "to the store's new one, so new runs and the UI use the copy.")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="the store (default: sqlite:///mlflow.db)")
    p.add_argument("--old-folder", default=None,
                   help="the folder the store was in (default: recorded in each experiment this project created)")
    p.set_defaults(func=cmd_relocate_store)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the search commands report as one ``error:`` line and exit 2: the core's user errors, and a
    tracking store that cannot be used."""
    from search.tracking import TrackingError

    return (*USER_ERRORS, TrackingError)


def cmd_search(args: argparse.Namespace) -> int:
    from search.local_ray import preference_for

    with preference_for(joining_a_cluster=bool(args.address)):  # before Ray is imported (search/local_ray.py)
        return _search(args)


def _search(args: argparse.Namespace) -> int:
    from search import portable, store, tracking, tuner
    from search.settings import load_search_config
    from ulmfit_core.artifacts import check_writable_folder

    def work(log: LibraryLog) -> tuner.SearchOutcome:
        if args.resume:
            return tuner.resume_search(args.resume, address=args.address, log=log)
        overrides = list(args.set)
        for flag, key in ((args.tracking_uri, "mlflow.tracking_uri"), (args.storage, "search.storage"),
                          (args.data_dir, "search.data_dir"), (args.models_dir, "search.models_dir")):
            if flag:
                overrides.append(f"{key}={flag}")
        cfg = load_search_config(args.config, overrides, smoke_test=args.smoke_test)
        check_writable_folder(cfg.search.storage, "--storage (search.storage)")
        return tuner.run_search(cfg, address=args.address, log=log)

    log = LibraryLog(SEARCH_LOG, verbose=args.verbose)
    outcome = _logged(log, work)
    if outcome is None:
        return USER_ERROR_EXIT
    cfg, _ = store.read_search_json(outcome.search_dir)
    s = outcome.summary
    print()
    print(tuner.format_leaderboard(outcome.leaderboard, cfg.search.metric))
    print()
    print(f"trials: {s['trials']:.0f} (completed {s['trials_completed']:.0f}, stopped by ASHA "
          f"{s['trials_stopped_by_asha']:.0f}, errored {s['trials_errored']:.0f}"
          + (f", interrupted {s['trials_interrupted']:.0f})" if s["trials_interrupted"] else ")"))
    for row in outcome.leaderboard:  # why each errored trial failed, in its own words (not only "errored")
        if row.get("error"):
            print(f"  trial {row.get('trial')} ({row.get('trial_id')}) errored: {row['error']}")
    print(f"language models trained: {s['lm_trainings']:.0f} ({s['lm_seconds_trained']:.1f} s); "
          f"reuse saved {s['lm_seconds_saved']:.1f} s of LM training")
    print(f"search folder: {portable.shown(outcome.search_dir)}")
    if outcome.best_yaml:
        print(f"best config:   {portable.shown(outcome.best_yaml)}")
        print(f"retrain it:    python launch.py retrain --config {portable.shown(outcome.best_yaml)}")
    else:
        print("best config:   none (no trial completed all its epochs)")
    if outcome.tracking_failures:
        print(f"MLflow:        {len(outcome.tracking_failures)} writes failed for good, so MLflow misses them "
              f"(first: {outcome.tracking_failures[0]}); the leaderboard and best.yaml above are complete")
    if log.path is not None:
        print(f"log:           {portable.shown(log.path)} (Ray's, MLflow's and Optuna's messages; --verbose shows them here)")
    print(f"compare runs:  {tuner.mlflow_ui_command(outcome.tracking_uri)}")
    if outcome.experiment_id is not None:
        print(f"               then open {tracking.runs_page(outcome.tracking_uri, outcome.experiment_id)}")
    if outcome.status != "finished":
        print(f"interrupted:   continue with `python launch.py search --resume {portable.shown(outcome.search_dir)}`")
        return 130
    return 0 if s["trials_completed"] else 1


#: The libraries' messages, in the search folder (``search``) and the model folder (``retrain``).
SEARCH_LOG, RETRAIN_LOG = "search.log", "retrain.log"


def _logged(log: LibraryLog, work: Callable[[LibraryLog], Any]) -> Any:
    """``work(log)`` with the libraries' messages going to ``log``; a user error is reported as one line and
    gives None."""
    log.start()
    try:
        result = work(log)
    except _user_errors() as e:
        log.stop()
        _left_behind(log, failed=False)
        report_user_error(e)
        return None
    except BaseException:
        log.stop()
        _left_behind(log, failed=True)
        raise
    log.stop()
    return result


def _left_behind(log: LibraryLog, failed: bool) -> None:
    """A command that stopped before its folder existed has its log in the temporary folder. After a user
    error (one line that says it all) or when empty, it goes; after a crash it is named, since the libraries'
    messages in it may explain the crash."""
    if log.path is None or not log.path.exists() or log.path.parent != Path(tempfile.gettempdir()):
        return
    if failed and log.path.stat().st_size:
        print(f"log: {log.path} (Ray's, MLflow's and Optuna's messages until the stop)", file=sys.stderr)
    else:
        log.path.unlink()


def cmd_export(args: argparse.Namespace) -> int:
    from search.export import export_best

    try:
        path = export_best(args.search, experiment=args.experiment, tracking_uri=args.tracking_uri, out=args.out)
    except _user_errors() as e:
        return report_user_error(e)
    print(path)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from search import tracking
    from search.export import retrain
    from ulmfit_core.console import epoch_printer, metrics_table

    print(f"retraining {args.config} (each epoch is printed as it ends)", flush=True)
    log = LibraryLog(RETRAIN_LOG, verbose=args.verbose)
    res = _logged(log, lambda log: retrain(
        args.config, args.out, tracking_uri=args.tracking_uri, model_name=args.model_name, data_dir=args.data_dir,
        cache_dir=args.cache_dir, models_dir=args.models_dir, overrides=args.set, directions=args.directions, tokenizers=args.tokenizers,
        allow_edits=args.allow_edits, report=epoch_printer("classifier"), lm_report=epoch_printer("lm"),
        announce=lambda line: print(line, flush=True), log=log))
    if res is None:
        return USER_ERROR_EXIT
    shown = {k: v for k, v in sorted(res["metrics"].items()) if "test_" in k or k.startswith(("valid_", "lm_valid"))}
    print("\n" + metrics_table("retrained model", shown))
    if "recorded" in res:
        print(f"\nthe search recorded {res['recorded']:.4f}; the retrain differs by {res['difference']:.3g}")
    print(f"model folder:  {res['out_dir']}  (python launch.py predict --model {res['out_dir']} \"some text\")")
    print(f"MLflow run:    {res['run_id']} at {res['tracking_uri']}"
          + (", under its search's run" if res["nested"] else ""))
    champion = f"; alias {tracking.CHAMPION}: the best test accuracy so far" if res["champion"] else ""
    print(f"registered:    {res['model_uri']}{champion}")
    print(f"serve it:      {serve_command(res['model_uri'], res['tracking_uri'])}")
    return 0


#: The port the printed serve command uses: not the MLflow UI's 5000, so both can run at once.
SERVE_PORT = 5001


def serve_command(model_uri: str, tracking_uri: str) -> str:
    """``mlflow models serve`` for a registered model, with the store's address in the command, so it works
    from any folder."""
    return (f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} mlflow models serve -m {shlex.quote(model_uri)} "
            f"--env-manager local --host 127.0.0.1 --port {SERVE_PORT}")


def cmd_relocate_store(args: argparse.Namespace) -> int:
    from search import store_location

    try:
        changed = store_location.relocate(args.tracking_uri, args.old_folder)
    except _user_errors() as e:
        return report_user_error(e)
    rows = sum(changed.values())
    print(f"{args.tracking_uri}: {rows} artifact locations now point under "
          f"{store_location.sqlite_file(args.tracking_uri).parent}" + ("" if rows else " (nothing was elsewhere)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = OneLineParser(prog="python -m search.cli")
    add_commands(parser.add_subparsers(dest="command", required=True, help="what to do"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
