"""Helpers every benchmark shares: where results go, and what machine produced them."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    """Machine, date and versions, stored next to every figure."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other work on the machine slows every timing: kept so a reader can judge the figures.
        "loadavg_1_5_15min": list(os.getloadavg()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def add_step_shape_args(ap: argparse.ArgumentParser) -> None:
    """The training-step shapes the speed benchmarks share (bench/profile_step.py, bench/speed_vs_fastai.py):
    vocabulary, the LM's batch and BPTT, the classifier's batch, document length, BPTT and ``max_seq``."""
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=70)
    ap.add_argument("--clf-bs", type=int, default=32)
    ap.add_argument("--doc-len", type=int, default=230)
    ap.add_argument("--clf-bptt", type=int, default=70)
    ap.add_argument("--max-seq", type=int, default=1400)


def trial_spans(search_dir: Path) -> list[dict[str, float]]:
    """Each trial's start and end (Unix seconds), Ray's ``time_total_s`` (from the last line of its result.json)
    and ``epoch_seconds``: the sum of its epochs' own training and evaluation time (the rest of ``time_total_s``
    is the trial's setup and its reports to Tune)."""
    spans = []
    for path in sorted(Path(search_dir).glob("trial_*/result.json")):
        results = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if results:
            end, total = float(results[-1]["timestamp"]), float(results[-1]["time_total_s"])
            spans.append({"start": end - total, "end": end, "time_total_s": total,
                          "epoch_seconds": sum(float(r.get("epoch_seconds") or 0.0) for r in results)})
    return spans


def use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_jobs(run: Callable[..., Any], jobs: list[tuple], processes: int, threads: int) -> Iterator[Any]:
    """``run(*job)`` for each job, yielded as each finishes: one after the other here, or ``processes`` at a time,
    each process on ``threads`` torch threads."""
    use_threads(threads)
    if processes <= 1:
        for job in jobs:
            yield run(*job)
        return
    import concurrent.futures
    import multiprocessing

    # fresh interpreters (spawn): a forked torch with threads already started can hang
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=use_threads, initargs=(threads,)) as pool:
        for done in concurrent.futures.as_completed([pool.submit(run, *job) for job in jobs]):
            yield done.result()


def write_result(name: str, payload: dict[str, Any], out: str | Path | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "command": " ".join(sys.argv), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {path}")
    return path


def demo_search_config(work: Path, name: str, overrides: list[str], smoke: bool = False,
                       data_dir: str | Path = SHARED_DATASETS):
    """configs/search_trec_demo.yaml with its storage and MLflow store under ``work`` (a scratch folder),
    quiet console output, and ``overrides`` on top. ``smoke`` applies the search's ``--smoke-test`` settings."""
    from search.settings import load_search_config

    work = Path(work)
    base = [f"search.name={name}", f"search.storage={work / 'storage'}", f"search.data_dir={data_dir}",
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}", f"mlflow.artifact_location={work / 'mlartifacts'}",
            "search.verbose=0"]
    return load_search_config(ROOT / "configs" / "search_trec_demo.yaml", base + list(overrides), smoke_test=smoke)


# --- ``--add``: a benchmark run for more seeds merges into the result an earlier run wrote ---------


def earlier_result(out_path: Path, why_not_mergeable: Callable[[dict[str, Any]], str | None]) -> dict[str, Any] | None:
    """The result at ``out_path`` that ``--add`` merges into (None when there is none yet).

    ``why_not_mergeable(old)`` names a setting that differs from this run's, or returns None; a difference
    stops the run before any work, since seeds of different settings must not be averaged together.
    """
    if not out_path.exists():
        return None
    old = json.loads(out_path.read_text())
    problem = why_not_mergeable(old)
    if problem:
        sys.exit(f"--add: {out_path} {problem}; rerun without --add")
    return old


def runs_of_other_seeds(runs: list[dict[str, Any]], seeds: list[int], key: str = "seed") -> list[dict[str, Any]]:
    """The earlier runs this run does not repeat (a seed run again replaces its earlier run)."""
    return [r for r in runs if r[key] not in seeds]


def command_history(old: dict[str, Any]) -> list[dict[str, Any]]:
    """``earlier_commands`` of a merged result: every command whose runs it holds, with date and seeds."""
    return old.get("earlier_commands", []) + [
        {"command": old["command"], "date": old["machine"]["date"], "seeds": old.get("seeds")}]
