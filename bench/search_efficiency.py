"""Search efficiency on TREC-6: TPE + ASHA against FIFO random search, same trial budget and seeds.

Both searches run the demo search (``configs/search_trec_demo.yaml``: tiny AWD-LSTM, the default
space, one shared language model) with ``--num-samples`` trials on a local Ray, each in its own
storage and MLflow store, so each trains its own shared LM once. The only differences:

- ``tpe_asha``: ``search.algorithm=tpe`` (Optuna's TPESampler) and ASHA stopping weak trials early;
- ``random_fifo``: ``search.algorithm=random`` (Optuna's RandomSampler) and ``search.scheduler.type=fifo``
  (every trial runs all its epochs).

For each: the best validation accuracy, the test accuracy of the exported best configuration when
retrained (``best.yaml`` -> ``search.export.retrain``; the search never sees test text), the trial-epochs
spent, the wall time, and the LM compute the shared LM stage saved.

    python bench/search_efficiency.py                     # 24 trials each, seed 0: ~25 minutes on 2 cores
    python bench/search_efficiency.py --seeds 1 --add     # another search seed, kept beside the earlier ones
    python bench/search_efficiency.py --smoke             # about a minute: 2 trials, 300 rows
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    SHARED_DATASETS,
    command_history,
    demo_search_config,
    earlier_result,
    runs_of_other_seeds,
    write_result,
)

VARIANTS = {
    "tpe_asha": ["search.algorithm=tpe", "search.scheduler.type=asha"],
    "random_fifo": ["search.algorithm=random", "search.scheduler.type=fifo"],
}


def run_variant(name: str, overrides: list[str], work: Path, smoke: bool, data_dir: str) -> dict[str, Any]:
    import ray

    from search import tuner
    from search.export import retrain

    ray.shutdown()  # a fresh local Ray per search (a no-op when none runs)
    cfg = demo_search_config(work, name, overrides, smoke=smoke, data_dir=data_dir)
    t0 = time.perf_counter()
    outcome = tuner.run_search(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    board, s = outcome.leaderboard, outcome.summary
    metric = cfg.search.metric
    row: dict[str, Any] = {
        "variant": name, "overrides": overrides, "num_samples": cfg.search.num_samples,
        "search_seed": cfg.search.seed, "wall_seconds": wall,
        "trial_epochs": sum(int(r.get("epochs") or 0) for r in board),
        "trial_epochs_if_all_ran": len(board) * cfg.epochs,
        **{k: s[k] for k in ("trials", "trials_completed", "trials_stopped_by_asha", "trials_errored",
                             "lm_trainings", "lm_seconds_trained", "lm_seconds_saved")},
        f"best_{metric}": s.get(f"best_{metric}"),
        "leaderboard": [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in board],
    }
    if outcome.best_yaml:
        # The best configuration, retrained from its exported file as `launch.py retrain` does (registered
        # in this search's scratch MLflow store) and evaluated on the test questions.
        t1 = time.perf_counter()
        metrics = retrain(outcome.best_yaml, work / f"retrain-{name}")["metrics"]
        row.update({"best_test_accuracy": metrics.get("test_accuracy"),
                    "best_retrained_valid_accuracy": metrics.get("valid_accuracy"),
                    "retrain_seconds": time.perf_counter() - t1,
                    "best_params": {k: v for k, v in board[0].items() if "." in k}})
    print(f"{name}: best {metric} {row[f'best_{metric}']}, test {row.get('best_test_accuracy')}, "
          f"{row['trial_epochs']} trial-epochs, {wall:.0f} s, LM reuse saved {row['lm_seconds_saved']:.0f} s",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=24, help="trials per search (the same for both)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds (sampler and recipe)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--out", help="result JSON (default bench/results/search_efficiency.json)")
    ap.add_argument("--smoke", action="store_true", help="2 trials on 300 rows: checks the script runs")
    ap.add_argument("--add", action="store_true",
                    help="merge into the existing result: keep its runs of other seeds, record this command too")
    args = ap.parse_args(argv)
    out_path = Path(args.out) if args.out else RESULTS / "search_efficiency.json"
    num_samples = 2 if args.smoke else args.num_samples
    earlier: list[dict[str, Any]] = []
    earlier_commands: list[dict[str, Any]] = []
    old = earlier_result(out_path, lambda o: None if o["num_samples"] == num_samples
                         else f"has {o['num_samples']} trials per search") if args.add else None
    if old:  # search seeds run by earlier invocations (same trial budget)
        earlier = runs_of_other_seeds(old["runs"], args.seeds, key="search_seed")
        earlier_commands = command_history(old)
    runs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as tmp:
        for seed in args.seeds:
            for name in args.variants:
                overrides = VARIANTS[name] + [f"search.num_samples={num_samples}", f"search.seed={seed}",
                                              f"recipe.seed={seed}"]
                runs.append(run_variant(name, overrides, Path(tmp) / f"{name}-{seed}", args.smoke, args.data_dir))
                # Written after every search, so a run cut short keeps what it finished.
                merged = sorted(earlier + runs, key=lambda r: (r["search_seed"], r["variant"]))
                payload = {"config": "configs/search_trec_demo.yaml", "num_samples": num_samples,
                           "seeds": sorted({r["search_seed"] for r in merged}), "smoke": args.smoke, "runs": merged}
                if earlier_commands:
                    payload["earlier_commands"] = earlier_commands
                if not args.smoke or args.out:
                    write_result("search_efficiency", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
