"""Search efficiency on TREC-6: six ways to search, same trial budget and seeds, best-so-far curves.

Every search runs the demo search (``configs/search_trec_demo.yaml``: tiny AWD-LSTM, the default space,
8 classifier epochs with ``unfreeze: [1, 1]``, one shared language model per search) with
``--num-samples`` trials on a fresh local Ray, each in its own storage (so each trains its own LM):

- ``random_fifo``: Optuna's RandomSampler, no early stopping (the baseline);
- ``tpe_fifo``: TPE, no early stopping;
- ``tpe_asha``: TPE + ASHA at Ray's rungs (the demo's grace period 2, factor 2: epochs 2, 4, 8);
- ``tpe_asha_unfreeze``: TPE + ASHA at the ends of the unfreezing phases (``scheduler.rungs: unfreeze``,
  grace period 1: epochs 1, 2, 8);
- ``tpe_asha_warm``: TPE + ASHA warm-started (``search.warm_start``) from the ``tpe_asha`` search of
  another seed (the previous one in ``--seeds``, cyclically; with one seed, its own);

For each search: its best-so-far validation accuracy after each trial against cumulative trial-epochs
and wall time (read from its stored Optuna study: ``optuna.db``; only completed trials count as a
"best", a trial stopped early is not a finished model), the test accuracy of its exported best
configuration retrained (``best.yaml`` -> ``search.export.retrain``; the search never sees test text),
and the trial-epochs it needed to reach random search's final best on the same seed.

    python bench/search_efficiency.py --seeds 0 1 2          # all six, 24 trials each: ~1.5 hours on 2 quiet cores
    python bench/search_efficiency.py --seeds 3 --add        # another search seed, kept beside the earlier ones
    python bench/search_efficiency.py --smoke                # 1-2 minutes: 2 trials on 300 rows, one shared LM
"""
from __future__ import annotations

import argparse
import math
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

TPE_ASHA = ["search.algorithm=tpe", "search.scheduler.type=asha"]
VARIANTS = {
    "random_fifo": ["search.algorithm=random", "search.scheduler.type=fifo"],
    "tpe_fifo": ["search.algorithm=tpe", "search.scheduler.type=fifo"],
    "tpe_asha": TPE_ASHA,
    "tpe_asha_unfreeze": [*TPE_ASHA, "search.scheduler.rungs=unfreeze", "search.scheduler.grace_period=1"],
    "tpe_asha_warm": TPE_ASHA,  # + search.warm_start: the DONOR search of another seed
}
BASELINE, WARM, DONOR = "random_fifo", "tpe_asha_warm", "tpe_asha"
PLOT = RESULTS / "search_efficiency.png"


# -- one search ---------------------------------------------------------------------------------------


def best_so_far_curve(search_dir: Path, metric: str, mode: str, t0: float) -> list[dict[str, float]]:
    """One point per trial of the search's own (not warm-started) trials, in the order they ended:
    cumulative trial-epochs, minutes since the search started, best completed value so far (or None)."""
    from optuna.trial import TrialState

    from search.searcher import load_study
    from search.warm_start import SOURCE_ATTR

    ended = [t for t in load_study(search_dir).get_trials(deepcopy=False)
             if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and SOURCE_ATTR not in t.user_attrs]
    sign = 1 if mode == "max" else -1
    curve, epochs, best = [], 0, None
    for t in sorted(ended, key=lambda t: t.datetime_complete):
        epochs += max(t.intermediate_values, default=0)
        if t.state == TrialState.COMPLETE and (best is None or sign * t.value > sign * best):
            best = t.value
        curve.append({"trial_epochs": epochs, "minutes": (t.datetime_complete.timestamp() - t0) / 60,
                      f"best_{metric}": best})
    return curve


def run_variant(name: str, seed: int, overrides: list[str], work: Path, *, smoke: bool, data_dir: str,
                retrain_best: bool, fresh_ray: bool) -> dict[str, Any]:
    import ray

    from search import tuner
    from search.export import retrain

    if fresh_ray:
        ray.shutdown()  # a fresh local Ray per search (a no-op when none runs)
    label = f"{name}-s{seed}"
    shared_store = [f"mlflow.tracking_uri=sqlite:///{work.parent / 'mlflow.db'}", f"mlflow.experiment={label}",
                    f"mlflow.artifact_location={work.parent / 'mlartifacts'}"]  # one store: created once
    if smoke:  # one LM and one tokenized corpus for all searches (a full run trains one LM per search)
        shared_store += [f"search.lm_root={work.parent / 'lm_cache'}", f"search.cache_dir={work.parent / 'corpus_cache'}"]
    cfg = demo_search_config(work, label, overrides + shared_store, smoke=smoke, data_dir=data_dir)
    t0 = time.time()
    outcome = tuner.run_search(cfg)
    wall = time.time() - t0
    if fresh_ray:
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
        "curve": best_so_far_curve(outcome.search_dir, metric, cfg.search.mode, t0),
        "search_dir_name": outcome.search_dir.name,
        "leaderboard": [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in board],
    }
    if outcome.best_yaml and retrain_best:
        # The best configuration, retrained from its exported file as `launch.py retrain` does (registered
        # in this benchmark's scratch MLflow store) and evaluated on the test questions.
        t1 = time.perf_counter()
        metrics = retrain(outcome.best_yaml, work / "retrain")["metrics"]
        row.update({"best_test_accuracy": metrics.get("test_accuracy"),
                    "best_retrained_valid_accuracy": metrics.get("valid_accuracy"),
                    "retrain_seconds": time.perf_counter() - t1,
                    "best_params": {k: v for k, v in board[0].items() if "." in k}})
    print(f"{label}: best {metric} {row[f'best_{metric}']}, test {row.get('best_test_accuracy')}, "
          f"{row['trial_epochs']} trial-epochs, {wall:.0f} s", flush=True)
    row["_search_dir"] = outcome.search_dir  # for a warm start in this invocation; not written out
    return row


