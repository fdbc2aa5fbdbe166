"""Search scaling and overhead on this machine: trials per hour with 1 and 2 workers, and the service's
own cost per trial (Ray scheduling, MLflow logging, checkpoints) as a share of trial time.

One fixed set of trials -- the demo recipe (tiny AWD-LSTM on TREC-6), ``--trials`` configurations drawn
by the seeded random sampler, no early stopping (``scheduler.type=fifo``) -- runs three ways:

- ``direct``: the same configurations one after another through ``ulmfit_core.stages`` (corpus, shared
  LM, classifier) in a fresh process (as a search's trial process is), 2 threads, no Ray, no MLflow: the
  work itself;
- ``workers_1``: ``run_search`` with one trial at a time using both cores (``resources.cpu=2``);
- ``workers_2``: two trials at a time, one core each (``resources.cpu=1``, ``max_concurrent=2``).

The shared language model is trained once before any of them and the MLflow store's database created
once (their times are reported apart: a user pays them once, not per search), so every mode measures
classifier trials, and each search finds the LM in the cache on its driver. ``--rounds`` (default 2)
turns of (``workers_1``, ``direct``) run one after the other, then ``workers_2`` once: this machine's speed
drifts by several percent over minutes, and the rounds show how much. Overhead per trial = (``workers_1``
wall time - ``direct`` wall time) / trials, both with 2 threads per trial, averaged over the rounds; Ray's
start is timed apart. It is split into four parts that add up to it, from each trial's result.json
(``time_total_s``, the epochs' own ``epoch_seconds``):

- ``per_search``: ``run_search`` outside Tune's trials (store, parent run, LM check, the first trial
  process's start, export, plots) / trials; each search also records this part in phases that add up
  to it (``per_search_seconds``, see ``per_search_phases``);
- ``between_trials``: time a worker slot sat idle between trials (scheduling, actor reuse) / trials;
- ``in_trial``: a trial's time outside its epochs (corpus and LM loading, model build, checkpoint
  reports), less the same in ``direct``;
- ``slower_epochs``: the epochs themselves ran slower than ``direct``'s (the driver, Ray's daemons, the
  MLflow writer and the plot helper share the 2 cores with the trial; also the machine's drift).

CPU seconds (Linux ``/proc``) say what the wall times cannot resolve: the whole machine's busy time in the
search beyond the direct run's, per trial, and the driver's and the plot helper's own.

    python bench/search_scaling.py                 # 10 trials, 2 rounds + workers_2: ~12 minutes on 2 cores
    python bench/search_scaling.py --smoke         # about a minute: 2 trials on 300 rows
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
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
    """The driver's clock on the trials (``time.perf_counter``): the first trial's start, the last one's
    end and Tune's end of the experiment (Tune's result timestamps are whole seconds)."""

    def __init__(self) -> None:
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.experiment_end: float | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.first_start = self.first_start or time.perf_counter()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.last_end = time.perf_counter()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.experiment_end = time.perf_counter()

    def makespan(self) -> float:
        return (self.last_end or 0.0) - (self.first_start or 0.0)


@contextlib.contextmanager
def timed_calls(module: Any, names: list[str]) -> Iterator[dict[str, tuple[float, float]]]:
    """Records (start, end) ``time.perf_counter`` of the last call of each named function of ``module``
    while the block runs (the benchmark's view into ``run_search``; the module is restored after)."""
    spans: dict[str, tuple[float, float]] = {}
    originals = {name: getattr(module, name) for name in names}

    def timed(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[name] = (t, time.perf_counter())
        return call

    for name, fn in originals.items():
        setattr(module, name, timed(name, fn))
    try:
        yield spans
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def per_search_phases(start: float, end: float, clock: TrialClock,
                      spans: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``run_search``'s time outside the trials (``start`` to ``end`` less the trials' makespan) in five
    parts that add up to it, seconds: ``setup`` (validation, MLflow check, data and LM lookup, parent
    run, up to the built Tuner), ``first_trial_process`` (Tune's start and the first trial's process:
    its start, imports, set-up), ``tune_end`` (from the last trial's end to Tune's end of the
    experiment), ``search_plots`` and ``finish`` (leaderboard, export, the parent run's summary)."""
    tuner_built = spans["build_tuner"][1]
    plots = spans["search_plots"][1] - spans["search_plots"][0]
    return {
        "setup": tuner_built - start,
        "first_trial_process": clock.first_start - tuner_built,
        "tune_end": clock.experiment_end - clock.last_end,
        "search_plots": plots,
        "finish": end - clock.experiment_end - plots,
    }


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (Linux ``/proc/stat``; None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds over a span: the whole machine and this (driver) process, which also draws the plots
    (the plot helper process of earlier versions is gone: ``plot_helper`` stays 0)."""

    def __init__(self) -> None:
        self.start = self._read()

    def _read(self) -> dict[str, float | None]:
        return {"machine": machine_busy_seconds(), "driver": time.process_time(), "plot_helper": 0.0}

    def used(self) -> dict[str, float | None]:
        end = self._read()
        return {k: (end[k] - self.start[k]) if end[k] is not None and self.start[k] is not None else None
                for k in end}


def run_search_mode(name: str, overrides: list[str], work: Path, smoke: bool, data_dir: str,
                    round_: int) -> dict[str, Any]:
    import ray

    from search import tuner

    ray.shutdown()  # a fresh local Ray per search (a no-op when none runs)
    cfg = demo_search_config(work, f"{name}_round{round_}", overrides, smoke=smoke, data_dir=data_dir)
    t0 = time.perf_counter()
    tuner.init_ray(cfg)
    ray_start = time.perf_counter() - t0
    clock = TrialClock()
    cpu = CpuMeter()
    with timed_calls(tuner, ["build_tuner", "search_plots"]) as spans:
        t1 = time.perf_counter()
        outcome = tuner.run_search(cfg, callbacks=[clock])
        t2 = time.perf_counter()
    wall = t2 - t1
    cpu_seconds = cpu.used()
    ray.shutdown()
    trials = trial_spans(outcome.search_dir)
    in_trial = [s["time_total_s"] for s in trials]
    n = len(outcome.leaderboard)
    makespan = clock.makespan()
    row = {"mode": name, "round": round_, "overrides": overrides, "trials": n, "wall_seconds": wall, "ray_start_seconds": ray_start,
           "trials_per_hour": 3600 * n / wall, "trial_time_total_s": in_trial,
           "trial_epoch_seconds": [s["epoch_seconds"] for s in trials], "trials_makespan_seconds": makespan,
           "per_search_seconds": per_search_phases(t1, t2, clock, spans),
           "slots": cfg.search.max_concurrent,
           "cpu_seconds": cpu_seconds,
           "trials_completed": outcome.summary["trials_completed"], "lm_trainings": outcome.summary["lm_trainings"],
           "sampled": [{k: v for k, v in r.items() if "." in k} for r in outcome.leaderboard],
           "valid_accuracy": [r.get("valid_accuracy") for r in outcome.leaderboard]}
    print(f"{name} (round {round_}): {n} trials in {wall:.0f} s ({row['trials_per_hour']:.0f} trials/hour); Ray start "
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
    cpu = CpuMeter()
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
    cpu_seconds = cpu.used()
    print(f"direct: {len(sampled)} trials in {wall:.0f} s", flush=True)
    return {"mode": "direct", "trials": len(sampled), "wall_seconds": wall, "trial_seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "trial_epoch_seconds": epoch_seconds, "trials_per_hour": 3600 * len(sampled) / wall, "threads": threads}


def run_direct_in_fresh_process(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run_direct`` in a new process, as a trial runs in a new Ray worker process: a long-lived process
    that has trained the LM and driven searches runs the same epochs measurably slower, which would
    count against the direct run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_direct, *args, **kwargs).result()


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


def service_cpu(direct: dict[str, Any], searched: dict[str, Any]) -> dict[str, float] | None:
    """CPU seconds per trial the search used beyond the same trials run directly (the whole machine:
    driver, plot helper, Ray's processes, trial processes' setup), and the driver's and the plot helper's
    own. None without /proc."""
    d, s = direct.get("cpu_seconds") or {}, searched.get("cpu_seconds") or {}
    if d.get("machine") is None or s.get("machine") is None:
        return None
    n = searched["trials"]
    return {"machine_extra": (s["machine"] - d["machine"]) / n, "driver": s["driver"] / n,
            "plot_helper": s["plot_helper"] / n}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overhead and throughput from the rounds' (direct, workers_1) pairs, averaged over rounds."""
    rounds = sorted({r["round"] for r in rows if r["mode"] == "direct"})
    pairs = [tuple(next(x for x in rows if x["mode"] == m and x["round"] == r) for m in ("direct", "workers_1"))
             for r in rounds]
    w2 = next(x for x in rows if x["mode"] == "workers_2")
    n = pairs[0][1]["trials"]
    direct_per_trial = [d["wall_seconds"] / d["trials"] for d, _ in pairs]
    overhead = [(w["wall_seconds"] - d["wall_seconds"]) / n for d, w in pairs]
    parts = [overhead_parts(d, w) for d, w in pairs]
    mean_parts = {k: statistics.mean([p[k] for p in parts]) for k in parts[0]}
    per_trial, total = statistics.mean(direct_per_trial), statistics.mean(overhead)
    shares = [o / t for o, t in zip(overhead, direct_per_trial)]
    cpu = [service_cpu(d, w) for d, w in pairs]
    w1_per_hour = statistics.mean([w["trials_per_hour"] for _, w in pairs])
    sampled = [_as_set(x["sampled"]) for x in rows if x["mode"] != "direct"]
    return {
        "direct_seconds_per_trial": per_trial, "overhead_seconds_per_trial": total, "overhead_share": total / per_trial,
        "overhead_share_by_round": shares,
        # Rounds differ by more than the overhead (the machine drifts): the spread says how far to trust the mean.
        "overhead_share_stderr": statistics.stdev(shares) / len(shares) ** 0.5 if len(shares) > 1 else None,
        # Timed within the search itself (no comparison with the direct run), so drift barely moves them.
        "timed_in_search_seconds_per_trial": mean_parts["per_search"] + mean_parts["between_trials"],
        "overhead_parts": mean_parts, "overhead_parts_by_round": parts,
        "per_search_seconds": {k: statistics.mean([w["per_search_seconds"][k] for _, w in pairs])
                               for k in pairs[0][1]["per_search_seconds"]},
        "per_search_seconds_by_round": [w["per_search_seconds"] for _, w in pairs],
        "overhead_per_trial_without_per_search": total - mean_parts["per_search"],
        "overhead_share_without_per_search": (total - mean_parts["per_search"]) / per_trial,
        "service_cpu_seconds_per_trial": ({k: statistics.mean([c[k] for c in cpu]) for k in cpu[0]}
                                          if all(cpu) else None),
        "trials_per_hour": {"direct": statistics.mean([d["trials_per_hour"] for d, _ in pairs]), "workers_1": w1_per_hour,
                            "workers_2": w2["trials_per_hour"]},
        "speedup_2_workers": w2["trials_per_hour"] / w1_per_hour,
        "same_configs_all_modes": all(s == sampled[0] for s in sampled),
    }


def _as_set(sampled: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(v, sort_keys=True) for v in sampled}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="turns of (1-worker search, direct) (default 2)")
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--out", help="result JSON (default bench/results/search_scaling.json)")
    ap.add_argument("--smoke", action="store_true", help="2 trials on 300 rows: checks the script runs")
    args = ap.parse_args(argv)

    import torch

    from ulmfit_core import stages
    from ulmfit_core.config import build_recipe
    from ulmfit_core.corpus import prepare_corpus

    trials = 2 if args.smoke else args.trials
    rounds = 1 if args.smoke else args.rounds
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
        for r in range(1, rounds + 1):  # direct and 1-worker search take turns: drift shows as spread
            w1 = run_search_mode("workers_1", common + MODES["workers_1"], work, args.smoke, args.data_dir, r)
            direct = run_direct_in_fresh_process(cfg.recipe, w1["sampled"], storage, args.data_dir, threads=2)
            rows += [{**direct, "round": r}, w1]
        rows.append(run_search_mode("workers_2", common + MODES["workers_2"], work, args.smoke, args.data_dir, 1))

    summary = {"lm_seconds_once": lm_seconds, "store_create_seconds_once": store_seconds,
               **summarize(rows)}
    print(f"overhead {summary['overhead_seconds_per_trial']:.2f} s per trial "
          f"({100 * summary['overhead_share']:.1f} % of {summary['direct_seconds_per_trial']:.1f} s; by round: "
          + ", ".join(f"{100 * x:.1f} %" for x in summary["overhead_share_by_round"])
          + f"); timed within the search {summary['timed_in_search_seconds_per_trial']:.2f} s per trial "
          f"({sum(summary['per_search_seconds'].values()):.1f} s once per search); "
          f"2 workers: {summary['speedup_2_workers']:.2f}x trials/hour", flush=True)
    payload = {"config": "configs/search_trec_demo.yaml", "trials": trials, "rounds": rounds, "seed": args.seed,
               "smoke": args.smoke, "modes": rows, "summary": summary}
    if not args.smoke or args.out:
        write_result("search_scaling", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
