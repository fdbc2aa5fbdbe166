"""Trials per hour on one GPU with 1, 2, 4 and 8 trials sharing it, through the real search service.

For each model preset (``small``, ``paper``) on TREC-6: the demo search (``configs/search_trec_demo.yaml``)
with that preset on CUDA at the default precision, the seeded random sampler and no early stopping
(``scheduler.type=fifo``), so every concurrency level runs comparable, complete trials. The shared
language model is trained once up front (its time is reported apart); each concurrency level ``n`` is
then a search of ``n x --trials-per-slot`` classifier trials with ``max_concurrent=n``,
``resources.gpu=1/n`` (Ray packs ``n`` trials onto the one GPU) and ``resources.cpu`` = the machine's
cores / n (at most ``--max-cpus-per-trial``). Reported: wall time, trials per hour, each trial's own
``time_total_s``, and throughput relative to one trial at a time.

    python bench/trials_per_gpu.py                   # on a GPU machine: small and paper x 1, 2, 4, 8 trials (not yet run; estimate 30-40 min)
    python bench/trials_per_gpu.py --presets small --concurrency 1 4      # a shorter look
    python bench/trials_per_gpu.py --smoke           # CPU: 2 concurrent trials, tiny preset, 300 rows (about a minute)

Writes bench/results/trials_per_gpu.json (``--out``) after every concurrency level, so a run cut short
keeps what it measured.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import SHARED_DATASETS, demo_search_config, trial_spans, write_result


def max_overlap(spans: list[dict[str, float]]) -> int:
    """The most trials that ran at the same moment."""
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def concurrency_overrides(n: int, gpu: bool, cores: int, max_cpus: int) -> list[str]:
    """``n`` trials at once: each a 1/n share of the GPU (none on CPU) and of the cores."""
    cpus = max(1, min(max_cpus, cores // n))
    return [f"search.max_concurrent={n}", f"search.resources.cpu={cpus}",
            f"search.resources.gpu={1 / n if gpu else 0}"]


def train_shared_lm(cfg: Any, data_dir: str) -> float:
    """The search's shared language model and tokenized corpus, built once in their storage; seconds."""
    import torch

    from search.tuner import check_language_model_start
    from ulmfit_core import stages
    from ulmfit_core.config import build_recipe
    from ulmfit_core.corpus import prepare_corpus

    print(check_language_model_start(cfg), flush=True)  # as the search does: the same LM cache key
    storage = Path(cfg.search.storage)
    recipe = build_recipe(cfg.recipe, {})
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    corpus = prepare_corpus(recipe, data_dir=data_dir, cache_dir=storage / "_corpus_cache")
    stages.ensure_lm(recipe, corpus, storage / "_lm_cache")
    return time.perf_counter() - t0


def run_level(preset: str, n: int, common: list[str], work: Path, args: argparse.Namespace, gpu: bool) -> dict[str, Any]:
    import ray

    from search import tuner

    resources = concurrency_overrides(n, gpu, os.cpu_count() or 1, args.max_cpus_per_trial)
    overrides = common + resources + [f"search.num_samples={n * args.trials_per_slot}"]
    ray.shutdown()  # a fresh local Ray for every level (a no-op when none runs)
    cfg = demo_search_config(work, f"{preset}_x{n}", overrides, smoke=args.smoke, data_dir=args.data_dir)
    t0 = time.perf_counter()
    outcome = tuner.run_search(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    spans = trial_spans(outcome.search_dir)
    trials = len(outcome.leaderboard)
    row = {"preset": preset, "concurrent": n, "trials": trials, "wall_seconds": wall,
           "trials_per_hour": 3600 * trials / wall, "trial_time_total_s": [s["time_total_s"] for s in spans],
           "max_trials_at_once": max_overlap(spans), "resources": resources,
           "trials_completed": outcome.summary["trials_completed"], "lm_trainings": outcome.summary["lm_trainings"],
           "valid_accuracy": [r.get("valid_accuracy") for r in outcome.leaderboard], "load_after": list(os.getloadavg())}
    print(f"{preset} x{n}: {trials} trials in {wall:.0f} s = {row['trials_per_hour']:.0f} trials/hour "
          f"(at most {row['max_trials_at_once']} at once)", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--trials-per-slot", type=int, default=2, help="trials per concurrent slot in each search")
    ap.add_argument("--classifier-epochs", type=int, default=4)
    ap.add_argument("--max-cpus-per-trial", type=int, default=4)
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="result JSON (default bench/results/trials_per_gpu.json; smoke writes only with --out)")
    ap.add_argument("--smoke", action="store_true", help="CPU: 2 concurrent trials, tiny preset, 300 rows")
    args = ap.parse_args(argv)

    import torch

    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        raise SystemExit("trials_per_gpu.py measures a GPU and none is visible here (torch.cuda.is_available() is "
                         "False); run it on a GPU machine, or pass --smoke for the CPU check")
    if args.smoke:
        args.presets, args.concurrency, args.trials_per_slot = ["tiny"], [2], 1
    device = "cuda" if gpu else "cpu"
    common = ["search.algorithm=random", "search.scheduler.type=fifo", f"search.seed={args.seed}",
              f"recipe.device={device}", "recipe.precision=auto"]
    if not args.smoke:
        common += [f"recipe.classifier.epochs={args.classifier_epochs}", "recipe.classifier.unfreeze=[1,1]"]
    payload: dict[str, Any] = {"smoke": args.smoke, "device": device,
                               "gpu": torch.cuda.get_device_name(0) if gpu else None,
                               "trials_per_slot": args.trials_per_slot, "config": "configs/search_trec_demo.yaml",
                               "overrides": common, "presets": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trials-per-gpu-") as tmp:
        for preset in args.presets:
            work = Path(tmp) / preset
            preset_common = common + [f"recipe.model.preset={preset}"]
            warm = demo_search_config(work, "shared_lm", preset_common, smoke=args.smoke, data_dir=args.data_dir)
            lm_seconds = train_shared_lm(warm, args.data_dir)
            print(f"{preset}: shared language model and corpus in {lm_seconds:.0f} s (not in the trials' times)", flush=True)
            rows = []
            for n in args.concurrency:
                rows.append(run_level(preset, n, preset_common, work, args, gpu))
                base = rows[0]["trials_per_hour"]
                for r in rows:
                    r["throughput_vs_first"] = r["trials_per_hour"] / base
                payload["presets"][preset] = {"lm_seconds_once": lm_seconds, "levels": rows}
                payload["total_seconds"] = time.perf_counter() - t_start
                if not args.smoke or args.out:
                    write_result("trials_per_gpu", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
