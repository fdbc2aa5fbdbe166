"""Words against subword units on TREC-6, both from random weights: forward, backward, each tokenizer's
forward + backward ensemble, and the four-member word + subword ensemble, over seeds
(``configs/trec_tiny.yaml``, same budget for both tokenizers).

For each seed and tokenizer, ``stages.run_recipe`` with ``directions fwd bwd`` trains the language model
of each direction on TREC-6's training questions only (the subword units are learnt from them too; never
test text), trains both classifiers and evaluates them and their ensemble on the test set; the four
classifiers of a seed are then evaluated as one ensemble (``inference.evaluate``).

By default both tokenizers start from random weights (a word model pretrained on 5M words against a subword
model that never saw them would measure the pretraining, not the units). ``--pretrained-words DIR
--pretrained-subwords DIR`` starts each tokenizer from a general-domain LM of its own units instead (e.g.
the zoo's ``general-en-tiny-fwd`` and ``configs/pretrain_general_tiny_subwords.yaml``'s model); the subword
members then use that model's units.

    python bench/subwords_trec.py                  # seeds 0 1 2: ~25 min on 2 cores (--jobs 2)
    python bench/subwords_trec.py --directions fwd --pretrained-words models/general-en-tiny-fwd \
        --pretrained-subwords models/general-en-tiny-sp-fwd --out bench/results/subwords_trec_pretrained.json
    python bench/subwords_trec.py --config configs/trec_small.yaml --pretrained-words general-en-small-fwd \
        --pretrained-subwords general-en-small-sp-fwd --out bench/results/subwords_trec_small.json
    python bench/subwords_trec.py --smoke          # a minute: a slice, one epoch each
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SHARED_DATASETS, run_jobs, write_result

DEFAULT_OUT = RESULTS / "subwords_trec.json"
TOKENIZERS = ("words", "subwords")


def run_one(config: str, overrides: list[str], seed: int, tokenizer: str, data_dir: str, work: Path,
            directions: tuple[str, ...] = ("fwd", "bwd"), pretrained: str | None = None) -> dict[str, Any]:
    from ulmfit_core import artifacts, stages
    from ulmfit_core.config import load_recipe

    cfg = load_recipe(config, [*overrides, f"text.tokenizer={tokenizer}", f"lm.pretrained={pretrained or 'null'}",
                               f"seed={seed}", "device=cpu"])
    out = work / f"{tokenizer}-seed{seed}"
    t0 = time.perf_counter()
    res = stages.run_recipe(cfg, out, data_dir=data_dir, cache_dir=work / "cache", directions=list(directions))
    first, *rest = directions
    accuracy = {first: res["test_accuracy"], **{d: res[f"{d}_test_accuracy"] for d in rest}}
    if rest:
        accuracy["ensemble"] = res["ensemble_test_accuracy"]
    row = {"seed": seed, "tokenizer": tokenizer, "pretrained": pretrained, "total_seconds": time.perf_counter() - t0,
           "folder": str(out), "vocab_size": None, "test_accuracy": accuracy,
           "lm_valid_perplexity": {first: res.get("lm_valid_perplexity"),
                                   **{d: res.get(f"{d}_lm_valid_perplexity") for d in rest}}}
    row["vocab_size"] = len(artifacts.read_vocab(out / "classifier" / "vocab.json"))
    print(f"{tokenizer} seed {seed}: test " + "  ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
          + f"  ({row['total_seconds'] / 60:.1f} min)", flush=True)
    return row


def four_member_accuracy(rows: list[dict[str, Any]], test_csv: Path) -> dict[int, float]:
    """Per seed: every word and subword classifier of the seed (each direction run) averaged, on the test set."""
    from ulmfit_core import inference

    out = {}
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        folders = [d for r in mine for d in inference.classifier_dirs(r["folder"])]  # each run's members
        if len(mine) == len(TOKENIZERS):
            out[seed] = inference.evaluate(folders, test_csv, device="cpu")["accuracy"]
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]], four: dict[int, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tok in TOKENIZERS:
        rows = [r for r in runs if r["tokenizer"] == tok]
        if rows:
            out[tok] = {"seeds": [r["seed"] for r in rows], "vocab_size": rows[0]["vocab_size"],
                        "minutes_per_seed": statistics.mean(r["total_seconds"] for r in rows) / 60,
                        **{v: _stats([r["test_accuracy"][v] for r in rows]) for v in rows[0]["test_accuracy"]}}
    if four:
        directions = "+".join(d for d in runs[0]["test_accuracy"] if d != "ensemble")
        out[f"words+subwords {directions}"] = {"seeds": sorted(four), **_stats(list(four.values()))}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_tiny.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--set", dest="overrides", action="append", default=["text.subword_vocab=4000"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    ap.add_argument("--out", help=f"result JSON (default {DEFAULT_OUT})")
    ap.add_argument("--smoke", action="store_true", help="a slice, one epoch each: checks the script runs")
    ap.add_argument("--directions", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    ap.add_argument("--tokenizers", nargs="+", default=list(TOKENIZERS), choices=TOKENIZERS,
                    help="which tokenizers to run (the four-member ensemble needs both)")
    ap.add_argument("--pretrained-words", help="a word-level general-domain LM (folder or zoo name) to start from")
    ap.add_argument("--pretrained-subwords", help="a subword general-domain LM folder to start from")
    args = ap.parse_args(argv)
    pretrained = {"words": args.pretrained_words, "subwords": args.pretrained_subwords}

    overrides = list(args.overrides)
    if args.smoke:
        overrides += ["data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=1", "classifier.unfreeze=[]",
                      "lm.bptt=20", "classifier.bptt=20", "text.subword_vocab=300"]
    out_path = Path(args.out) if args.out else DEFAULT_OUT
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="subwords-trec-") as tmp:
        todo = [(args.config, overrides, seed, tok, args.data_dir, Path(tmp), tuple(args.directions), pretrained[tok])
                for seed in args.seeds for tok in args.tokenizers]
        runs = list(run_jobs(run_one, todo, args.jobs, args.threads))
        four = four_member_accuracy(runs, Path(args.data_dir) / "trec" / "test.csv")
    for r in runs:
        r.pop("folder")
    payload = {"config": args.config, "overrides": overrides, "threads": args.threads, "jobs": args.jobs,
               "directions": args.directions, "tokenizers": args.tokenizers,
               "pretrained": {tok: pretrained[tok] for tok in args.tokenizers},
               "runs": sorted(runs, key=lambda r: (r["tokenizer"], r["seed"])),
               "four_member_test_accuracy": {str(k): v for k, v in four.items()}, "summary": summarize(runs, four)}
    if not args.smoke or args.out:
        write_result("subwords_trec", payload, out_path)
    print(payload["summary"])
    return payload


if __name__ == "__main__":
    main()
