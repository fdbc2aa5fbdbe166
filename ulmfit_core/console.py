"""What the command-line tools print while training and after: one line per epoch, a results table."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def epoch_printer(stage: str) -> Callable[[dict[str, float], Path | None], None]:
    """A ``report`` callback printing ``[stage] epoch N: key=value ...`` after every epoch."""

    def report(metrics: dict[str, float], _checkpoint: Path | None = None) -> None:
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float))
        print(f"[{stage}] epoch {int(metrics['epoch'])}: {shown}", flush=True)

    return report


def metrics_table(title: str, metrics: Mapping[str, Any]) -> str:
    """``title`` and one aligned ``name  value`` line per number or string (floats to 4 decimals)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)])
