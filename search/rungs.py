"""Where ASHA decides: the one place that computes a search's rungs, for the scheduler and the plot alike.

The time unit is the classifier epoch. By default the rungs are ASHA's, ``grace_period x
reduction_factor**k`` up to the last epoch (as Ray's ``ASHAScheduler`` puts them); ``search.scheduler.rungs``
replaces them: ``unfreeze`` puts them where the recipe's gradual-unfreezing phases end (every trial has
just finished an STLR cycle and a recipe stage, so trials are compared at like points), a list such as
``[2, 4]`` gives them explicitly. Rungs before ``grace_period`` are dropped; the last epoch is always the
final rung, where every trial ends and nobody is stopped. No Ray here: the config is checked without it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from search.errors import fail
from ulmfit_core.config import RecipeConfig, recipe_from_dict

if TYPE_CHECKING:
    from search.settings import SearchConfig

#: ``search.scheduler.rungs: unfreeze``: the ends of the unfreezing phases.
UNFREEZE_RUNGS = "unfreeze"
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


def geometric_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """ASHA's own rungs, ``grace_period * reduction_factor**k`` up to ``max_t`` (Ray's ASHAScheduler's)."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor ** k) for k in range(n)]


def asha_rungs(cfg: SearchConfig) -> list[int]:
    """Every rung of the search's ASHA, lowest first, the last being ``max_t`` (empty for FIFO)."""
    sched = cfg.search.scheduler
    if sched.type != "asha":
        return []
    if sched.rungs is None:
        wanted = geometric_rungs(sched.grace_period, sched.reduction_factor, cfg.max_t)
    elif sched.rungs == UNFREEZE_RUNGS:
        wanted = unfreeze_rungs(recipe_from_dict(cfg.recipe))
    else:
        wanted = list(sched.rungs)
    return sorted({r for r in wanted if sched.grace_period <= r < cfg.max_t} | {cfg.max_t})


def check_scheduler(cfg: SearchConfig) -> None:
    """Scheduler settings that need the recipe and the space; raises ``SearchConfigError`` naming the key."""
    sched = cfg.search.scheduler
    epochs = recipe_from_dict(cfg.recipe).classifier.epochs
    if sched.max_t is not None and sched.max_t < cfg.epochs:
        fail("search.scheduler.max_t", f"{sched.max_t} is below the {cfg.epochs} epochs a trial runs "
                                       f"(recipe.classifier.epochs {epochs}): every trial would look stopped "
                                       f"early and none completed; remove max_t (it follows the epochs)")
    if sched.rungs == UNFREEZE_RUNGS:
        varying = [k for k in cfg.space.keys if k.startswith(SCHEDULE_KEYS)]
        if varying:
            fail("search.scheduler.rungs", f"'unfreeze' needs one unfreezing schedule for every trial, but the "
                                           f"space searches {', '.join(varying)}; give the rungs as epochs "
                                           f"([2, 4]) or fix those keys in the recipe")
    if isinstance(sched.rungs, list) and sched.rungs[-1] > cfg.max_t:
        fail("search.scheduler.rungs", f"epoch {sched.rungs[-1]} is past the last epoch a trial runs "
                                       f"({cfg.max_t}); list epochs up to {cfg.max_t}")
    decisions = asha_rungs(cfg)[:-1]  # the final rung stops nobody: every trial ends there anyway
    if sched.type == "asha" and (sched.rungs is not None or sched.brackets > 1) and len(decisions) < sched.brackets:
        fail("search.scheduler.rungs" if sched.rungs is not None else "search.scheduler.grace_period",
             f"the rungs give decision points {decisions} (epochs >= grace_period {sched.grace_period}, before "
             f"the last epoch {cfg.max_t}): too few for {sched.brackets} bracket(s). Lower grace_period, list more "
             f"epochs, or use scheduler.type: fifo")