# -- comparing them -------------------------------------------------------------------------------------


def epochs_to_reach(curve: list[dict[str, Any]], target: float, metric: str = "valid_accuracy") -> int | None:
    """Cumulative trial-epochs at the first point whose best-so-far reaches ``target`` (None: never)."""
    for point in curve:
        best = point.get(f"best_{metric}")
        if best is not None and best >= target - 1e-12:
            return point["trial_epochs"]
    return None


def summarize(runs: list[dict[str, Any]], metric: str = "valid_accuracy") -> dict[str, Any]:
    """Per variant, over seeds: mean best validation and test accuracy, trial-epochs, minutes, and the
    trial-epochs needed to reach random search's final best on the same seed (as a share of random's)."""
    baseline = {r["search_seed"]: r for r in runs if r["variant"] == BASELINE}
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        xs = [r for r in runs if r["variant"] == variant]
        shares = []
        for r in xs:
            base = baseline.get(r["search_seed"])
            if base is None or base.get(f"best_{metric}") is None:
                continue
            reached = epochs_to_reach(r["curve"], base[f"best_{metric}"], metric)
            shares.append(None if reached is None else reached / base["trial_epochs"])
        out[variant] = {
            "seeds": len(xs),
            f"best_{metric}_mean": _mean([r.get(f"best_{metric}") for r in xs]),
            "best_test_accuracy_mean": _mean([r.get("best_test_accuracy") for r in xs]),
            "trial_epochs_mean": _mean([r["trial_epochs"] for r in xs]),
            "minutes_mean": _mean([r["wall_seconds"] / 60 for r in xs]),
            "reached_random_best": f"{sum(s is not None for s in shares)}/{len(shares)}",
            "epochs_to_random_best_share_mean": _mean(shares),
        }
    return out


def _mean(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def plot_curves(runs: list[dict[str, Any]], path: Path, metric: str = "valid_accuracy") -> Path:
    """Best-so-far validation accuracy against trial-epochs and against minutes: one line per search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    for run in runs:
        points = [p for p in run["curve"] if p.get(f"best_{metric}") is not None]
        first_of_variant = run is next(r for r in runs if r["variant"] == run["variant"])
        for ax, x in zip(axes, ("trial_epochs", "minutes")):
            ax.step([p[x] for p in points], [p[f"best_{metric}"] for p in points], where="post",
                    color=colors.get(run["variant"]), alpha=0.8,
                    label=run["variant"] if first_of_variant and ax is axes[0] else None)
    axes[0].set_xlabel("cumulative trial-epochs")
    axes[1].set_xlabel("wall time (minutes)")
    axes[0].set_ylabel(f"best {metric} so far (completed trials)")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Search efficiency on TREC-6 (one line per search seed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command ----------------------------------------------------------------------------------------


def plan(variants: list[str], seeds: list[int]) -> list[tuple[str, int, int | None]]:
    """(variant, seed, donor seed) in run order: the warm variant last, after the donor searches it reads."""
    if WARM in variants and DONOR not in variants:
        raise SystemExit(f"--variants: {WARM} warm-starts from {DONOR} searches; add {DONOR}")
    first = [(v, s, None) for s in seeds for v in variants if v != WARM]
    warm = [(WARM, s, seeds[(i - 1) % len(seeds)]) for i, s in enumerate(seeds)] if WARM in variants else []
    return first + warm


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=24, help="trials per search (the same for all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds (sampler and recipe)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--out", help="result JSON (default bench/results/search_efficiency.json)")
    ap.add_argument("--plot", help=f"curves PNG (default {PLOT.relative_to(RESULTS.parents[1])})")
    ap.add_argument("--smoke", action="store_true",
                    help="2 trials on 300 rows, one Ray and one LM for all searches, only tpe_asha retrained")
    ap.add_argument("--add", action="store_true",
                    help="merge into the existing result: keep its runs of other seeds, record this command too")
    args = ap.parse_args(argv)
    out_path = Path(args.out) if args.out else RESULTS / "search_efficiency.json"
    plot_path = Path(args.plot) if args.plot else (out_path.with_suffix(".png") if args.out else PLOT)
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
        for name, seed, donor in plan(args.variants, args.seeds):
            overrides = VARIANTS[name] + [f"search.num_samples={num_samples}", f"search.seed={seed}",
                                          f"recipe.seed={seed}"]
            if donor is not None:
                source = next(r for r in runs if r["variant"] == DONOR and r["search_seed"] == donor)
                overrides.append(f"search.warm_start=[{source['_search_dir']}]")
            run = run_variant(name, seed, overrides, Path(tmp) / f"{name}-{seed}", smoke=args.smoke,
                              data_dir=args.data_dir, retrain_best=not args.smoke or name == DONOR,
                              fresh_ray=not args.smoke)
            if donor is not None:
                run["warm_start_from_seed"] = donor
            runs.append(run)
            # Written after every search, so a run cut short keeps what it finished.
            merged = sorted(earlier + [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                            key=lambda r: (r["search_seed"], list(VARIANTS).index(r["variant"])))
            payload = {"config": "configs/search_trec_demo.yaml", "num_samples": num_samples,
                       "seeds": sorted({r["search_seed"] for r in merged}), "smoke": args.smoke,
                       "summary": summarize(merged), "plot": plot_path.name, "runs": merged}
            if earlier_commands:
                payload["earlier_commands"] = earlier_commands
            if not args.smoke or args.out:
                write_result("search_efficiency", payload, args.out)
                plot_curves(merged, plot_path)
    return payload


if __name__ == "__main__":
    main()
