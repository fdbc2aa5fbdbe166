"""Where ASHA decides (``search.scheduler.rungs``), computed from the recipe: no Ray here, so the config
can be validated without starting it. The schedulers themselves are in ``search/schedulers.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from search.errors import fail
from search.settings import UNFREEZE_RUNGS
from ulmfit_core.config import RecipeConfig, recipe_from_dict

if TYPE_CHECKING:
    from search.settings import SearchConfig

#: Searched keys that change a trial's unfreezing schedule: ``rungs: unfreeze`` needs one schedule for all.
SCHEDULE_KEYS = ("classifier.epochs", "classifier.unfreeze", "classifier.from_scratch", "model.")


def unfreeze_rungs(recipe: RecipeConfig) -> list[int]:
    """The epochs (1-based, as trials report them) at which the recipe's gradual-unfreezing phases end;
    the last is the final epoch. E.g. 4 layer groups, ``unfreeze: [1, 1]``, 8 epochs: ``[1, 2, 8]``."""
    from ulmfit_core.awd_lstm import classifier_group_count  # torch: imported only for these rungs
    from ulmfit_core.schedule import unfreeze_phases

    cc = recipe.classifier
    n_groups = classifier_group_count(recipe.model.n_layers)
    phases = unfreeze_phases(n_groups, [] if cc.from_scratch else cc.unfreeze, cc.epochs)
    return [p.first_epoch + p.epochs for p in phases]


def asha_rungs(cfg: SearchConfig) -> list[int] | None:
    """ASHA's decision points from ``search.scheduler.rungs`` (None: Ray's own), always ending at ``max_t``;
    rungs before ``grace_period`` are dropped (no trial is stopped that young)."""
    sched = cfg.search.scheduler
    if sched.type != "asha" or sched.rungs is None:
        return None
    wanted = unfreeze_rungs(recipe_from_dict(cfg.recipe)) if sched.rungs == UNFREEZE_RUNGS else list(sched.rungs)
    return sorted({r for r in wanted if sched.grace_period <= r < cfg.max_t} | {cfg.max_t})


def check_scheduler(cfg: SearchConfig) -> None:
    """Scheduler settings that need the recipe and the space; raises ``SearchConfigError`` naming the key."""
    sched = cfg.search.scheduler
    if sched.rungs == UNFREEZE_RUNGS:
        varying = [k for k in cfg.space.keys if k.startswith(SCHEDULE_KEYS)]
        if varying:
            fail("search.scheduler.rungs", f"'unfreeze' needs one unfreezing schedule for every trial, but the "
                                           f"space searches {', '.join(varying)}; give the rungs as epochs "
                                           f"([2, 4]) or fix those keys in the recipe")
    if isinstance(sched.rungs, list) and sched.rungs[-1] > cfg.max_t:
        fail("search.scheduler.rungs", f"epoch {sched.rungs[-1]} is past the last epoch a trial runs "
                                       f"({cfg.max_t}); list epochs up to {cfg.max_t}")
    rungs = asha_rungs(cfg)
    if rungs is not None:
        decisions = rungs[:-1]  # the final rung stops nobody: every trial ends there anyway
        if len(decisions) < sched.brackets:
            fail("search.scheduler.rungs", f"{sched.rungs!r} gives decision points {decisions} (epochs >= "
                                           f"grace_period {sched.grace_period}, before the last epoch "
                                           f"{cfg.max_t}): too few for {sched.brackets} bracket(s). Lower "
                                           f"grace_period, list more epochs, or use scheduler.type: fifo")
    if sched.type == "hyperband" and cfg.max_t < sched.reduction_factor:
        fail("search.scheduler.reduction_factor", f"HyperBand needs max_t ({cfg.max_t} epochs) >= "
                                                  f"reduction_factor ({sched.reduction_factor}) to stop anything; "
                                                  f"lower it (2 halves the trials at each milestone)")
