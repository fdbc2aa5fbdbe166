"""What the command-line tools print while training and after: one line per epoch, a results table,
and the one-line message of an error the user can fix."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

#: Errors caused by what the user gave (a value, a file, a folder), whose message names it and the fix: the
#: command-line tools print that message as one line and exit with :data:`USER_ERROR_EXIT`, no traceback.
#: ``ValueError`` covers ConfigError, DataError, ArtifactError (and PretrainedError), ZooError,
#: SearchConfigError and ResumeMismatch; ``FloatingPointError`` is a diverged loss (train.py); the OS errors
#: are outputs that cannot be written and inputs that are not there.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FloatingPointError, FileNotFoundError, PermissionError,
                                                NotADirectoryError, IsADirectoryError)
USER_ERROR_EXIT = 2


def report_user_error(error: BaseException) -> int:
    """Print ``error: MESSAGE`` as one line on stderr; returns :data:`USER_ERROR_EXIT`."""
    lines = (line.strip() for line in str(error).splitlines())
    print("error: " + " ".join(line for line in lines if line), file=sys.stderr)
    return USER_ERROR_EXIT


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line like every other user error (argparse's own
    print the whole usage first): the command, what is wrong, and where the choices are listed."""

    def error(self, message: str) -> "NoReturn":  # noqa: UP037 (argparse's signature)
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)


def epoch_printer(stage: str) -> Callable[[dict[str, float], Path | None], None]:
    """A ``report`` callback printing ``[stage] epoch N/TOTAL (frozen): key=value ...`` after every epoch.

    The total counts every epoch the stage trains: a language model fine-tuned from a pretrained start first
    trains ``lm.freeze_epochs`` frozen epochs (its embeddings and decoder only), then ``lm.epochs``; the
    classifier's first epochs train only its top layer groups (gradual unfreezing)."""

    def report(metrics: dict[str, float], _checkpoint: Path | None = None) -> None:
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float))
        print(f"[{stage}] {epoch_label(stage, metrics)}: {shown}", flush=True)

    return report


def epoch_label(stage: str, metrics: Mapping[str, Any]) -> str:
    """``epoch 1/5 (frozen)``, ``epoch 2/8 (top 2 of 4 layer groups)``, ``epoch 5/8``, or ``epoch 3`` without a total."""
    total, trainable, groups = (metrics.get(k) for k in ("epochs_total", "trainable_groups", "layer_groups"))
    label = f"epoch {int(metrics['epoch'])}" + (f"/{int(total)}" if total else "")
    if trainable and groups and trainable < groups:
        label += " (frozen)" if stage == "lm" else f" (top {int(trainable)} of {int(groups)} layer groups)"
    return label


def metrics_table(title: str, metrics: Mapping[str, Any]) -> str:
    """``title`` and one aligned ``name  value`` line per number or string (floats to 4 decimals)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)])
