"""Evidence for the default search space: which parameters matter (Optuna's fANOVA importance) and where
the best trials lie, from the benchmark's searches (or any search folders).

Sources, either or both:

- ``bench/results/search_efficiency.json`` (default): every search's leaderboard (each trial's sampled values,
  status and final validation accuracy), rebuilt as Optuna studies over the default space;
- ``--search DIR ...``: search folders, their stored studies (``optuna.db``).

Only completed trials count: a trial stopped early holds the accuracy of an unfinished model. For each
search: the parameter importances; pooled over all searches: the importances again, and per parameter
the range the best ``--top`` share of trials covers, as a share of the searched range (in log space for
log-scaled parameters), and whether the best trials sit at an edge of the range (then widening it may pay).

    python bench/space_evidence.py                           # the efficiency benchmark's searches
    python bench/space_evidence.py --search runs/search/trec_demo-*   # your own searches
    python bench/space_evidence.py --variants random_fifo    # unbiased samples only
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from common import RESULTS, write_result

METRIC = "valid_accuracy"


def studies_from_result(path: Path, variants: list[str] | None) -> list[tuple[str, Any]]:
    """One in-memory study per benchmark search, rebuilt from its leaderboard's completed trials."""
    import optuna

    from search.space import SearchSpace

    space = SearchSpace.from_dict(None)  # the benchmark searches the default space
    out = []
    for run in json.loads(path.read_text())["runs"]:
        if variants and run["variant"] not in variants:
            continue
        study = optuna.create_study(direction="maximize")
        for row in run["leaderboard"]:
            if row["status"] != "completed" or row.get(METRIC) is None:
                continue
            params = {k: row[k] for k in space.keys if k in row}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: space.param(k).distribution() for k in params}, value=row[METRIC]))
        out.append((f"{run['variant']} seed {run['search_seed']}", study))
    return out


def studies_from_dirs(dirs: list[str]) -> list[tuple[str, Any]]:
    """The stored studies of search folders, completed trials only."""
    import optuna
    from optuna.trial import TrialState

    from search.searcher import load_study

    out = []
    for d in dirs:
        stored = load_study(d)
        study = optuna.create_study(direction=stored.direction.name.lower())
        study.add_trials(stored.get_trials(states=(TrialState.COMPLETE,)))
        out.append((Path(d).name, study))
    return out


def importances(study: Any, seed: int = 0) -> dict[str, float]:
    """fANOVA importances (sum to 1); empty when the study is too small to fit."""
    import optuna

    if len(study.trials) < 4:
        return {}
    return dict(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))


def pooled(studies: list[tuple[str, Any]]) -> Any:
    """Every completed trial of every study in one study (for pooled importances and best regions)."""
    import optuna

    study = optuna.create_study(direction=studies[0][1].direction.name.lower())
    for _, s in studies:
        study.add_trials(s.trials)
    return study


def best_region(study: Any, top: float) -> dict[str, dict[str, Any]]:
    """Per parameter, over the best ``top`` share of trials: the values' range, that range as a share of
    the searched one (log space for log-scaled parameters; share of choices for a choice), and the edge
    of the searched range the best trials touch, if any."""
    import optuna

    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    trials = sorted(study.trials, key=lambda t: sign * t.value)
    best = trials[:max(3, math.ceil(top * len(trials)))]
    out: dict[str, dict[str, Any]] = {}
    for key, dist in best[0].distributions.items():
        values = [t.params[key] for t in best if key in t.params]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            counts = {str(c): values.count(c) for c in dist.choices}
            out[key] = {"counts": counts, "share_of_range": sum(v > 0 for v in counts.values()) / len(dist.choices)}
            continue
        scale = math.log if dist.log else float
        low, high = scale(dist.low), scale(dist.high)
        lo, hi = scale(min(values)), scale(max(values))
        edge = [name for name, at in (("low", lo - low), ("high", high - hi)) if at < 0.05 * (high - low)]
        out[key] = {"min": min(values), "median": sorted(values)[len(values) // 2], "max": max(values),
                    "share_of_range": (hi - lo) / (high - low), "at_edge": edge}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", default=str(RESULTS / "search_efficiency.json"),
                    help="a search_efficiency result (its leaderboards); '' to use only --search")
    ap.add_argument("--variants", nargs="+", help="only these benchmark variants (e.g. random_fifo: unbiased samples)")
    ap.add_argument("--search", nargs="*", default=[], help="search folders (their optuna.db)")
    ap.add_argument("--top", type=float, default=0.2, help="share of best trials that defines the best region")
    ap.add_argument("--out", help="result JSON (default bench/results/space_evidence.json)")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = (studies_from_result(Path(args.result), args.variants) if args.result else []) + \
        studies_from_dirs(args.search)
    studies = [(label, s) for label, s in studies if s.trials]
    if not studies:
        raise SystemExit("no completed trials in the given searches")
    every = pooled(studies)
    payload = {"sources": {"result": args.result or None, "variants": args.variants, "search_dirs": args.search},
               "trials_completed": len(every.trials), "top": args.top,
               "per_search": {label: {"trials": len(s.trials), "importances": importances(s)} for label, s in studies},
               "pooled_importances": importances(every), "best_region": best_region(every, args.top)}
    print(json.dumps({k: payload[k] for k in ("trials_completed", "pooled_importances", "best_region")}, indent=1))
    write_result("space_evidence", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
