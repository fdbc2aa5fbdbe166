"""The one training loop both ULMFiT stages share.

A stage differs from the other only in its :class:`Task` (data, forward pass, evaluation) and its
config; optimiser, schedule, regularisation, mixed precision and checkpoint/resume live here once.

- AdamW with ``betas`` (0.8, 0.99 as in ULMFiT/fastai) and decoupled weight decay.
- Slanted triangular rates per phase and discriminative rates per layer group (``schedule.py``).
- AR/TAR (Merity et al. 2017): ``alpha * mean(dropped_out**2) + beta * mean((h_t - h_{t-1})**2)``.
- Gradient-norm clipping over the trainable parameters.
- Mixed precision by the recipe's ``precision`` (``precision.py``): bf16 autocast on CUDA (fp16 +
  GradScaler on GPUs without bf16) and on CPUs with native bf16, float32 elsewhere or when asked.
- Named ``torch.profiler`` ranges (``ulmfit::forward``, ``ulmfit::backward``, ...) around each part of
  a step, so a profile reads as the recipe (``bench/profile_step.py``); they cost ~1 µs when no
  profiler runs.
- A checkpoint after every epoch (weights, optimiser, epoch, RNG and data-generator state, the
  config that made it); resuming continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from .artifacts import load_tensors, save_tensors
from .config import StageConfig
from .losses import ar_tar
from .precision import resolve as resolve_precision
from .schedule import Phase, discriminative_lrs, freeze_to, phase_of_epoch, stlr

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class StepOutput:
    """What a task's forward pass returns for one batch."""

    loss: torch.Tensor  # scalar, the task loss (before AR/TAR)
    raw_out: torch.Tensor | None = None  # (B, T, E) last-layer output, for TAR
    dropped_out: torch.Tensor | None = None  # (B, T, E) after output dropout, for AR
    n_items: int = 1  # tokens or documents in the batch, to weight the epoch's mean loss


