"""Ensembles of the low-shot IMDb runs: forward + backward, words + subwords, all four, from their results.

Each member is one ``bench/imdb_lowshot.py`` result (a direction and a tokenizer), run with the same draws,
budgets, seeds and rate grid; every kept run records its test probabilities. For each budget and seed that
all the given members ran (``--method``, default ``general``), the members' probabilities are averaged and
graded on the same fixed test draw, as ``launch.py evaluate --ensemble`` averages model folders. No
ensemble is chosen by test accuracy: the combinations are fixed below.

    python bench/imdb_lowshot.py --methods general --budgets 100 1000 --skip-all --set precision=fp32 \\
        --pretrained general-en-tiny-bwd --set lm.backwards=true --out bench/results/imdb_lowshot_bwd.json
    python bench/imdb_ensembles.py --member words-fwd=bench/results/imdb_lowshot.json \\
        --member words-bwd=bench/results/imdb_lowshot_bwd.json \\
        --member subwords-fwd=bench/results/imdb_lowshot_subwords.json \\
        --member subwords-bwd=bench/results/imdb_lowshot_subwords_bwd.json

Combinations graded: each tokenizer's ``fwd+bwd`` where both are given, ``words+subwords`` per direction, and
all members together.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from common import RESULTS, write_result
from imdb_lowshot import PROBABILITIES, decode_probabilities

DEFAULT_OUT = RESULTS / "imdb_ensembles.json"
#: What members of one ensemble must share: the same draws, budgets, seeds and rate grid.
SHARED = ("sizes", "budgets", "seeds", "lr_grid", "label_names", "test_labels")


def read_member(spec: str) -> tuple[str, dict[str, Any]]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"--member {spec!r}: write NAME=RESULT.json, e.g. words-bwd=bench/results/imdb_lowshot_bwd.json")
    result = json.loads(Path(path).read_text())
    if "test_labels" not in result:
        raise SystemExit(f"--member {name}: {path} records no test probabilities (made before they were kept); "
                         "rerun bench/imdb_lowshot.py for it")
    return name, result


def combinations(names: list[str]) -> list[tuple[str, ...]]:
    """The fixed ensembles: pairs that differ in exactly one of tokenizer / direction, and all members."""
    combos = []
    for a, b in itertools.combinations(names, 2):
        ta, _, da = a.partition("-")
        tb, _, db = b.partition("-")
        if (ta == tb) != (da == db):
            combos.append((a, b))
    if len(names) > 2:
        combos.append(tuple(names))
    return combos


def accuracy(probs: list[float], labels: str) -> float:
    return sum((p > 0.5) == (y == "1") for p, y in zip(probs, labels)) / len(labels)


def grade(members: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    first_name, first = next(iter(members.items()))
    for name, r in members.items():
        differ = [k for k in SHARED if r.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--member {name} ran other {', '.join(differ)} than {first_name}: an ensemble needs "
                             "the same draws, budgets, seeds and rate grid")
    labels = first["test_labels"]
    runs = {name: {(x["budget"], x["seed"]): x for x in r["runs"] if x["method"] == method and PROBABILITIES in x}
            for name, r in members.items()}
    keys = sorted(set.intersection(*(set(v) for v in runs.values())))
    if not keys:
        raise SystemExit(f"no budget and seed that every member ran with method {method!r}")
    rows = []
    for budget, seed in keys:
        row: dict[str, Any] = {"budget": budget, "seed": seed,
                               "members": {n: runs[n][(budget, seed)]["test_accuracy"] for n in members}}
        probs = {n: decode_probabilities(runs[n][(budget, seed)][PROBABILITIES]) for n in members}
        for n in members:  # the kept probabilities are what each run graded (to 6 decimals: one at 0.5 may flip)
            ties = sum(p == 0.5 for p in probs[n])
            if abs(accuracy(probs[n], labels) - row["members"][n]) * len(labels) > ties + 1e-6:
                raise SystemExit(f"--member {n}: budget {budget} seed {seed}: its probabilities do not give its "
                                 "recorded accuracy")
        row["ensembles"] = {"+".join(c): accuracy([statistics.mean(ps) for ps in zip(*(probs[n] for n in c))], labels)
                            for c in combinations(list(members))}
        rows.append(row)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        mine = [r for r in rows if r["budget"] == budget]
        for kind in ("members", "ensembles"):
            for name in mine[0][kind]:
                acc = [r[kind][name] for r in mine]
                out.append({"budget": budget, "name": name, "ensemble": kind == "ensembles", "n_seeds": len(acc),
                            "test_accuracy_mean": statistics.mean(acc),
                            "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--member", dest="members", action="append", required=True,
                    help="NAME=RESULT.json, NAME as TOKENIZER-DIRECTION (words-fwd, subwords-bwd, ...); two or more")
    ap.add_argument("--method", default="general", help="which method's runs to combine")
    ap.add_argument("--out", help=f"result JSON (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    members = dict(read_member(m) for m in args.members)
    if len(members) < 2:
        ap.error("give at least two --member results")
    payload = {"method": args.method, "members": {n: m.partition("=")[2] for n, m in zip(members, args.members)},
               **grade(members, args.method)}
    write_result("imdb_ensembles", payload, args.out or DEFAULT_OUT)
    for s in payload["summary"]:
        print(f"{s['budget']:>5} {s['name']:40s} {100 * s['test_accuracy_mean']:.1f} ± {100 * s['test_accuracy_sd']:.1f}")
    return payload


if __name__ == "__main__":
    main()
