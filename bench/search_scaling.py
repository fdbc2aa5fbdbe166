"""Search scaling and overhead on this machine: trials per hour with 1 and 2 workers, and the service's
own cost per trial (Ray scheduling, MLflow logging, checkpoints) as a share of trial time.

One fixed set of trials -- the demo recipe (tiny AWD-LSTM on TREC-6), ``--trials`` configurations drawn
by the seeded random sampler, no early stopping (``scheduler.type=fifo``) -- runs three ways:

- ``direct``: the same configurations one after another in this process through ``ulmfit_core.stages``
  (corpus, shared LM, classifier), 2 threads, no Ray, no MLflow, no checkpoints: the work itself;
- ``workers_1``: ``run_search`` with one trial at a time using both cores (``resources.cpu=2``);
- ``workers_2``: two trials at a time, one core each (``resources.cpu=1``, ``max_concurrent=2``).

The shared language model is trained once before any of them and the MLflow store's database created
once (their times are reported apart: a user pays them once, not per search), so every mode measures
classifier trials, and each search finds the LM in the cache on its driver. Overhead per trial = (``workers_1`` wall time - ``direct`` wall
time) / trials, both with 2 threads per trial; Ray's start is timed apart. It is split into four parts
that add up to it, from each trial's result.json (``time_total_s``, the epochs' own ``epoch_seconds``):

- ``per_search``: ``run_search`` outside Tune's trials (store, parent run, LM check, export, plots) / trials;
- ``between_trials``: time a worker slot sat idle between trials (scheduling, actor reuse) / trials;
- ``in_trial``: a trial's time outside its epochs (corpus and LM loading, model build, checkpoint
  reports), less the same in ``direct``;
- ``slower_epochs``: the epochs themselves ran slower than ``direct``'s (the driver, Ray's daemons and
  the MLflow writer share the 2 cores with the trial).

    python bench/search_scaling.py                 # 10 trials x 3 modes: ~15 minutes on 2 cores
    python bench/search_scaling.py --smoke         # about a minute: 2 trials on 300 rows
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import SHARED_DATASETS, demo_search_config, trial_spans, write_result

import search  # noqa: F401  (Ray's environment defaults: set before ray is first imported)

# isort: split
from ray.tune import Callback

MODES = {
    "workers_1": ["search.max_concurrent=1", "search.resources.cpu=2"],
    "workers_2": ["search.max_concurrent=2", "search.resources.cpu=1"],
}


class TrialClock(Callback):
    """The driver's clock on the trials: from the first trial's start to the last one's end (Tune's
    result timestamps are whole seconds)."""

    def __init__(self) -> None:
        self.first_start: float | None = None
        self.last_end: float | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.first_start = self.first_start or time.time()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.last_end = time.time()

    def makespan(self) -> float:
        return (self.last_end or 0.0) - (self.first_start or 0.0)


def run_search_mode(name: str, overrides: list[str], work: Path, smoke: bool, data_dir: str) -> dict[str, Any]:
    import ray

    from search import tuner

    ray.shutdown()  # a fresh local Ray per search (a no-op when none runs)
    cfg = demo_search_config(work, name, overrides, smoke=smoke, data_dir=data_dir)
    t0 = time.perf_counter()
    tuner.init_ray(cfg)
    ray_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    clock = TrialClock()
    outcome = tuner.run_search(cfg, callbacks=[clock])
    wall = time.perf_counter() - t1
    ray.shutdown()
    spans = trial_spans(outcome.search_dir)
    in_trial = [s["time_total_s"] for s in spans]
    n = len(outcome.leaderboard)
    makespan = clock.makespan()
    row = {"mode": name, "overrides": overrides, "trials": n, "wall_seconds": wall, "ray_start_seconds": ray_start,
           "trials_per_hour": 3600 * n / wall, "trial_time_total_s": in_trial,
           "trial_epoch_seconds": [s["epoch_seconds"] for s in spans], "trials_makespan_seconds": makespan,
           "slots": cfg.search.max_concurrent,
           "trials_completed": outcome.summary["trials_completed"], "lm_trainings": outcome.summary["lm_trainings"],
           "sampled": [{k: v for k, v in r.items() if "." in k} for r in outcome.leaderboard],
           "valid_accuracy": [r.get("valid_accuracy") for r in outcome.leaderboard]}
    print(f"{name}: {n} trials in {wall:.0f} s ({row['trials_per_hour']:.0f} trials/hour); Ray start "
          f"{ray_start:.1f} s", flush=True)
    return row


def run_direct(base_recipe, sampled: list[dict[str, Any]], storage: Path, data_dir: str, threads: int) -> dict[str, Any]:
    """The same trials without the service: stage calls in a loop, the searches' caches in ``storage``
    and the same thread count."""
    import torch

    from ulmfit_core import stages
    from ulmfit_core.config import build_recipe
    from ulmfit_core.corpus import prepare_corpus

    torch.set_num_threads(threads)
    seconds, epoch_seconds = [], []
    t0 = time.perf_counter()
    for values in sampled:
        t = time.perf_counter()
        recipe = build_recipe(base_recipe, values)
        corpus = prepare_corpus(recipe, data_dir=data_dir, cache_dir=storage / "_corpus_cache")
        lm = stages.ensure_lm(recipe, corpus, storage / "_lm_cache")
        with tempfile.TemporaryDirectory() as tmp:
            result = stages.train_classifier(recipe, corpus, lm.lm_dir, Path(tmp) / "model")
        seconds.append(time.perf_counter() - t)
        epoch_seconds.append(sum(h["epoch_seconds"] for h in result.history))
    wall = time.perf_counter() - t0
    print(f"direct: {len(sampled)} trials in {wall:.0f} s", flush=True)
    return {"mode": "direct", "trials": len(sampled), "wall_seconds": wall, "trial_seconds": seconds,
            "trial_epoch_seconds": epoch_seconds, "trials_per_hour": 3600 * len(sampled) / wall, "threads": threads}


def overhead_parts(direct: dict[str, Any], searched: dict[str, Any]) -> dict[str, float]:
    """Seconds per trial the search adds to ``direct``, in four parts that sum to
    (search wall - direct wall) / trials (see the module's docstring)."""
    n = searched["trials"]
    busy = sum(searched["trial_time_total_s"])
    epochs, direct_epochs = sum(searched["trial_epoch_seconds"]), sum(direct["trial_epoch_seconds"])
    return {
        "per_search": (searched["wall_seconds"] - searched["trials_makespan_seconds"]) / n,
        "between_trials": (searched["slots"] * searched["trials_makespan_seconds"] - busy) / n,
        "in_trial": ((busy - epochs) - (direct["wall_seconds"] - direct_epochs)) / n,
        "slower_epochs": (epochs - direct_epochs) / n,
    }


def _as_set(sampled: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(v, sort_keys=True) for v in sampled}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--out", help="result JSON (default bench/results/search_scaling.json)")
    ap.add_argument("--smoke", action="store_true", help="2 trials on 300 rows: checks the script runs")
    args = ap.parse_args(argv)

    import torch

    from ulmfit_core import stages
    from ulmfit_core.config import build_recipe
    from ulmfit_core.corpus import prepare_corpus

    trials = 2 if args.smoke else args.trials
    # The LM starts from random weights in every mode: this measures the service, not the transfer.
    common = ["search.algorithm=random", "search.scheduler.type=fifo", f"search.num_samples={trials}",
              f"search.seed={args.seed}", "recipe.lm.pretrained=null"]
    with tempfile.TemporaryDirectory(prefix="search-scaling-") as tmp:
        work = Path(tmp)
        # One storage for every mode: the LM (and tokenized corpus) are built here, once, up front.
        cfg = demo_search_config(work, "warmup", common, smoke=args.smoke, data_dir=args.data_dir)
        storage = Path(cfg.search.storage)
        torch.set_num_threads(2)
        recipe = build_recipe(cfg.recipe, {})
        t0 = time.perf_counter()
        corpus = prepare_corpus(recipe, data_dir=args.data_dir, cache_dir=storage / "_corpus_cache")
        stages.ensure_lm(recipe, corpus, storage / "_lm_cache")
        lm_seconds = time.perf_counter() - t0
        from search import tracking

        t0 = time.perf_counter()
        tracking.check_reachable(cfg.mlflow.tracking_uri)  # creates the store's schema, as a first search would
        store_seconds = time.perf_counter() - t0
        rows = []
        for name, overrides in MODES.items():
            rows.append(run_search_mode(name, common + overrides, work, args.smoke, args.data_dir))
        rows.insert(0, run_direct(cfg.recipe, rows[0]["sampled"], storage, args.data_dir, threads=2))

    direct, w1, w2 = rows
    per_trial_direct = direct["wall_seconds"] / direct["trials"]
    overhead = (w1["wall_seconds"] - direct["wall_seconds"]) / w1["trials"]
    parts = overhead_parts(direct, w1)
    summary = {"lm_seconds_once": lm_seconds, "store_create_seconds_once": store_seconds, "direct_seconds_per_trial": per_trial_direct,
               "overhead_seconds_per_trial": overhead, "overhead_share": overhead / per_trial_direct,
               "overhead_parts": parts,
               "overhead_per_trial_without_per_search": overhead - parts["per_search"],
               "trials_per_hour": {r["mode"]: r["trials_per_hour"] for r in rows},
               "speedup_2_workers": w2["trials_per_hour"] / w1["trials_per_hour"],
               "same_configs_both_modes": _as_set(w1["sampled"]) == _as_set(w2["sampled"])}
    print(f"overhead {overhead:.1f} s per trial ({100 * summary['overhead_share']:.1f} % of "
          f"{per_trial_direct:.1f} s); 2 workers: {summary['speedup_2_workers']:.2f}x trials/hour", flush=True)
    payload = {"config": "configs/search_trec_demo.yaml", "trials": trials, "seed": args.seed, "smoke": args.smoke,
               "modes": rows, "summary": summary}
    if not args.smoke or args.out:
        write_result("search_scaling", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