class Batches(Protocol):
    """An epoch of batches whose length is known before iterating."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class Task(Protocol):
    """The stage-specific part of training."""

    generator: torch.Generator  # all data randomness (shuffling, variable BPTT) comes from here

    def start_epoch(self, model: nn.Module) -> None:
        """Reset per-epoch state (e.g. the language model's hidden state)."""

    def train_batches(self) -> Batches:
        """One epoch of training batches, drawn with ``self.generator``; ``len()`` is exact (the STLR
        cycle spans it)."""

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Forward one batch in training mode."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (called in eval mode, without gradients)."""


EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def fused_adamw_available(device_type: str) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` runs on ``device_type`` (CPU and CUDA since torch 2.4)."""
    try:
        torch.optim.AdamW([nn.Parameter(torch.zeros(1, device=device_type))], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def make_optimizer(groups: Sequence[Sequence[nn.Parameter]], cfg: StageConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over one parameter group per layer group, fused where torch has a fused kernel.

    The fused kernel updates every parameter in one pass (one read and write of weights, gradients
    and both moments) instead of ~10 tensor ops per parameter: on a 2-core CPU it cut the
    optimizer's time about 3x. It equals the for-loop implementation to rounding (~1 float32 ulp
    per step; ``tests/test_train.py``), not bit for bit.
    """
    fused = True if fused_adamw_available(device.type) else None
    return torch.optim.AdamW([{"params": list(g)} for g in groups], lr=cfg.lr, betas=cfg.betas,
                             weight_decay=cfg.wd, fused=fused)


def _rng_state(task: Task) -> dict[str, Any]:
    """Every RNG's state as tensors, ints and lists: a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "data": task.generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(task: Task, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    task.generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Written atomically, so a run killed mid-write leaves the previous checkpoint intact."""
    save_tensors(path, payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read as data only (``weights_only=True``): a checkpoint from shared storage cannot run code."""
    return load_tensors(path)


class Trainer:
    """Runs one stage: ``phases`` of epochs over ``groups`` of parameters with ``task``.

    ``groups`` are the model's layer groups, lowest first (see ``awd_lstm.*_layer_groups``).
    Mutates ``model`` in place; writes ``checkpoint_dir/checkpoint.pt`` after every epoch.
    """

    def __init__(self, model: nn.Module, groups: Sequence[Sequence[nn.Parameter]], cfg: StageConfig,
                 phases: Sequence[Phase], task: Task, *, device: torch.device,
                 checkpoint_dir: Path | None = None, checkpoint_meta: dict[str, Any] | None = None,
                 progress: bool = False, desc: str = "train", precision: str = "auto") -> None:
        self.model, self.groups, self.cfg, self.phases, self.task = model, groups, cfg, list(phases), task
        self.device, self.checkpoint_dir = device, checkpoint_dir
        self.checkpoint_meta = checkpoint_meta or {}
        self.progress, self.desc = progress, desc
        self.total_epochs = sum(p.epochs for p in self.phases)
        self.optimizer = make_optimizer(groups, cfg, device)
        self.peak_lrs = discriminative_lrs(cfg.lr, cfg.lrm, len(groups))
        self.precision = resolve_precision(precision, device)
        self.autocast, self.scaler = self.precision.autocast(), self.precision.grad_scaler()
        self.history: list[dict[str, float]] = []
        self.epoch = 0  # epochs completed

    # --- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "history": self.history,
            "rng": _rng_state(self.task),
            **self.checkpoint_meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # Freeze as the saved epoch had it so the optimizer's param groups line up.
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        _set_rng_state(self.task, state["rng"])

    def resume_from(self, path: Path) -> bool:
        """Load ``path`` (a checkpoint file or its directory) if it exists; True when resumed."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        if not path.exists():
            return False
        self.load_state_dict(load_checkpoint(path))
        return True

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochCallback | None = None) -> FitResult:
        resumed_from = self.epoch
        while self.epoch < self.total_epochs:
            t0 = time.perf_counter()
            train_loss = self._train_one_epoch(phase_of_epoch(self.phases, self.epoch))
            metrics = {"epoch": self.epoch + 1, "train_loss": train_loss}
            metrics.update(self.evaluate())
            metrics["epoch_seconds"] = time.perf_counter() - t0
            self.epoch += 1
            self.history.append(metrics)
            if self.checkpoint_dir is not None:
                save_checkpoint(self.checkpoint_dir / CHECKPOINT_FILE, self.state_dict())
            if on_epoch_end is not None:
                on_epoch_end(dict(metrics))
        return FitResult(history=list(self.history), resumed_from_epoch=resumed_from)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.autocast:
            return self.task.evaluate(self.model)

    def _train_one_epoch(self, phase: Phase) -> float:
        cfg, model = self.cfg, self.model
        freeze_to(self.groups, phase.n_trainable)
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.train()
        self.task.start_epoch(model)
        batches = self.task.train_batches()
        # Every epoch of a phase is 1/epochs of its STLR cycle, measured in this epoch's real batches.
        n_batches = max(1, len(batches))
        cycle_len = phase.epochs * n_batches
        it = (self.epoch - phase.first_epoch) * n_batches
        ratio, cut = cfg.use_clr
        total, count = 0.0, 0
        bar = tqdm(batches, total=n_batches, desc=f"{self.desc} epoch {self.epoch + 1}/{self.total_epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for batch in bar:
            for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
                group["lr"] = stlr(it, cycle_len, peak, ratio, cut)
            batch_loss, n_items = self.train_step(batch, trainable)
            total += batch_loss * n_items
            count += n_items
            it += 1
            bar.set_postfix(loss=f"{batch_loss:.3f}", refresh=False)
        bar.close()
        return total / max(count, 1)

    def train_step(self, batch: Any, trainable: Sequence[nn.Parameter]) -> tuple[float, int]:
        """Forward, loss, backward, clipping and one optimizer step on ``batch`` at the current rates.

        Returns the batch's task loss (before AR/TAR) and its item count. Reading the loss is the
        step's one host sync: it must happen before the optimizer step, so that a non-finite loss
        leaves the weights of the last good batch.
        """
        cfg, model = self.cfg, self.model
        with record_function("ulmfit::forward"), self.autocast:
            out = self.task.step(model, batch)
            with record_function("ulmfit::ar_tar"):
                loss = out.loss + ar_tar(out.raw_out, out.dropped_out, cfg.alpha, cfg.beta)
        batch_loss = float(out.loss.detach())
        if not math.isfinite(batch_loss):  # before any step: the weights stay those of the last good batch
            raise FloatingPointError(
                f"{self.desc}: loss became {batch_loss} at epoch {self.epoch + 1}; lower the learning rate "
                f"(lr={cfg.lr}) or raise clipping")
        with record_function("ulmfit::backward"):
            self.optimizer.zero_grad(set_to_none=True)  # frozen params keep grad None: AdamW skips them
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
        if cfg.clip:
            with record_function("ulmfit::clip"):
                nn.utils.clip_grad_norm_(trainable, cfg.clip)
        with record_function("ulmfit::optimizer"):
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        return batch_loss, out.n_items


class DeviceBatches:
    """``batches`` (a sized iterable of tuples) with every tensor moved to ``device``; non-tensors pass."""

    def __init__(self, batches: Iterable[Sequence[Any]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for batch in self.batches:
            yield tuple(b.to(self.device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)
