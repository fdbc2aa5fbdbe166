"""Subword vocabulary size on TREC-6: the forward subword classifier, its language model starting from a
general-domain subword LM of 8,000, 15,000 or 30,000 SentencePiece units, over seeds (``configs/trec_tiny.yaml``).

Each general-domain LM is ``configs/pretrain_general_tiny_subwords.yaml`` with ``text.subword_vocab`` set (the
units are learnt from the general-en corpus's training documents); fine-tuning keeps its units, so the size of
the general model is the size of every model after it. The LM is then fine-tuned on TREC-6's training
questions only (never test text) and the classifier trained and tested, as ``bench/subwords_trec.py`` does.
The models come from ``bench/pretrain_general.py`` (named by size, e.g. ``general-en-tiny-sp8k-fwd``):

    python bench/pretrain_general.py --train --preset tiny --subwords --subword-vocab 8000 --directions fwd --add
    python bench/pretrain_general.py --train --preset tiny --subwords --subword-vocab 30000 --directions fwd --add
    python bench/subword_vocab_trec.py             # seeds 0 1 2, all three sizes: ~30 min on 2 cores
    python bench/subword_vocab_trec.py --smoke     # a minute: two small models pretrained on a slice, one epoch each
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SHARED_DATASETS, run_jobs, write_result
from pretrain_general import model_name, pretrain
from subwords_trec import run_one

DEFAULT_OUT = RESULTS / "subword_vocab_trec.json"
VOCABS = (8_000, 15_000, 30_000)
SMOKE = ["data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=1", "classifier.unfreeze=[]",
         "lm.bptt=20", "classifier.bptt=20"]


def general_models(vocabs: list[int], models_dir: Path, smoke_dir: Path | None = None) -> dict[int, Path]:
    """The general-domain forward subword LM of each size: pretrained on a slice of the corpus into
    ``smoke_dir`` for a smoke run, else found in ``models_dir`` (the command that makes a missing one is named)."""
    if smoke_dir is not None:
        slice_ = ["data.max_unlabeled_rows=300", "lm.bs=16", "data.unlabeled_valid=null"]  # held out: a slice
        return {v: pretrain("tiny", "fwd", smoke_dir, slice_, subwords=True, subword_vocab=v) for v in vocabs}
    found = {v: models_dir / model_name("tiny", "fwd", True, v) for v in vocabs}
    missing = [v for v, folder in found.items() if not folder.is_dir()]
    if missing:
        raise SystemExit("no general-domain subword LM of " + ", ".join(f"{v:,}" for v in missing) + " units in "
                         f"{models_dir}; make each with `python bench/pretrain_general.py --train --preset tiny "
                         f"--subwords --subword-vocab N --directions fwd --out-dir {models_dir} --add`")
    return found


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for vocab in sorted({r["subword_vocab"] for r in runs}):
        mine = [r for r in runs if r["subword_vocab"] == vocab]
        acc = [r["test_accuracy"]["fwd"] for r in mine]
        out[str(vocab)] = {"seeds": [r["seed"] for r in mine], "vocab_size": mine[0]["vocab_size"],
                           "pretrained": mine[0]["pretrained"],
                           "minutes_per_seed": statistics.mean(r["total_seconds"] for r in mine) / 60,
                           "fwd": {"mean": statistics.mean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0}}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_tiny.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--vocabs", type=int, nargs="+", default=list(VOCABS), help="units of each general-domain LM")
    ap.add_argument("--models-dir", default=str(ROOT / "models"), help="where bench/pretrain_general.py wrote them")
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    ap.add_argument("--out", help=f"result JSON (default {DEFAULT_OUT})")
    ap.add_argument("--smoke", action="store_true", help="small models on slices, one epoch each: checks the script")
    args = ap.parse_args(argv)
    vocabs = [200, 300] if args.smoke else args.vocabs
    overrides = [*args.overrides, *(SMOKE if args.smoke else [])]
    with tempfile.TemporaryDirectory(prefix="subword-vocab-trec-") as tmp:
        models = general_models(vocabs, Path(args.models_dir), Path(tmp) / "general" if args.smoke else None)
        todo = [(args.config, overrides, seed, "subwords", args.data_dir, Path(tmp) / str(v), ("fwd",), str(models[v]))
                for v in vocabs for seed in args.seeds]
        runs = list(run_jobs(run_one, todo, args.jobs, args.threads))
    size_of = {str(folder): v for v, folder in models.items()}
    for r in runs:
        r.pop("folder")
        r["subword_vocab"] = size_of[r["pretrained"]]
        r["pretrained"] = Path(r["pretrained"]).name
    payload = {"config": args.config, "overrides": overrides, "threads": args.threads, "jobs": args.jobs,
               "runs": sorted(runs, key=lambda r: (r["subword_vocab"], r["seed"])), "summary": summarize(runs)}
    if not args.smoke or args.out:
        write_result("subword_vocab_trec", payload, args.out or DEFAULT_OUT)
    print(payload["summary"])
    return payload


if __name__ == "__main__":
    main()
