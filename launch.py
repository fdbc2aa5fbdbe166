#!/usr/bin/env python
"""Command-line interface: ``python launch.py COMMAND`` (installed as ``ulmfit COMMAND``).

Training commands share one convention: ``--config FILE.yaml``, repeated ``--set key=value``
overrides, ``--out DIR``; each writes ``DIR/metrics.json`` beside its model. The search commands
(``search``, ``export``, ``retrain``) come from ``search/cli.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EMBEDDED_DEFAULT_DATA = {"dataset": "trec"}
DESCRIPTION = ("ULMFiT text classifiers and their hyperparameter search. 'python launch.py COMMAND --help' "
               "tells each command's options.")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ulmfit-search")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _add_run_options(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--config", help="YAML recipe config (sections data, text, model, lm, classifier)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set classifier.lr=0.01 (repeatable; values parse as YAML)")
    p.add_argument("--out", default=out_default, help=f"output directory (default: {out_default})")
    p.add_argument("--data-dir", help="directory of named datasets (default: $ULMFIT_DATA or ./data)")
    p.add_argument("--cache-dir", help="token cache (default: $ULMFIT_CACHE or ./.cache/ulmfit)")
    p.add_argument("--models-dir", help="where zoo models named by lm.pretrained are (default: $ULMFIT_MODELS or ./models)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--restart", action="store_true",
                   help="train from scratch in --out, instead of continuing its checkpoint (which must belong to "
                        "the same settings and data, or the command refuses)")


def _recipe(args: argparse.Namespace, extra: list[str] | None = None, announce: bool = True, describe: bool = True):
    """The recipe to run (config file + ``--set``), checked before any work: its values, its device, its
    pretrained start (``describe``), and that ``--out`` and ``--cache-dir`` can be written. ``announce``
    prints which language model it starts from."""
    from ulmfit_core import memory
    from ulmfit_core.config import load_recipe
    from ulmfit_core.pretrained import describe_start
    from ulmfit_core.train import resolve_device

    overrides = (extra or []) + args.overrides
    names_data = any(o.startswith(("data.train=", "data.dataset=", "data.unlabeled=")) for o in overrides)
    base = None if args.config or names_data else {"data": dict(EMBEDDED_DEFAULT_DATA)}
    cfg = load_recipe(args.config, overrides, base=base)
    resolve_device(cfg.device)  # `device: cuda` on a machine without CUDA fails now, not after tokenizing
    _check_output_folders(args)
    memory.for_training_on(cfg.device)  # this process trains: reuse freed memory (ulmfit_core/memory.py)
    if not describe:
        return cfg
    cfg, start = describe_start(cfg, args.models_dir)
    if announce:
        print(start, flush=True)
    return cfg


def _check_output_folders(args: argparse.Namespace) -> None:
    """``--out`` and the token cache must be writable: checked up front, so no run fails at its first save."""
    from ulmfit_core.artifacts import check_writable_folder
    from ulmfit_core.corpus import default_cache_dir

    check_writable_folder(args.out, "--out")
    check_writable_folder(args.cache_dir or default_cache_dir(), "--cache-dir" if args.cache_dir else
                          "--cache-dir (default $ULMFIT_CACHE or ./.cache/ulmfit)")


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    from ulmfit_core.console import metrics_table

    print("\n" + metrics_table(title, metrics))


def _epoch_printer(stage: str) -> Callable:
    from ulmfit_core.console import epoch_printer

    return epoch_printer(stage)


# --- commands --------------------------------------------------------------------------------


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from ulmfit_core import datasets

    target = datasets.fetch(args.name, args.data_dir, mirror=args.mirror, progress=not args.no_progress)
    print(f"{args.name}: ready in {target}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from ulmfit_core import zoo

    header = ("NAME", "DIRECTION", "PRESET", "LAYOUT", "FETCHED", "SOURCE")
    rows = [(e.name, e.direction, e.preset, e.layout, str(zoo.fetched(e.name, args.dest) or "no"),
             e.url or f"{e.source} (no public URL: fetch with --mirror)") for e in zoo.ZOO.values()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    where = args.dest or zoo.default_models_dir()
    print(f"\nmodels directory: {where} (--dest, or ${zoo.MODELS_ENV}); "
          "fetch one with `python launch.py models fetch NAME [--mirror DIR|URL]`")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from ulmfit_core import zoo

    target = zoo.fetch(args.name, args.dest, mirror=args.mirror, progress=not args.no_progress)
    print(f"{args.name}: ready in {target} (use it with --set lm.pretrained={args.name})")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """A general-domain LM from unlabeled text: the LM stage with no pretrained start."""
    return _lm_command(args, extra=["lm.pretrained=null"], lm_only=True)


def cmd_finetune_lm(args: argparse.Namespace) -> int:
    return _lm_command(args, extra=[], lm_only=False)


def _lm_command(args: argparse.Namespace, extra: list[str], lm_only: bool) -> int:
    from ulmfit_core import corpus as corpora
    from ulmfit_core import stages

    cfg = _recipe(args, extra, announce=not lm_only)
    prepare = corpora.prepare_lm_corpus if lm_only else corpora.prepare_corpus
    corpus = prepare(cfg, args.data_dir, args.cache_dir, progress=not args.no_progress, models_dir=args.models_dir)
    res = stages.finetune_lm(cfg, corpus, args.out, report=_epoch_printer("lm"), progress=not args.no_progress,
                             models_dir=args.models_dir, resume=not args.restart)
    _print_metrics(f"language model saved to {res.lm_dir} ({res.seconds:.0f} s)", res.metrics)
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from ulmfit_core import inference, stages
    from ulmfit_core.corpus import prepare_corpus

    extra = [] if args.lm else ["classifier.from_scratch=true"]
    cfg = _recipe(args, extra)
    corpus = prepare_corpus(cfg, args.data_dir, args.cache_dir, progress=not args.no_progress,
                            models_dir=args.models_dir)
    res = stages.train_classifier(cfg, corpus, args.lm, args.out, report=_epoch_printer("classifier"),
                                  progress=not args.no_progress, resume=not args.restart)
    metrics = dict(res.metrics)
    if corpus.test is not None:
        test = inference.evaluate_split(res.out_dir, corpus.test, cfg.device)
        metrics.update({f"test_{k}": v for k, v in test.items()})
        _update_metrics_json(Path(args.out), metrics)
    _print_metrics(f"classifier saved to {res.out_dir}", metrics)
    return 0


def _update_metrics_json(out: Path, final: dict[str, Any]) -> None:
    from ulmfit_core import artifacts

    path = out / artifacts.METRICS_FILE
    payload = artifacts.read_json(path) if path.exists() else {}
    payload["final"] = final
    artifacts.write_json(path, payload)


def cmd_run(args: argparse.Namespace) -> int:
    from ulmfit_core import stages

    cfg = _recipe(args, describe=False)  # run_recipe checks and announces the start of every direction
    result = stages.run_recipe(cfg, args.out, report=_epoch_printer("classifier"), data_dir=args.data_dir,
                               cache_dir=args.cache_dir, progress=not args.no_progress,
                               lm_report=_epoch_printer("lm"), models_dir=args.models_dir,
                               directions=args.directions, resume=not args.restart,
                               announce=lambda line: print(line, flush=True), tokenizers=args.tokenizers)
    members = len(set(args.directions or [None])) * len(set(args.tokenizers or [None]))
    model = Path(args.out) if members > 1 else Path(args.out) / "classifier"
    _print_metrics(f"recipe finished; model in {model}, metrics in {Path(args.out) / 'metrics.json'}", result)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """fastai's learning-rate range test for one stage: a plot, the numbers and a suggested rate."""
    from search import plots
    from ulmfit_core import artifacts
    from ulmfit_core.corpus import prepare_corpus
    from ulmfit_core.lr_find import MIN_FALL, lr_find

    cfg = _recipe(args, announce=False)
    start = cfg.lm.pretrained if args.stage == "lm" else args.lm
    if start:  # said only when there is a start: the test itself trains a throwaway copy, nothing is saved
        print(f"range test of the {args.stage} stage starting from {start}", flush=True)
    corpus = prepare_corpus(cfg, args.data_dir, args.cache_dir, progress=not args.no_progress,
                            models_dir=args.models_dir)
    res = lr_find(cfg, corpus, args.stage, lm_dir=args.lm, num_it=args.num_it, models_dir=args.models_dir,
                  start_lr=args.start_lr, end_lr=args.end_lr)
    out = Path(args.out)
    png = plots.plot_lr_find(res.lrs, res.losses, out / f"lr_find_{args.stage}.png", suggestion=res.suggestion)
    artifacts.write_json(out / f"lr_find_{args.stage}.json", res.to_dict())
    key = "lm.lr" if args.stage == "lm" else "classifier.lr"
    print(f"{len(res.lrs)} batches from {res.lrs[0]:.1e} to {res.lrs[-1]:.1e}"
          + (" (stopped: the loss ran away)" if res.stopped_early else ""))
    if res.suggestion is None:
        print(f"warning: the loss never fell (its lowest point is within {MIN_FALL:.0%} of where it started), so "
              f"no rate is suggested; look at the plot ({png}), or try more batches (--num-it) or more text",
              file=sys.stderr)
        return 0
    print(f"suggested learning rate: {res.suggestion:.2e}  (--set {key}={res.suggestion:.2g}); plot: {png}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ulmfit_core import inference

    dirs = [args.model] + (args.ensemble or [])
    m = inference.evaluate(dirs, args.file, device=args.device)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    _print_metrics(f"{' + '.join(map(str, dirs))} on {args.file} ({m['n']} documents)", m)
    labels = m["labels"]
    width = max(8, *(len(lab) for lab in labels))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(" " * width + " ".join(f"{lab[:width]:>{width}}" for lab in labels))
    for lab, row in zip(labels, m["confusion_matrix"]):
        print(f"{lab:>{width}}" + " ".join(f"{c:>{width}}" for c in row))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ulmfit_core import inference
    from ulmfit_core.data import read_lines

    if args.texts:
        texts = list(args.texts)
    elif args.file:
        texts = [line for line in read_lines(args.file, what="predict --file") if line.strip()]
    else:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    labels, probs = inference.predict_proba([args.model] + (args.ensemble or []), texts, device=args.device)
    rows = [{"text": t, "label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p)))}
            for t, p in zip(texts, probs)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['label']}\t{r['probabilities'][r['label']]:.3f}\t{r['text']}")
    return 0


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from ulmfit_core.console import OneLineParser

    parser = OneLineParser(prog="ulmfit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    data = sub.add_parser("data", help="manage named datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", help="fetch")
    fetch = data_sub.add_parser("fetch", help="download a public dataset (trec, imdb) and convert it")
    fetch.add_argument("name", choices=["trec", "imdb"], help="the dataset: trec (TREC-6) or imdb")
    fetch.add_argument("--data-dir", help="where datasets live (default: $ULMFIT_DATA or ./data)")
    fetch.add_argument("--mirror", help="a local directory or base URL to take the files from instead")
    fetch.add_argument("--no-progress", action="store_true", help="hide the download's progress bar")
    fetch.set_defaults(func=cmd_data_fetch)

    _add_models_commands(sub)

    p = sub.add_parser("pretrain", help="train a general-domain language model from unlabeled text")
    _add_run_options(p, "runs/pretrain")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune-lm", help="fine-tune a language model (ours or fastai's) on the target text")
    _add_run_options(p, "runs/lm")
    p.set_defaults(func=cmd_finetune_lm)

    p = sub.add_parser("train-classifier", help="train a classifier on a fine-tuned LM (or from scratch)")
    _add_run_options(p, "runs/classifier")
    p.add_argument("--lm", help="directory written by finetune-lm; omit to train from scratch")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("run", help="the whole recipe: fine-tune the LM, then the classifier, then test")
    _add_run_options(p, "runs/recipe")
    p.add_argument("--directions", nargs="+", choices=["fwd", "bwd"], metavar="DIR",
                   help="fwd, bwd or both (ULMFiT's forward + backward ensemble; default: the config's lm.backwards)")
    p.add_argument("--tokenizers", nargs="+", choices=["words", "subwords"], metavar="TOK",
                   help="words, subwords or both: a classifier per tokenizer (and direction), averaged as one "
                        "ensemble (default: the config's text.tokenizer; docs/SUBWORDS.md)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("lr-find", help="fastai's learning-rate range test for the lm or classifier stage")
    _add_run_options(p, "runs/lr_find")
    p.add_argument("--stage", choices=["lm", "classifier"], default="classifier",
                   help="the stage whose learning rate to test (default: classifier)")
    p.add_argument("--lm", help="classifier stage: a fine-tuned LM folder whose encoder it starts from")
    p.add_argument("--num-it", type=int, default=100, help="batches, the rate rising from --start-lr to --end-lr (default: 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="the first batch's learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="the last batch's learning rate (default: 10)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("evaluate", help="metrics and confusion matrix on a labeled file")
    p.add_argument("--model", required=True, help="a folder run or retrain wrote, or a classifier folder")
    p.add_argument("--ensemble", nargs="+", metavar="DIR", help="more classifier folders (e.g. backwards) to average")
    p.add_argument("--file", required=True, help="labeled CSV/TSV (same columns as training)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="label texts from arguments, a file (one per line) or stdin")
    p.add_argument("texts", nargs="*", help="texts to label (none: --file, else one per line from stdin)")
    p.add_argument("--model", required=True, help="a folder run or retrain wrote, or a classifier folder")
    p.add_argument("--ensemble", nargs="+", metavar="DIR", help="more classifier folders whose probabilities are averaged in")
    p.add_argument("--file", help="a text file, one document per line")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON with all class probabilities")
    p.set_defaults(func=cmd_predict)

    try:
        from search import cli as search_cli
    except ImportError:  # the search extras are part of the install; keep the core usable regardless
        search_cli = None
    if search_cli is not None and hasattr(search_cli, "add_commands"):
        search_cli.add_commands(sub)
    return parser


def _add_models_commands(sub: argparse._SubParsersAction) -> None:
    from ulmfit_core.zoo import ZOO  # the registry only: no torch

    models = sub.add_parser("models", help="pretrained language models (the model zoo): list, fetch")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION", help="list or fetch")
    dest_help = "the models directory (default: $ULMFIT_MODELS or ./models)"
    p = models_sub.add_parser("list", help="the zoo's models, and which are fetched")
    p.add_argument("--dest", help=dest_help)
    p.set_defaults(func=cmd_models_list)
    p = models_sub.add_parser("fetch", help="download a zoo model (or copy it from a mirror) and check that it loads")
    p.add_argument("name", choices=list(ZOO), metavar="NAME", help=", ".join(ZOO))
    p.add_argument("--dest", help=dest_help)
    p.add_argument("--mirror", help="a local directory (holding NAME/ or NAME.tgz) or base URL (serving NAME.tgz) "
                                    "to take the model from instead")
    p.add_argument("--no-progress", action="store_true", help="hide the download's progress bar")
    p.set_defaults(func=cmd_models_fetch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ulmfit_core.console import USER_ERRORS, report_user_error

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:  # a bad value, file or folder: its message names it and the fix
        return report_user_error(e)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last epoch's checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
