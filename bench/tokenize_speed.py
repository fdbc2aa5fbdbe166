"""Tokenizing speed, one process against several (this one plus worker processes), on IMDb reviews.

The corpus is IMDb's train, unlabeled and test reviews (100,000), read with the recipe's own readers. For
each size (a prefix of the corpus) it tokenizes once in this process (``Tokenizer(n_workers=1)``) and once
split among ``--workers`` processes (the size threshold switched off so they really run; worker start-up
included), checks the two outputs are identical, and reports documents per second. Sizes where several
processes lose show where ``ulmfit_core.text.PARALLEL_MIN_CHARS`` should sit. Rounds alternate the order
of the two modes.

    python bench/tokenize_speed.py                     # sizes 2k, 8k, 25k, 100k reviews, 2 workers: ~5 min on 2 cores
    python bench/tokenize_speed.py --smoke             # 400 reviews of train: seconds, for the tests

Writes bench/results/tokenize_speed.json (``--out``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from common import SHARED_DATASETS, write_result  # puts the repository root on sys.path

from ulmfit_core import text
from ulmfit_core.data import read_labeled, read_unlabeled
from ulmfit_core.text import Tokenizer


def imdb_reviews(data_dir: Path, limit: int) -> list[str]:
    """Up to ``limit`` reviews: train, then unlabeled, then test (the order prepare_corpus reads them)."""
    imdb = data_dir / "imdb"
    texts: list[str] = list(read_labeled(imdb / "train.csv.gz", ["text"], "label").texts)
    if len(texts) < limit:
        texts += read_unlabeled(imdb / "unsup.csv.gz")
    if len(texts) < limit:
        texts += read_labeled(imdb / "test.csv.gz", ["text"], "label").texts
    return texts[:limit]


def time_mode(texts: list[str], workers: int) -> tuple[float, list[list[str]]]:
    """Wall seconds to tokenize ``texts`` with ``workers`` processes (worker start-up included)."""
    tok = Tokenizer(n_workers=workers)
    t0 = time.perf_counter()
    tokens = tok.tokenize(texts)
    return time.perf_counter() - t0, tokens


def measure_size(texts: list[str], workers: int, rounds: int) -> dict[str, Any]:
    single, pool = [], []
    identical = True
    for r in range(rounds):
        order = [1, workers] if r % 2 == 0 else [workers, 1]
        results = {}
        for w in order:
            seconds, tokens = time_mode(texts, w)
            (single if w == 1 else pool).append(seconds)
            results[w] = tokens
        identical = identical and results[1] == results[workers]
    row = {"docs": len(texts), "chars": sum(map(len, texts)), "tokens": sum(map(len, results[1])),
           "single_seconds": single, "pool_seconds": pool, "identical": identical,
           "single_docs_per_s": len(texts) / statistics.median(single),
           "pool_docs_per_s": len(texts) / statistics.median(pool), "load_after": list(os.getloadavg())}
    row["speedup"] = row["pool_docs_per_s"] / row["single_docs_per_s"]
    print(f"{row['docs']:>7,} reviews ({row['chars'] / 1e6:6.1f} M chars): one process {row['single_docs_per_s']:>7,.0f} "
          f"docs/s, {workers} processes {row['pool_docs_per_s']:>7,.0f} docs/s ({row['speedup']:.2f}x); identical: "
          f"{identical}; load {row['load_after'][0]:.1f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000, 8_000, 25_000, 100_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="measurements per size and mode (order alternates)")
    ap.add_argument("--data-dir", default=str(SHARED_DATASETS))
    ap.add_argument("--out", help="result JSON (default bench/results/tokenize_speed.json; smoke writes only with --out)")
    ap.add_argument("--smoke", action="store_true", help="400 reviews: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.rounds = [400], 1

    t0 = time.perf_counter()
    corpus = imdb_reviews(Path(args.data_dir), max(args.sizes))
    read_seconds = time.perf_counter() - t0
    threshold = text.PARALLEL_MIN_CHARS
    text.PARALLEL_MIN_CHARS = 0  # measure several processes at every size, also where the recipe would not
    try:
        rows = [measure_size(corpus[:n], args.workers, args.rounds) for n in args.sizes if n <= len(corpus)]
    finally:
        text.PARALLEL_MIN_CHARS = threshold
    wins = [r["chars"] for r in rows if r["speedup"] > 1.0]
    payload = {"smoke": args.smoke, "workers": args.workers, "rounds": args.rounds, "corpus": "IMDb train + unlabeled + test",
               "read_seconds": read_seconds, "parallel_min_chars": threshold,
               "smallest_winning_chars": min(wins) if wins else None, "sizes": rows,
               "total_seconds": time.perf_counter() - t0}
    if not args.smoke or args.out:
        write_result("tokenize_speed", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
