"""The whole ULMFiT recipe on TREC-6 on CPU, repeated over seeds: test accuracy and time per stage.

Without general-domain pretraining (``lm.pretrained=null`` is forced): the LM is trained from random
weights on TREC-6's training questions only (the paper's "without pretraining" ablation reports 10.67 %
validation error). bench/transfer_trec.py measures the general-domain start beside it.

    python bench/trec_recipe.py                       # configs/trec_small.yaml, seeds 0 1 2
    python bench/trec_recipe.py --smoke               # seconds: tiny model, a slice, for the test suite
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED_DATASETS, write_result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_small.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="result JSON (default bench/results/trec_recipe.json)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on a slice: checks the script runs")
    args = ap.parse_args(argv)

    import torch

    from ulmfit_core import stages
    from ulmfit_core.config import load_recipe

    torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if args.smoke:
        overrides += ["model.preset=tiny", "data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=2", "classifier.unfreeze=[1,1]",
                      "lm.bptt=20", "classifier.bptt=20"]
    runs: list[dict] = []
    payload: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = load_recipe(args.config, ["lm.pretrained=null"] + overrides + [f"seed={seed}", "device=cpu"])
            t0 = time.perf_counter()
            res = stages.run_recipe(cfg, Path(tmp) / f"seed{seed}", data_dir=args.data_dir, cache_dir=Path(tmp) / "cache")
            res["total_seconds"] = time.perf_counter() - t0
            res["seed"] = seed
            runs.append(res)
            print(f"seed {seed}: test accuracy {res['test_accuracy']:.4f}  valid {res['valid_accuracy']:.4f}  "
                  f"LM {res.get('lm_seconds', 0):.0f} s  classifier {res['classifier_seconds']:.0f} s", flush=True)
            # Written after every seed, so a run cut short still leaves the seeds it finished.
            payload = _payload(args, overrides, runs)
            if not args.smoke or args.out:
                write_result("trec_recipe", payload, args.out)
    return payload


def _payload(args: argparse.Namespace, overrides: list[str], runs: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in runs]
    summary = {
        "test_accuracy_mean": statistics.mean(acc),
        "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "test_error_mean_pct": 100 * (1 - statistics.mean(acc)),
        "valid_error_mean_pct": 100 * (1 - statistics.mean(r["valid_accuracy"] for r in runs)),
        "lm_seconds_mean": statistics.mean(r.get("lm_seconds", 0.0) for r in runs),
        "classifier_seconds_mean": statistics.mean(r["classifier_seconds"] for r in runs),
        "total_seconds_mean": statistics.mean(r["total_seconds"] for r in runs),
    }
    print(f"test accuracy {summary['test_accuracy_mean']:.4f} ± {summary['test_accuracy_sd']:.4f} over seeds "
          f"{[r['seed'] for r in runs]}")
    return {"config": args.config, "overrides": overrides, "threads": args.threads, "runs": runs, "summary": summary}


if __name__ == "__main__":
    main()
