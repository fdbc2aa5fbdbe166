"""fastai's learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's ``lr_find``).

The learning rate rises exponentially from ``start_lr`` to ``end_lr`` over ``num_it`` batches while the
(smoothed) training loss is recorded; the test stops early once the loss runs away (4x its best). The
suggested rate is fastai v2's default, ``valley``: the middle of the longest stretch where the loss
keeps falling. It trains a throwaway copy of what the stage's first phase trains (the LM: with a
pretrained start, its embedding/decoder group; the classifier: its head, as gradual unfreezing does),
with the stage's discriminative rates, AR/TAR and clipping; nothing is saved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RecipeConfig
from .corpus import Corpus
from .losses import ar_tar
from .schedule import discriminative_lrs, freeze_to, unfreeze_phases
from .train import resolve_device, seed_everything


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, debiased), as fastai plots them
    suggestion: float | None  # None when the loss never fell: no rate can be read off a flat curve
    stage: str
    stopped_early: bool  # the loss ran away before num_it batches
    raw_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "suggestion": self.suggestion, "stopped_early": self.stopped_early,
                "lrs": self.lrs, "losses": self.losses, "raw_losses": self.raw_losses}


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley`` suggestion: the longest run of (not necessarily adjacent) decreasing losses;
    the rate two thirds of the way down it... as fastai computes it (start + 1/3 + 1/6 of its length)."""
    n = len(losses)
    if n < 2:
        raise ValueError("the range test needs at least two losses to suggest a rate")
    longest = [1] * n  # length of the longest decreasing run ending at i
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[max_end] < longest[i]:
            max_end = i
            max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    return lrs[max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))]


def lr_find(cfg: RecipeConfig, corpus: Corpus, stage: str, lm_dir: str | Path | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, beta: float = 0.98,
            models_dir: str | Path | None = None) -> LRFindResult:
    """Run the range test for ``stage`` (``"lm"`` or ``"classifier"``; the classifier loads ``lm_dir``'s
    encoder when given). Returns the rates, smoothed losses and the suggested rate."""
    from . import stages  # the stage builders; imported here to keep module imports one-way

    if stage not in ("lm", "classifier"):
        raise ValueError(f"stage must be lm or classifier, got {stage!r}")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if stage == "lm":
        model, groups, task, scfg, pretrained = stages.build_lm_stage(cfg, corpus, device, models_dir)
        first = unfreeze_phases(len(groups), [1] if pretrained else [], 2)[0]
    else:
        model, groups, task, scfg = stages.build_classifier_stage(cfg, corpus, lm_dir, device)
        unfreeze = [] if cfg.classifier.from_scratch else cfg.classifier.unfreeze
        first = unfreeze_phases(len(groups), unfreeze, 2)[0]
    freeze_to(groups, first.n_trainable)
    optimizer = torch.optim.AdamW([{"params": list(g)} for g in groups], lr=start_lr, betas=scfg.betas,
                                  weight_decay=scfg.wd)
    factors = [r / scfg.lr for r in discriminative_lrs(scfg.lr, scfg.lrm, len(groups))]  # top group: 1
    trainable = [p for p in model.parameters() if p.requires_grad]
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best, stopped = 0.0, math.inf, False
    model.train()
    while len(lrs) < num_it and not stopped:
        task.start_epoch(model)
        for batch in task.train_batches():
            lr = start_lr * (end_lr / start_lr) ** (len(lrs) / max(num_it - 1, 1))
            for group, factor in zip(optimizer.param_groups, factors):
                group["lr"] = lr * factor
            out = task.step(model, batch)
            loss = out.loss + ar_tar(out.raw_out, out.dropped_out, scfg.alpha, scfg.beta)
            value = float(out.loss.detach())
            if not math.isfinite(value):
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if scfg.clip:
                nn.utils.clip_grad_norm_(trainable, scfg.clip)
            optimizer.step()
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (len(lrs) + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if smoothed > 4 * best or len(lrs) >= num_it:
                stopped = smoothed > 4 * best
                break
    if len(lrs) < 2:
        raise ValueError("the range test ran fewer than two batches; give it more text or a lower start_lr")
    suggestion = valley(lrs, smooth) if loss_fell(raw, smooth) else None
    return LRFindResult(lrs=lrs, losses=smooth, suggestion=suggestion, stage=stage,
                        stopped_early=stopped, raw_losses=raw)


#: How far below its start the smoothed loss must get for the curve to say anything (fastai suggests a
#: rate from any curve; a flat one gives a rate from noise).
MIN_FALL = 0.02
#: The start: the mean loss of the first batches (at least this many, or a tenth of them), where the rate is
#: still too small to change anything; one batch alone is as noisy as the batches are different.
START_BATCHES = 5


def loss_fell(raw: list[float], smoothed: list[float]) -> bool:
    """Whether the smoothed loss, after the first batches, ever got ``MIN_FALL`` (2 %) below their mean loss."""
    k = min(max(START_BATCHES, len(raw) // 10), len(raw) - 1)
    start = sum(raw[:k]) / k
    return min(smoothed[k:]) < (1 - MIN_FALL) * start
