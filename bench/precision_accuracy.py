"""Does bf16 cost accuracy? The whole recipe on TREC-6 with ``precision: bf16`` against ``precision: fp32``.

For each seed, the recipe (``configs/trec_small.yaml`` by default: LM fine-tuned on TREC-6's training
questions, then the classifier) runs once per precision, the order alternating between seeds. Reported
per run: the language model's validation perplexity, the classifier's validation and test accuracy, and
the time of each stage; per precision the mean and spread; and the per-seed differences bf16 - fp32
(the same seed draws the same split and initial weights in both).

bf16 is meant for hardware that computes it natively (CUDA GPUs with bf16, CPUs with AVX512_BF16 or AMX);
elsewhere its matmuls are emulated and a full run would take hours, so the script refuses unless told
``--allow-emulated-bf16`` (the smoke mode allows it: its model is tiny).

    python bench/precision_accuracy.py                 # trec_small, seeds 0 1 2, both precisions: ~45 min on a bf16 CPU (2 cores)
    python bench/precision_accuracy.py --device cuda   # the same on a GPU
    python bench/precision_accuracy.py --smoke         # tiny model on 300 questions, one seed: about a minute

Writes bench/results/precision_accuracy.json (``--out``) after every run, so a run cut short keeps its seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, SHARED_DATASETS, write_result

PRECISIONS = ("fp32", "bf16")
SMOKE_OVERRIDES = ["model.preset=tiny", "lm.pretrained=null", "data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=2", "classifier.unfreeze=[1,1]",
                   "lm.bptt=20", "classifier.bptt=20"]


def run_once(config: str, overrides: list[str], seed: int, prec: str, device: str, data_dir: str, tmp: Path) -> dict[str, Any]:
    from ulmfit_core import stages
    from ulmfit_core.config import load_recipe
    from ulmfit_core.pretrained import describe_start

    cfg = load_recipe(config, overrides + [f"seed={seed}", f"device={device}", f"precision={prec}"])
    cfg, start = describe_start(cfg)  # a zoo model not fetched: random start where the config allows it
    print(start, flush=True)
    t0 = time.perf_counter()
    res = stages.run_recipe(cfg, tmp / f"{prec}-seed{seed}", data_dir=data_dir, cache_dir=tmp / "cache")
    run = {"seed": seed, "precision": prec, "total_seconds": time.perf_counter() - t0,
           "lm_valid_perplexity": res.get("lm_valid_perplexity"), "lm_valid_accuracy": res.get("lm_valid_accuracy"),
           "valid_accuracy": res["valid_accuracy"], "test_accuracy": res["test_accuracy"],
           "lm_seconds": res.get("lm_seconds", 0.0), "classifier_seconds": res["classifier_seconds"],
           "load_after": list(os.getloadavg())}
    print(f"seed {seed} {prec}: LM perplexity {run['lm_valid_perplexity']:.2f}  test accuracy {run['test_accuracy']:.4f}  "
          f"LM {run['lm_seconds']:.0f} s  classifier {run['classifier_seconds']:.0f} s", flush=True)
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prec in PRECISIONS:
        rs = [r for r in runs if r["precision"] == prec]
        if not rs:
            continue
        acc = [r["test_accuracy"] for r in rs]
        out[prec] = {"n_seeds": len(rs), "test_accuracy_mean": statistics.mean(acc),
                     "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "lm_valid_perplexity_mean": statistics.mean(r["lm_valid_perplexity"] for r in rs),
                     "lm_seconds_mean": statistics.mean(r["lm_seconds"] for r in rs),
                     "classifier_seconds_mean": statistics.mean(r["classifier_seconds"] for r in rs)}
    by_seed = {(r["seed"], r["precision"]): r for r in runs}
    pairs = [(by_seed[(s, "bf16")], by_seed[(s, "fp32")]) for s in sorted({r["seed"] for r in runs})
             if (s, "bf16") in by_seed and (s, "fp32") in by_seed]
    out["paired"] = [{"seed": b["seed"], "test_accuracy_bf16_minus_fp32": b["test_accuracy"] - f["test_accuracy"],
                      "lm_perplexity_bf16_over_fp32": b["lm_valid_perplexity"] / f["lm_valid_perplexity"]}
                     for b, f in pairs]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_small.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allow-emulated-bf16", action="store_true",
                    help="run bf16 even on a CPU without AVX512_BF16/AMX (hours for trec_small)")
    ap.add_argument("--out", help="result JSON (default bench/results/precision_accuracy.json; smoke writes only with --out)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on 300 questions, one seed: checks the script runs")
    args = ap.parse_args(argv)

    import torch

    from ulmfit_core.precision import cpu_has_native_bf16

    native = torch.cuda.is_available() if args.device.startswith("cuda") else cpu_has_native_bf16()
    if not native and not (args.smoke or args.allow_emulated_bf16):
        raise SystemExit(f"{args.device}: no native bf16 here (CPU without AVX512_BF16/AMX), so bf16 would be "
                         "emulated and this run would take hours; run it on a machine with bf16, or pass "
                         "--allow-emulated-bf16")
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + (SMOKE_OVERRIDES if args.smoke else [])
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="precision-accuracy-") as tmp:
        for i, seed in enumerate(seeds):
            for prec in (PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]):
                runs.append(run_once(args.config, overrides, seed, prec, args.device, args.data_dir, Path(tmp)))
                payload = {"config": args.config, "overrides": overrides, "device": args.device, "threads": args.threads,
                           "native_bf16": native, "smoke": args.smoke, "runs": runs, "summary": summarize(runs)}
                if not args.smoke or args.out:
                    write_result("precision_accuracy", payload, args.out)
    for prec, s in payload["summary"].items():
        if prec in PRECISIONS:
            print(f"{prec}: test accuracy {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_sd']:.4f}, LM perplexity "
                  f"{s['lm_valid_perplexity_mean']:.2f} over {s['n_seeds']} seed(s)")
    return payload


if __name__ == "__main__":
    main()
