"""Learning-rate schedules and layer-group arithmetic: no training happens here.

- Slanted triangular learning rates (STLR), ULMFiT eq. 3, parameterised as fastai v0.7's
  ``use_clr=(ratio, cut)``: the rate rises linearly for the first ``1/cut`` of the cycle from
  ``lr/ratio`` to ``lr``, then decays linearly back to ``lr/ratio``.
- Discriminative fine-tuning (ULMFiT §3.2): the top layer group gets ``lr``, the group ``k``
  below it ``lr / lrm**k`` (the paper's 2.6).
- Gradual unfreezing (ULMFiT §3.3): train the top group, then the top two, ... then all.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


def stlr(iteration: int, total: int, lr_max: float, ratio: float, cut: float) -> float:
    """Learning rate at ``iteration`` (0-based) of a cycle of ``total`` iterations.

    ULMFiT eq. 3 with ``cut_frac = 1/cut``: ``cut_it = floor(T * cut_frac)``,
    ``p = t/cut_it`` while rising, else ``1 - (t - cut_it)/(T - cut_it)``;
    ``lr = lr_max * (1 + p*(ratio - 1)) / ratio``. Iterations past ``total`` stay at the floor.
    """
    if total < 1:
        raise ValueError(f"total iterations must be >= 1, got {total}")
    cut_it = max(1, math.floor(total / cut))
    t = min(max(iteration, 0), total)
    if t < cut_it:
        p = t / cut_it
    else:
        p = 1 - (t - cut_it) / max(total - cut_it, 1)
    p = min(max(p, 0.0), 1.0)
    return lr_max * (1 + p * (ratio - 1)) / ratio


def discriminative_lrs(lr: float, lrm: float, n_groups: int) -> list[float]:
    """Per-group peak rates, lowest group first: ``[lr/lrm**(n-1), ..., lr/lrm, lr]``."""
    return [lr / lrm ** (n_groups - 1 - k) for k in range(n_groups)]


def freeze_to(groups: Sequence[Sequence[nn.Parameter]], n_trainable: int) -> None:
    """Make only the top ``n_trainable`` groups trainable (``requires_grad``); mutates params.

    A frozen parameter gets no gradient, so AdamW skips it entirely (no weight decay either).
    """
    n = len(groups)
    n_trainable = n if n_trainable <= 0 else min(n_trainable, n)
    for k, group in enumerate(groups):
        trainable = k >= n - n_trainable
        for p in group:
            p.requires_grad_(trainable)


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with a fixed set of trainable groups and one STLR cycle."""

    n_trainable: int  # top groups trained; equal to the number of groups once all are unfrozen
    epochs: int
    first_epoch: int  # 0-based index of the phase's first epoch within the stage


def unfreeze_phases(n_groups: int, unfreeze: Sequence[int], total_epochs: int) -> list[Phase]:
    """Split ``total_epochs`` into gradual-unfreezing phases.

    ``unfreeze[i]`` epochs train the top ``i+1`` groups; the remaining epochs train all groups.
    Phases that would train as many groups as exist merge into the final all-groups phase, and
    the schedule is cut short when ``total_epochs`` runs out first (ASHA-style budgets).
    """
    phases: list[Phase] = []
    epoch = 0
    for i, n_ep in enumerate(unfreeze):
        n_trainable = i + 1
        if n_trainable >= n_groups or epoch >= total_epochs:
            break
        n_ep = min(int(n_ep), total_epochs - epoch)
        if n_ep > 0:
            phases.append(Phase(n_trainable, n_ep, epoch))
            epoch += n_ep
    if epoch < total_epochs:
        phases.append(Phase(n_groups, total_epochs - epoch, epoch))
    return phases


def phase_of_epoch(phases: Sequence[Phase], epoch: int) -> Phase:
    """The phase containing 0-based ``epoch``."""
    for ph in phases:
        if ph.first_epoch <= epoch < ph.first_epoch + ph.epochs:
            return ph
    raise IndexError(f"epoch {epoch} is outside the schedule ({sum(p.epochs for p in phases)} epochs)")
