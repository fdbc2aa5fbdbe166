"""Low-resource ULMFiT on IMDb, on CPU: one language model, then classifiers from 100, 1,000 and "all"
labeled reviews, against classifiers trained from scratch on the same reviews (the paper's Figure 3).

The run, all through ``ulmfit_core`` (corpus, stages, inference):

1. Fixed, seeded draws from the public files (``--data-dir``, default ../shared/datasets/imdb):
   a labeled pool of ``--all`` training reviews (the "all" budget; capped so that it fits a CPU run,
   not the full 25,000), ``--valid`` further training reviews for validation, and ``--test`` reviews
   of the 25,000-review test set. They are written as CSV and given to the recipe as
   ``data.train/valid/test``.
2. ``prepare_corpus`` once: the vocabulary comes from the language model's text, ``--unlabeled``
   reviews of ``unsup.csv.gz`` plus the labeled pool's texts (training text only: never validation or
   test text).
3. ``ensure_lm`` once on that text from random weights (method ``ulmfit``: an IMDb-only LM) and, with
   ``--pretrained NAME``, once more starting from that general-domain zoo model (method ``general``:
   the paper's general LM + target fine-tuning). With ``--cache-dir`` the draws, corpus and LMs are
   kept, and a rerun with the same LM settings reuses them.
4. For each budget, method (ULMFiT on one of those LMs, or ``classifier.from_scratch``) and learning rate of
   ``--lr-grid``, ``train_classifier`` on the first ``budget`` reviews of the pool; the rate with the
   best validation accuracy is kept for that method and budget, and the other seeds (seeded random
   subsets of the pool) train with it. ``evaluate_split`` on the fixed test draw after each; test
   accuracy never takes part in a choice.

    python bench/imdb_lowshot.py                  # tiny model; about 70 minutes on 2 cores
    python bench/imdb_lowshot.py --smoke          # seconds: tiny slices, checks the script runs
    python bench/imdb_lowshot.py --pretrained general-en-tiny-fwd --methods general --add
                                                  # one more method, merged into the earlier result

Every kept run records its test probabilities (``test_probability_of_second_label``), so runs of other
directions or tokenizers (``--set lm.backwards=true`` with a backward ``--pretrained`` model, or
``--set text.tokenizer=subwords``) can be averaged afterwards by ``bench/imdb_ensembles.py``.

With ``--add`` the run keeps the earlier result's other methods (a method run again replaces its runs);
the draws, sizes, budgets, seeds, rate grid and the tokenized corpus must be the same, or it stops before
training anything.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATASETS, command_history, earlier_result, write_result  # noqa: E402

#: Classifier epochs by budget: a tiny labeled set gets more passes (3 batches of 32 per epoch at 100).
DEFAULT_EPOCHS = {100: 20, 1000: 10}
DEFAULT_EPOCHS_ALL = 6
#: Every method, in the order results list them.
METHODS = ("general", "ulmfit", "scratch")
#: Sizes and rates of the recorded run.
DEFAULTS = {"unlabeled": 14000, "all": 4000, "valid": 500, "test": 3000, "lm_epochs": 3,
            "lm_lr": 0.03, "lm_bs": 32, "lm_drop_mult": 0.1, "lr_grid": [0.01, 0.03, 0.1, 0.3]}


def draw_subsets(data_dir: Path, n_all: int, n_valid: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    """Seeded draws: the labeled pool (first ``n_all`` of a permutation), validation (the next
    ``n_valid``) and a test subset. Returns texts and labels."""
    import numpy as np

    from ulmfit_core.data import read_labeled

    train = read_labeled(data_dir / "imdb" / "train.csv.gz", ["text"], "label")
    test = read_labeled(data_dir / "imdb" / "test.csv.gz", ["text"], "label")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train.texts))
    if n_all + n_valid > len(perm):
        raise SystemExit(f"--all {n_all} + --valid {n_valid} exceed the {len(perm)} training reviews")
    test_idx = np.sort(rng.permutation(len(test.texts))[:n_test])

    def take(src, idx):
        return {"texts": [src.texts[i] for i in idx], "labels": [src.labels[i] for i in idx]}

    return {"pool": take(train, perm[:n_all]), "valid": take(train, perm[n_all:n_all + n_valid]),
            "test": take(test, test_idx), "test_indices": test_idx.tolist()}


def _write_csv(path: Path, part: dict[str, list[str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows(zip(part["labels"], part["texts"]))
    return str(path)


#: A kept run's test probabilities of the second label (``pos``), 6 decimals each, as one string: what
#: bench/imdb_ensembles.py averages across runs (forward and backward, words and subwords) afterwards.
PROBABILITIES = "test_probability_of_second_label"


def encode_probabilities(probs: Any) -> str:
    if probs.shape[1] != 2:
        raise ValueError(f"IMDb is binary; got {probs.shape[1]} classes")
    return " ".join(f"{p:.6f}" for p in probs[:, 1])


def decode_probabilities(text: str) -> list[float]:
    return [float(p) for p in text.split()]


def budget_indices(n_pool: int, budget: int, seed: int) -> list[int]:
    """Which pool reviews a classifier sees: the first ``budget`` for seed 0, else a seeded draw."""
    import numpy as np

    if budget >= n_pool:
        return list(range(n_pool))
    if seed == 0:
        return list(range(budget))
    return sorted(np.random.default_rng(1000 + seed).permutation(n_pool)[:budget].tolist())


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Recipe settings two runs do not share, as ``key: old -> new``. Data paths are left out (the corpus
    itself is compared); a setting the older run's recipe did not have yet counts as its value then:
    ``precision`` was fp32 before the key existed, and other keys added since default to today's
    behaviour."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    before, now = flat(old), flat(new)
    before.setdefault("precision", "fp32")
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(before.keys() & now.keys())
            if not k.startswith("data.") and before[k] != now[k]]


def _summary(runs: list[dict[str, Any]], budgets: list[int], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    for budget in budgets:
        for method in methods:
            mine = [r for r in runs if r["budget"] == budget and r["method"] == method]
            if not mine:
                continue
            acc = [r["test_accuracy"] for r in mine]
            out.append({"method": method, "budget": budget, "n_seeds": len(acc),
                        "test_accuracy_mean": statistics.mean(acc),
                        "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "valid_accuracy_mean": statistics.mean(r["valid_accuracy"] for r in mine),
                        "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine)})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATASETS)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    ap.add_argument("--unlabeled", type=int, default=DEFAULTS["unlabeled"], help="unlabeled reviews for the language model")
    ap.add_argument("--all", type=int, default=DEFAULTS["all"], help='the "all" budget: labeled reviews in the pool (cap)')
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 1000], help="budgets below --all")
    ap.add_argument("--valid", type=int, default=DEFAULTS["valid"],
                    help="training reviews outside the pool, for choosing the shared settings and per-epoch monitoring")
    ap.add_argument("--test", type=int, default=DEFAULTS["test"], help="reviews drawn (seeded) from the 25,000 test reviews")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="classifier seeds (and draws of the labeled reviews) for budgets below --all")
    ap.add_argument("--lm-epochs", type=int, default=DEFAULTS["lm_epochs"])
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch classifiers")
    ap.add_argument("--methods", nargs="+", choices=METHODS,
                    help="which methods to run (default: general when --pretrained is given, ulmfit, scratch); "
                         "without ulmfit the IMDb-only language model is not trained")
    ap.add_argument("--add", action="store_true",
                    help="merge into the earlier result at --out: its other methods are kept, a method run "
                         "again replaces its runs")
    ap.add_argument("--pretrained", help="a zoo model (e.g. general-en-tiny-fwd): adds the 'general' method, "
                                         "ULMFiT on it fine-tuned on the same IMDb text")
    ap.add_argument("--models-dir", default="models", help="where --pretrained is fetched")
    ap.add_argument("--skip-all", action="store_true", help="train no classifier on the whole --all pool")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=DEFAULTS["lr_grid"],
                    help="classifier learning rates tried per method and budget; the best on validation is kept")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path,
                    help="keep the data draws, the tokenized corpus and the language model here, so a rerun with "
                         "the same data and LM settings (other classifier settings) reuses them; default: a temporary folder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe key=value overrides")
    ap.add_argument("--smoke", action="store_true", help="tiny slices: checks the script runs")
    ap.add_argument("--out", help="result JSON (default bench/results/imdb_lowshot.json; smoke writes only with --out)")
    args = ap.parse_args(argv)
    epochs = dict(DEFAULT_EPOCHS)
    extra: list[str] = []
    if args.smoke:
        args.unlabeled, args.all, args.budgets, args.valid, args.test = 100, 60, [20], 20, 40
        args.seeds, args.lm_epochs, args.lr_grid = [0], 1, [0.01, 0.03]
        epochs = {20: 2, 60: 2}
        extra = ["lm.bptt=20", "classifier.bptt=20", "classifier.unfreeze=[1]", "classifier.max_len=200",
                 "text.max_vocab=2000"]

    import torch

    from ulmfit_core import artifacts, inference, stages
    from ulmfit_core.config import load_recipe
    from ulmfit_core.corpus import Split, prepare_corpus

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    base = {
        # data.train/valid/test are the draws below; a data.dataset beside them would be refused (two sources)
        "data": {"unlabeled": str(args.data_dir / "imdb" / "unsup.csv.gz"), "max_unlabeled_rows": args.unlabeled},
        "text": {"max_vocab": 10000, "min_freq": 2},  # the softmax dominates a tiny model's cost on CPU
        "model": {"preset": args.preset},
        # Trained from random weights: a higher rate and smaller batches than fine-tuning uses (more steps
        # per token), and little dropout since millions of tokens meet a model of ~1M weights.
        "lm": {"epochs": args.lm_epochs, "lr": DEFAULTS["lm_lr"], "bs": DEFAULTS["lm_bs"], "bptt": 70,
               "drop_mult": DEFAULTS["lm_drop_mult"]},
        "classifier": {"bs": 32, "bptt": 70, "drop_mult": 0.5, "max_len": 1500},
        "device": "cpu",
    }
    overrides = extra + list(args.overrides)
    budgets = sorted(set(args.budgets + ([] if args.skip_all else [args.all])))
    if args.methods:
        methods = [m for m in METHODS if m in args.methods]
        if "general" in methods and not args.pretrained:
            ap.error("--methods general needs --pretrained (a zoo name or a folder written by launch.py pretrain)")
    else:
        methods = (["general"] if args.pretrained else []) + ["ulmfit"] + ([] if args.no_scratch else ["scratch"])
    out_path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "imdb_lowshot.json"
    same = {"preset": args.preset, "sizes": {"unlabeled": args.unlabeled, "all": args.all, "valid": args.valid,
                                             "test": args.test, "test_of": 25000},
            "budgets": budgets, "seeds": args.seeds, "lr_grid": args.lr_grid}

    def why_not_mergeable(o: dict[str, Any]) -> str | None:
        for key, value in same.items():
            if o.get(key) != value:
                return f"ran with {key} {o.get(key)!r}, this run {value!r}"
        return None

    old = earlier_result(out_path, why_not_mergeable) if args.add else None
    result: dict[str, Any] = {"smoke": args.smoke, "threads": args.threads, **same, "overrides": overrides,
                              "load_average_start": load_start, "complete": False}

    def merged(key: str) -> list[dict[str, Any]]:  # the earlier result's other methods, then this run's
        kept = [r for r in old.get(key, []) if r["method"] not in methods] if old else []
        return kept + result.get(key, [])

    def save() -> None:  # after every classifier, so a run cut short keeps what it finished
        all_methods = [m for m in METHODS if m in methods or any(r["method"] == m for r in merged("runs"))]
        result["summary"] = _summary(merged("runs"), budgets, all_methods)
        result["total_seconds"] = time.perf_counter() - t_start
        result["load_average_end"] = list(os.getloadavg())
        payload = result
        if old:
            payload = {**result, "runs": merged("runs"), "lr_selection": merged("lr_selection"),
                       "chosen_lr": {**{k: v for k, v in old.get("chosen_lr", {}).items()
                                        if k.split("/")[0] not in methods}, **result.get("chosen_lr", {})},
                       "earlier_commands": command_history(old)}
            for key in ("lm", "general_lm"):  # a language model this run did not train is the earlier one
                if key not in result and key in old:
                    payload[key] = old[key]
        if not args.smoke or args.out:
            write_result("imdb_lowshot", payload, out_path)

    with tempfile.TemporaryDirectory() as tmp_s:
        cache = args.cache_dir or Path(tmp_s)
        t0 = time.perf_counter()
        sub = draw_subsets(args.data_dir, args.all, args.valid, args.test)
        # Fixed paths per draw: the LM's cache key includes the data paths.
        data_folder = cache / f"data-{args.all}-{args.valid}-{args.test}"
        data_folder.mkdir(parents=True, exist_ok=True)
        paths = {k: _write_csv(data_folder / f"{k}.csv", sub[k]) for k in ("pool", "valid", "test")}
        base["data"].update(train=paths["pool"], valid=paths["valid"], test=paths["test"])
        cfg = load_recipe(None, overrides + ["seed=0"], base=base)
        corpus = prepare_corpus(cfg, data_dir=args.data_dir, cache_dir=cache / "corpus")
        result["data_seconds"] = time.perf_counter() - t0
        result["corpus"] = corpus.stats
        # What bench/imdb_ensembles.py grades the averaged members against (and checks members share).
        result["label_names"] = list(corpus.label_names)
        result["test_labels"] = "".join(str(int(y)) for y in corpus.test.labels)
        result["config"] = cfg.to_dict()
        print(f"corpus: {corpus.stats}  ({result['data_seconds']:.0f} s)", flush=True)
        if old and old.get("corpus") != corpus.stats:
            raise SystemExit(f"--add: {out_path} used another corpus ({old.get('corpus')}, now {corpus.stats}); "
                             "rerun without --add")
        differences = recipe_differences(old["config"], cfg.to_dict()) if old else []
        if differences:
            raise SystemExit(f"--add: {out_path} ran another recipe ({'; '.join(differences)}); "
                             "pass the same settings with --set, or rerun without --add")

        lm_dirs: dict[str, Path] = {}
        if "ulmfit" in methods:
            t0 = time.perf_counter()
            lm = stages.ensure_lm(cfg, corpus, cache / "lm",
                                  report=lambda m, _: print(f"  LM epoch {m['epoch']}: valid loss {m['valid_loss']:.3f} "
                                                            f"acc {m['valid_accuracy']:.3f} ({m['epoch_seconds']:.0f} s)",
                                                            flush=True))
            lm_info = artifacts.read_json(lm.lm_dir / artifacts.METRICS_FILE)  # written when the LM trained
            result["lm"] = {"seconds": lm_info["seconds"], "reused": not lm.trained,
                            "metrics": lm.metrics, "history": lm_info["history"],
                            "tokens_per_epoch": int(sum(len(d) for d in corpus.lm_train)),
                            "load_average": list(os.getloadavg())}
            print(f"LM: {result['lm']['seconds']:.0f} s{' (reused)' if not lm.trained else ''}, valid perplexity "
                  f"{lm.metrics.get('valid_perplexity', 0):.1f}, accuracy {lm.metrics.get('valid_accuracy', 0):.3f}",
                  flush=True)
            result["lm_only_seconds"] = time.perf_counter() - t0
            lm_dirs["ulmfit"] = lm.lm_dir
        if "general" in methods:
            # Fine-tuning a general-domain LM: fastai's usual rate (1e-2) and one frozen epoch first; the
            # random start above keeps its higher rate. Neither choice looked at test text.
            gcfg = load_recipe(None, overrides + ["seed=0", f"lm.pretrained={args.pretrained}", "lm.lr=0.01"], base=base)
            glm = stages.ensure_lm(gcfg, corpus, cache / "lm", models_dir=args.models_dir,
                                   report=lambda m, _: print(f"  general LM epoch {m['epoch']}: valid loss "
                                                             f"{m['valid_loss']:.3f} acc {m['valid_accuracy']:.3f} "
                                                             f"({m['epoch_seconds']:.0f} s)", flush=True))
            ginfo = artifacts.read_json(glm.lm_dir / artifacts.METRICS_FILE)
            result["general_lm"] = {"pretrained": args.pretrained, "seconds": ginfo["seconds"], "reused": not glm.trained,
                                    "metrics": glm.metrics, "history": ginfo["history"],
                                    "load_average": list(os.getloadavg())}
            print(f"general LM: {ginfo['seconds']:.0f} s, valid perplexity {glm.metrics.get('valid_perplexity', 0):.1f}, "
                  f"accuracy {glm.metrics.get('valid_accuracy', 0):.3f}", flush=True)
            lm_dirs["general"] = glm.lm_dir

        runs: list[dict[str, Any]] = []
        grid: list[dict[str, Any]] = []
        result.update(runs=runs, lr_grid=args.lr_grid, lr_selection=grid, chosen_lr={})

        def train_one(method: str, budget: int, seed: int, lr: float) -> dict[str, Any]:
            n_ep = epochs.get(budget, DEFAULT_EPOCHS_ALL)
            idx = budget_indices(len(corpus.train.ids), budget, seed)
            c_b = dataclasses.replace(corpus, train=Split([corpus.train.ids[i] for i in idx],
                                                                   corpus.train.labels[idx]))
            ov = overrides + [f"seed={seed}", f"classifier.epochs={n_ep}", f"classifier.lr={lr}"]
            if method == "scratch":
                ov.append("classifier.from_scratch=true")
            ccfg = load_recipe(None, ov, base=base)
            out = Path(tmp_s) / f"{method}_{budget}_{seed}_{lr}"
            t0 = time.perf_counter()
            clf = stages.train_classifier(ccfg, c_b, lm_dirs.get(method), out)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            test, probs = inference.split_report_and_proba(out, corpus.test, device="cpu")
            shutil.rmtree(out, ignore_errors=True)
            run = {"method": method, "budget": budget, "seed": seed, "lr": lr, "epochs": n_ep,
                   "from_scratch": ccfg.classifier.from_scratch,
                   "n_pos": int(sum(1 for i in idx if corpus.label_names[corpus.train.labels[i]] == "pos")),
                   "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                   PROBABILITIES: encode_probabilities(probs),
                   "valid_accuracy": clf.metrics["valid_accuracy"],
                   "valid_accuracy_by_epoch": [h["valid_accuracy"] for h in clf.history],
                   "train_loss_by_epoch": [h["train_loss"] for h in clf.history],
                   "train_seconds": train_s, "test_seconds": time.perf_counter() - t0,
                   "load_average": list(os.getloadavg())}
            print(f"{method:7s} budget {budget:>5} seed {seed} lr {lr:g}: test accuracy {run['test_accuracy']:.4f}  "
                  f"valid {run['valid_accuracy']:.4f}  train {train_s:.0f} s", flush=True)
            return run

        for budget in budgets:
            seeds = args.seeds if budget < args.all or args.skip_all else args.seeds[:1]
            for method in methods:
                # The learning rate is chosen per method and budget on the validation reviews, with the
                # first seed; its test accuracy is recorded but plays no part in the choice.
                tried = [train_one(method, budget, seeds[0], lr) for lr in args.lr_grid]
                best = max(tried, key=lambda r: r["valid_accuracy"])
                grid.extend({**{k: v for k, v in r.items() if k != PROBABILITIES}, "chosen": r is best} for r in tried)
                result["chosen_lr"][f"{method}/{budget}"] = best["lr"]
                runs.append(best)
                save()
                for seed in seeds[1:]:
                    runs.append(train_one(method, budget, seed, best["lr"]))
                    save()
    result["complete"] = True
    save()
    for s in result["summary"]:
        print(f"{s['method']:7s} {s['budget']:>5}: {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_sd']:.4f} "
              f"({s['n_seeds']} seed(s))")
    print(f"total {result['total_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
