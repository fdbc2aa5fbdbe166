"""Trial schedulers: ASHA (at its own rungs, or at the epochs where the recipe changes), HyperBand, FIFO.

The time unit is the classifier epoch (``trainable.EPOCH``). Three choices, ``search.scheduler.type``:

* ``asha`` (default): Ray's ``ASHAScheduler``. Its decision points (rungs) are ``grace_period x
  reduction_factor**k`` epochs; ``scheduler.rungs`` replaces them (:class:`MilestoneASHA`):
  ``unfreeze`` puts them at the end of each gradual-unfreezing phase (``search.rungs.unfreeze_rungs``), where
  every trial has just finished an STLR cycle and a recipe stage, so trials are compared at like
  points; a list such as ``[2, 4]`` gives them explicitly. The last epoch is always the final rung.
* ``hyperband``: Ray's ``HyperBandForBOHB``, HyperBand's brackets with trials *paused* at each
  milestone until the bracket's other trials reach it. Unlike Ray's ``HyperBandScheduler``, it tells
  the searcher about pauses and can run a bracket that is not full, so it works behind a searcher that
  proposes trials one at a time; :class:`RunningTrialLimiter` lets paused trials free their slot.
* ``fifo``: no early stopping (the baseline).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.result import DONE
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, HyperBandForBOHB, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import ConcurrencyLimiter, Searcher

from search import trainable as T
from search.rungs import asha_rungs

if TYPE_CHECKING:
    from search.settings import SearchConfig

logger = logging.getLogger(__name__)

class MilestoneASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs are given epochs instead of ``grace_period x reduction_factor**k``.

    Ray's ``_Bracket`` derives its rungs in its constructor; each bracket here is built as Ray's and then
    given the milestones (bracket ``s`` starts at the ``s``-th, as Ray's brackets start one rung later
    each). Everything else -- the cutoff (the ``1 - 1/reduction_factor`` quantile of a rung's recorded
    results), asynchronous promotion, stopping at ``max_t`` -- is Ray's.
    """

    def __init__(self, milestones: Sequence[int], *, time_attr: str, metric: str, mode: str,
                 reduction_factor: float, brackets: int = 1):
        milestones = sorted(int(m) for m in milestones)
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=milestones[-1],
                         grace_period=milestones[0], reduction_factor=reduction_factor, brackets=brackets)
        self.milestones = tuple(milestones)
        for s, bracket in enumerate(self._brackets):
            bracket._rungs = [(m, {}) for m in reversed(milestones[s:])]  # _Bracket keeps them latest first

    @staticmethod
    def rungs_of(bracket: _Bracket) -> list[int]:
        return sorted(m for m, _ in bracket._rungs)


class HyperBand(HyperBandForBOHB):
    """Ray's ``HyperBandForBOHB``, except that a trial it stops while paused ends like one stopped while
    running: its last result is marked ``done`` (Ray marks only a running trial's), so the leaderboard and
    MLflow see it stopped early (or completed, when it had run all its epochs) rather than interrupted."""

    def _process_bracket(self, tune_controller, bracket) -> str:
        return super()._process_bracket(_MarkDoneOnStop(tune_controller), bracket)


class _MarkDoneOnStop:
    """The controller HyperBand stops trials through, marking a paused trial's last result done first.

    Ray 2.60 also leaves a trial stopped while paused (it has no actor) out of the next experiment-state
    save, so the saved state keeps it PAUSED and a later ``ExperimentAnalysis`` (export) or resume would
    not see it ended: it is queued for that save here."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def stop_trial(self, trial: Trial) -> None:
        paused = trial.status == Trial.PAUSED
        if paused and trial.last_result:
            trial.last_result[DONE] = True
        self._controller.stop_trial(trial)
        if paused:  # Ray's scheduler-facing wrapper hides this method; the controller behind it has it
            getattr(self._controller, "_tune_controller", self._controller)._mark_trial_to_checkpoint(trial)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


class RunningTrialLimiter(ConcurrencyLimiter):
    """At most ``max_concurrent`` *running* trials: a trial HyperBand pauses frees its slot.

    Ray's limiter counts a paused trial as live, so once ``max_concurrent`` trials wait at a milestone
    no new trial is proposed and the bracket never fills. The searcher still hears of every trial's end,
    including one HyperBand stops while it is paused.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()

    def on_pause(self, trial_id: str) -> None:
        super().on_pause(trial_id)
        if trial_id in self.live_trials:
            self.live_trials.discard(trial_id)
            self.paused.add(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        super().on_unpause(trial_id)
        if trial_id in self.paused:
            self.paused.discard(trial_id)
            self.live_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.paused:  # stopped while paused: the base class ignores trials it does not count
            self.paused.discard(trial_id)
            self.live_trials.add(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)


def make_scheduler(cfg: SearchConfig) -> TrialScheduler:
    """The configured scheduler, with the classifier epoch as its time unit."""
    s = cfg.search
    sched = s.scheduler
    if sched.type == "fifo":
        return FIFOScheduler()
    if sched.type == "hyperband":
        if sched.grace_period != 1:
            logger.warning("search.scheduler.grace_period is ASHA's; HyperBand's smallest budget is "
                           "max_t / reduction_factor**s (%s epochs here)", cfg.max_t)
        return HyperBand(time_attr=T.EPOCH, metric=s.metric, mode=s.mode, max_t=cfg.max_t,
                                reduction_factor=sched.reduction_factor, stop_last_trials=True)
    rungs = asha_rungs(cfg)
    if rungs is not None:
        return MilestoneASHA(rungs, time_attr=T.EPOCH, metric=s.metric, mode=s.mode,
                             reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    return AsyncHyperBandScheduler(time_attr=T.EPOCH, metric=s.metric, mode=s.mode, max_t=cfg.max_t,
                                   grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
                                   brackets=sched.brackets)


def make_limiter(cfg: SearchConfig, searcher: Searcher) -> ConcurrencyLimiter:
    """Ray's limiter, or the pause-aware one HyperBand needs."""
    limiter = RunningTrialLimiter if cfg.search.scheduler.type == "hyperband" else ConcurrencyLimiter
    return limiter(searcher, max_concurrent=cfg.search.max_concurrent)
