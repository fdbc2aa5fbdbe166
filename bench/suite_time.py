"""How long the README's test command takes: ``make test`` (lint, then the suite on two pytest-xdist workers)
timed as a whole, with pytest's own counts and time from its summary line.

    python bench/suite_time.py                 # make test once: ~10 minutes on 2 cores
    python bench/suite_time.py --serial        # then the suite on one worker (pytest -q) too: ~17 minutes more

Run it on an otherwise idle machine: the suite fills both cores. Writes bench/results/suite_time.json (``--out``);
the README's figure for ``make test`` quotes it (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from typing import Any

from common import ROOT, write_result

SERIAL = f"{sys.executable} -m pytest -q -p no:cacheprovider"
# pytest's last line, "620 passed, 3 skipped, 56 warnings in 631.81s (0:10:31)" (between "=" rules unless -q)
SUMMARY = re.compile(r"^=* ?(\d+ \w+.*?) in ([\d.]+)s", re.MULTILINE)


def pytest_summary(output: str) -> dict[str, Any]:
    """Counts by outcome (passed, skipped, failed, error...) and pytest's seconds, from its last summary line."""
    found = SUMMARY.findall(output)
    if not found:
        return {}
    counts, seconds = found[-1]
    return {"counts": {outcome: int(n) for n, outcome in re.findall(r"(\d+) (\w+)", counts)},
            "pytest_seconds": float(seconds)}


def run_timed(label: str, command: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(f"{label}: `{command}` rc={proc.returncode} in {wall:.0f} s", flush=True)
    return {"label": label, "command": command, "returncode": proc.returncode, "wall_seconds": round(wall, 1),
            "loadavg_after": list(os.getloadavg()), **pytest_summary(proc.stdout + proc.stderr)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--command", default="make test", help="the test command to time (default: the README's)")
    ap.add_argument("--serial", action="store_true", help=f"also time the suite on one worker: {SERIAL}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    runs = [run_timed("make test" if args.command == "make test" else "command", args.command)]
    if args.serial:
        runs.append(run_timed("serial", SERIAL))
    payload = {"runs": runs}
    write_result("suite_time", payload, args.out)
    if any(r["returncode"] for r in runs):
        sys.exit("a timed run failed: its figures are not a passing suite's (see the counts in the result)")
    return payload

if __name__ == "__main__":
    main()
