"""Trial schedulers: ASHA at the search's rungs (``search/rungs.py``), or FIFO (no early stopping).

:class:`Asha` is asynchronous successive halving (Li et al. 2020) written on Ray Tune's public
``TrialScheduler`` interface (``FIFOScheduler``'s hooks; ``on_trial_result`` answers CONTINUE or STOP),
at any list of rungs: ASHA's own ``grace_period x reduction_factor**k``, the ends of the unfreezing phases,
or given epochs. It decides as Ray's ``ASHAScheduler`` does: when a trial first reports an epoch at or past
a rung, it is stopped if its metric is below the ``1 - 1/reduction_factor`` quantile of what earlier trials
recorded there (the best ``1/reduction_factor`` go on); with several brackets, trials are dealt to them in
turn and bracket ``s`` starts at the ``s``-th rung. The time unit is the classifier epoch (``outcome.EPOCH``).
A trial is known by its Optuna number (its config's ``optuna_trial``), which stays when a resumed search runs
it again under a new Ray id; a resumed search's ASHA is seeded with what the study recorded (:meth:`Asha.seed`).

HyperBand is not offered: Ray's pauses it relies on needed patches of Ray's internals, and in the search
benchmark it did no better than ASHA at the unfreezing rungs (docs/SEARCH.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.outcome import EPOCH
from search.rungs import asha_rungs
from search.trainable import OPTUNA_NUMBER

if TYPE_CHECKING:
    from search.settings import SearchConfig


class Asha(FIFOScheduler):
    """ASHA whose decision points are ``rungs`` (epochs, lowest first; the last is where trials end)."""

    def __init__(self, rungs: Sequence[int], *, metric: str, mode: str, reduction_factor: float, brackets: int = 1):
        super().__init__()
        if not rungs or mode not in ("min", "max") or reduction_factor <= 1 or brackets < 1:
            raise ValueError(f"ASHA needs rungs, mode min|max, reduction_factor > 1 and brackets >= 1; got "
                             f"{list(rungs)}, {mode}, {reduction_factor}, {brackets}")
        self.rungs = sorted(int(r) for r in rungs)
        self.by, self.order, self.reduction_factor = metric, mode, float(reduction_factor)  # the search's metric, mode
        decisions = self.rungs[:-1]
        #: per bracket: {rung: {trial: value recorded there}}; bracket s starts at the s-th decision
        self.recorded: list[dict[int, dict[Any, float]]] = [{r: {} for r in decisions[s:]} for s in range(brackets)]
        self.bracket_of: dict[Any, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # set when built, from the search config

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._bracket(_key(trial))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.decide(_key(trial), result)

    def seed(self, values: dict[Any, dict[int, float]]) -> None:
        """A resumed search: record what earlier runs reported (``{trial: {epoch: value}}``, the study's
        intermediate values) at the rungs they reached, so a trial run again is not judged twice and the
        others are judged against every trial, as if the search had never stopped."""
        for trial in sorted(values):
            for epoch, value in sorted(values[trial].items()):
                self.decide(trial, {EPOCH: epoch, self.by: value})

    def _bracket(self, trial: Any) -> dict[int, dict[Any, float]]:
        return self.recorded[self.bracket_of.setdefault(trial, len(self.bracket_of) % len(self.recorded))]

    def decide(self, trial: Any, result: dict) -> str:
        """CONTINUE or STOP for a trial's result (``epoch`` and the metric); records it at its rung."""
        epoch, value = result.get(EPOCH), result.get(self.by)
        if epoch is None or value is None:
            return TrialScheduler.CONTINUE
        score = float(value) if self.order == "max" else -float(value)
        bracket = self._bracket(trial)
        for rung in sorted(bracket, reverse=True):  # the highest rung reached and not yet recorded
            recorded = bracket[rung]
            if epoch >= rung and trial not in recorded:
                cutoff = self.cutoff(recorded)
                recorded[trial] = score
                if cutoff is not None and score < cutoff:
                    return TrialScheduler.STOP
                break
        return TrialScheduler.CONTINUE

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        """The score the best ``1/reduction_factor`` of the trials recorded at a rung reached."""
        values = [v for v in recorded.values() if np.isfinite(v)]
        return float(np.percentile(values, (1 - 1 / self.reduction_factor) * 100)) if values else None

    def debug_string(self) -> str:
        return f"ASHA at epochs {self.rungs}: " + "; ".join(
            f"bracket {s}: " + ", ".join(f"{r}: {len(v)}" for r, v in sorted(b.items()))
            for s, b in enumerate(self.recorded))


def _key(trial: Any) -> Any:
    """A trial's identity for ASHA: its Optuna number (kept across a resume), else its Ray id."""
    number = (getattr(trial, "config", None) or {}).get(OPTUNA_NUMBER)
    return trial.trial_id if number is None else int(number)


def make_scheduler(cfg: SearchConfig) -> TrialScheduler:
    """The configured scheduler, with the classifier epoch as its time unit."""
    s = cfg.search
    if s.scheduler.type == "fifo":
        return FIFOScheduler()
    return Asha(asha_rungs(cfg), metric=s.metric, mode=s.mode, reduction_factor=s.scheduler.reduction_factor,
                brackets=s.scheduler.brackets)
