"""Transfer on TREC-6: the whole recipe from random weights against from a general-domain LM, forward,
backward and their averaged ensemble, over seeds, same budget (``configs/trec_small.yaml``).

For each seed and each start (``random``: no ``lm.pretrained``; ``general``: ``lm.pretrained`` =
``--model``, a zoo name whose backward counterpart the backward run uses), ``stages.run_recipe`` with
``directions fwd bwd`` fine-tunes each direction's LM on TREC-6's training questions only (never test
text), trains both classifiers and evaluates forward, backward and the ensemble on the test set.

    python bench/transfer_trec.py                                   # seeds 0 1 2, both starts: ~3 h on 2 cores
    python bench/transfer_trec.py --starts general --seeds 3 --add  # more seeds, merged into the earlier result
    python bench/transfer_trec.py --smoke                            # a minute: tiny model, a slice

``--jobs 2`` runs two recipes at once, each on ``--threads`` threads: on 2 cores, two single-threaded
runs finish sooner together than one after the other on two threads (the small LSTM's kernels do not
use a second thread fully). Each run's times are then those of a machine shared with the other run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    ROOT,
    SHARED_DATASETS,
    command_history,
    earlier_result,
    run_jobs,
    runs_of_other_seeds,
    write_result,
)

DEFAULT_OUT = RESULTS / "transfer_trec.json"
VARIANTS = ("fwd", "bwd", "ensemble")


def run_one(config: str, overrides: list[str], seed: int, start: str, model: str, data_dir: str, models_dir: str,
            work: Path) -> dict[str, Any]:
    from ulmfit_core import stages
    from ulmfit_core.config import load_recipe

    start_overrides = [f"lm.pretrained={model}"] if start == "general" else ["lm.pretrained=null"]
    cfg = load_recipe(config, overrides + start_overrides + [f"seed={seed}", "device=cpu"])
    t0 = time.perf_counter()
    res = stages.run_recipe(cfg, work / f"{start}-seed{seed}", data_dir=data_dir, cache_dir=work / "cache",
                            models_dir=models_dir, directions=["fwd", "bwd"])
    row = {"seed": seed, "start": start, "lm_pretrained": model if start == "general" else None,
           "total_seconds": time.perf_counter() - t0,
           "test_accuracy": {"fwd": res["test_accuracy"], "bwd": res["bwd_test_accuracy"],
                             "ensemble": res["ensemble_test_accuracy"]},
           "valid_accuracy": {"fwd": res["valid_accuracy"], "bwd": res["bwd_valid_accuracy"]},
           "lm_valid_perplexity": {"fwd": res.get("lm_valid_perplexity"), "bwd": res.get("bwd_lm_valid_perplexity")},
           "seconds": {k: v for k, v in res.items() if k.endswith("_seconds")}}
    print(f"{start} seed {seed}: test fwd {row['test_accuracy']['fwd']:.4f}  bwd {row['test_accuracy']['bwd']:.4f}  "
          f"ensemble {row['test_accuracy']['ensemble']:.4f}  ({row['total_seconds'] / 60:.1f} min)", flush=True)
    return row


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of test accuracy per start and variant."""
    out: dict[str, Any] = {}
    for start in sorted({r["start"] for r in runs}):
        rows = [r for r in runs if r["start"] == start]
        out[start] = {"seeds": [r["seed"] for r in rows], "minutes_per_seed": statistics.mean(
            r["total_seconds"] for r in rows) / 60}
        for v in VARIANTS:
            acc = [r["test_accuracy"][v] for r in rows]
            out[start][v] = {"mean": statistics.mean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_small.yaml"))
    ap.add_argument("--model", default="general-en-small-fwd", help="the zoo model of the 'general' start")
    ap.add_argument("--models-dir", default=str(ROOT / "models"), help="where the zoo models are fetched")
    ap.add_argument("--starts", nargs="+", choices=["random", "general"], default=["random", "general"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--add", action="store_true", help="merge into the earlier result (other seeds or starts)")
    ap.add_argument("--out", help=f"result JSON (default {DEFAULT_OUT})")
    ap.add_argument("--smoke", action="store_true", help="tiny model on a slice: checks the script runs")
    args = ap.parse_args(argv)

    overrides = list(args.overrides)
    if args.smoke:
        overrides += ["model.preset=tiny", "data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=2", "classifier.unfreeze=[1,1]",
                      "lm.bptt=20", "classifier.bptt=20", "lm.freeze_epochs=0"]
    out_path = Path(args.out) if args.out else DEFAULT_OUT
    same = ("config", "overrides", "model")
    old = earlier_result(out_path, lambda o: next((f"has {k}={o.get(k)!r}" for k in same if o.get(k) != {
        "config": args.config, "overrides": overrides, "model": args.model}[k]), None)) if args.add else None
    runs = [r for r in (old or {}).get("runs", []) if r["start"] not in args.starts] + \
        runs_of_other_seeds([r for r in (old or {}).get("runs", []) if r["start"] in args.starts], args.seeds)
    payload: dict[str, Any] = {}

    def record(row: dict[str, Any]) -> None:
        nonlocal payload
        runs.append(row)
        payload = {"config": args.config, "overrides": overrides, "model": args.model, "threads": args.threads,
                   "jobs": args.jobs, "runs": runs, "summary": summarize(runs)}
        if old:
            payload["earlier_commands"] = command_history(old)
        if not args.smoke or args.out:  # after every run: a run cut short keeps what it finished
            write_result("transfer_trec", payload, out_path)

    with tempfile.TemporaryDirectory(prefix="transfer-trec-") as tmp:
        todo = [(args.config, overrides, seed, start, args.model, args.data_dir, args.models_dir, Path(tmp))
                for seed in args.seeds for start in args.starts]
        for row in run_jobs(run_one, todo, args.jobs, args.threads):
            record(row)
    return payload


if __name__ == "__main__":
    main()
