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
from .config import ConfigError, StageConfig
from .losses import ar_tar
from .precision import resolve as resolve_precision
from .schedule import Phase, discriminative_lrs, freeze_to, phase_of_epoch, stlr

CHECKPOINT_FILE = "checkpoint.pt"
#: Points of the learning-rate schedule kept per epoch (for its plot; the schedule itself is exact).
LR_POINTS_PER_EPOCH = 50
#: Passed to the epoch callback beside the metrics: the stage's epochs in all (a language model's frozen
#: epochs included), and how many of its layer groups trained this epoch (fewer than all: frozen below).
EPOCHS_TOTAL, TRAINABLE_GROUPS, LAYER_GROUPS = "epochs_total", "trainable_groups", "layer_groups"


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


def _require_cuda_device(device: torch.device) -> None:
    """A CUDA device this machine lacks is a configuration error, found before any data is read (torch would
    otherwise fail at the first tensor moved there, after tokenizing, with a message naming no setting)."""
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {str(device)!r} asks for CUDA, but this machine has none "
                          "(torch.cuda.is_available() is False); set device to auto (CUDA when present, else CPU) or cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device: {str(device)!r} does not exist; this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}: set one of them, or auto")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU. A device that is not there (``cuda`` without CUDA, or an
    unknown name given to ``--device``) raises :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda":
        _require_cuda_device(device)
    return device


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


class ResumeMismatch(ValueError):
    """A checkpoint was made by a different run than the one asked to resume it; the message names
    what differs and the fix."""


def fingerprint_differences(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``["classifier.lr: 0.01 -> 0.02", "data: different text", ...]``: what differs between two
    fingerprints (nested config values by dotted key; other parts by name)."""
    if not isinstance(saved, dict):
        return ["the checkpoint records no fingerprint (made by an older version of this project)"]
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")

    walk(saved.get("config"), current.get("config"), "")
    names = {"format": "checkpoint format version", "data": "the training text or labels",
             "vocab": "the vocabulary", "pretrained": "the pretrained model's files", "stage": "the stage",
             "encoder": "the language model it starts from (--lm, its encoder.pt)"}
    for part in sorted((set(saved) | set(current)) - {"config"}):  # every input the fingerprint names
        if saved.get(part) != current.get(part):
            out.append(f"{part}: {names.get(part, part)} differ")
    return out


def check_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], path: Path) -> None:
    """Raise :class:`ResumeMismatch` unless the checkpoint at ``path`` was made by this run's settings."""
    diffs = fingerprint_differences(saved, current)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ResumeMismatch(f"{path} belongs to a different run ({shown}); it was left as it is. Write to another "
                             "folder (--out elsewhere), or pass --restart to train from scratch in this one")


class Trainer:
    """Runs one stage: ``phases`` of epochs over ``groups`` of parameters with ``task``.

    ``groups`` are the model's layer groups, lowest first (see ``awd_lstm.*_layer_groups``).
    Mutates ``model`` in place; writes ``checkpoint_dir/checkpoint.pt`` after every epoch.
    """

    def __init__(self, model: nn.Module, groups: Sequence[Sequence[nn.Parameter]], cfg: StageConfig,
                 phases: Sequence[Phase], task: Task, *, device: torch.device,
                 checkpoint_dir: Path | None = None, checkpoint_meta: dict[str, Any] | None = None,
                 fingerprint: dict[str, Any] | None = None,
                 write_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 progress: bool = False, desc: str = "train", precision: str = "auto") -> None:
        self.model, self.groups, self.cfg, self.phases, self.task = model, groups, cfg, list(phases), task
        self.device, self.checkpoint_dir = device, checkpoint_dir
        self.checkpoint_meta = checkpoint_meta or {}
        #: What made this run (see ``stages.fingerprint``): stored in every checkpoint, and a checkpoint
        #: made by anything else is refused on resume (:class:`ResumeMismatch`).
        self.fingerprint = fingerprint
        #: Writes a checkpoint payload (default: ``checkpoint_dir/checkpoint.pt``); a stage that keeps more
        #: files beside it (vocabulary, labels) writes them all at once.
        self.write_checkpoint = write_checkpoint
        self.progress, self.desc = progress, desc
        self.total_epochs = sum(p.epochs for p in self.phases)
        self.optimizer = make_optimizer(groups, cfg, device)
        self.peak_lrs = discriminative_lrs(cfg.lr, cfg.lrm, len(groups))
        self.precision = resolve_precision(precision, device)
        self.autocast, self.scaler = self.precision.autocast(), self.precision.grad_scaler()
        self.history: list[dict[str, float]] = []
        #: The rates actually used: ``{"iteration", "epoch", "lrs": per group, "trainable": per group}``,
        #: about :data:`LR_POINTS_PER_EPOCH` points an epoch (for the learning-rate plot).
        self.lr_schedule: list[dict[str, Any]] = []
        self.steps_done = 0  # optimizer steps of the epochs completed
        self.epoch = 0  # epochs completed

    # --- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "history": self.history,
            "lr_schedule": self.lr_schedule,
            "steps_done": self.steps_done,
            "rng": _rng_state(self.task),
            "fingerprint": self.fingerprint,
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
        self.lr_schedule = list(state.get("lr_schedule", []))
        self.steps_done = int(state.get("steps_done", 0))
        _set_rng_state(self.task, state["rng"])

    def resume_from(self, path: Path) -> bool:
        """Load ``path`` (a checkpoint file or its directory) if it exists; True when resumed."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        if not path.exists():
            return False
        state = load_checkpoint(path)
        if self.fingerprint is not None:
            check_fingerprint(state.get("fingerprint"), self.fingerprint, path)
        self.load_state_dict(state)
        return True

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochCallback | None = None) -> FitResult:
        resumed_from = self.epoch
        while self.epoch < self.total_epochs:
            t0 = time.perf_counter()
            phase = phase_of_epoch(self.phases, self.epoch)
            train_loss, top_lr = self._train_one_epoch(phase)
            metrics = {"epoch": self.epoch + 1, "train_loss": train_loss, "lr": top_lr}
            metrics.update(self.evaluate())
            self._check_finite(metrics)  # before the checkpoint: nothing non-finite is ever saved
            metrics["epoch_seconds"] = time.perf_counter() - t0
            self.epoch += 1
            self.history.append(metrics)
            if self.write_checkpoint is not None:
                self.write_checkpoint(self.state_dict())
            elif self.checkpoint_dir is not None:
                save_checkpoint(self.checkpoint_dir / CHECKPOINT_FILE, self.state_dict())
            if on_epoch_end is not None:  # with where the epoch stands (the history keeps the metrics alone)
                on_epoch_end({**metrics, EPOCHS_TOTAL: self.total_epochs,
                              TRAINABLE_GROUPS: min(phase.n_trainable, len(self.groups)), LAYER_GROUPS: len(self.groups)})
        return FitResult(history=list(self.history), resumed_from_epoch=resumed_from)

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """``FloatingPointError`` naming the stage and its keys when an epoch ends with non-finite weights'
        signs: a validation loss (or training loss) that is inf or nan."""
        bad = {k: v for k, v in metrics.items() if k.endswith("loss") and not math.isfinite(v)}
        if bad:
            cfg = self.cfg
            raise FloatingPointError(
                f"{self.desc}: {', '.join(f'{k} became {v}' for k, v in bad.items())} after epoch {self.epoch + 1}: "
                f"the weights diverged and were not saved; lower the learning rate ({self.desc}.lr={cfg.lr}), raise "
                f"{self.desc}.clip ({cfg.clip}) or lower {self.desc}.alpha/beta ({cfg.alpha}/{cfg.beta})")

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.autocast:
            return self.task.evaluate(self.model)

    def _train_one_epoch(self, phase: Phase) -> tuple[float, float]:
        """One epoch; returns (mean training loss, the top group's highest learning rate in it)."""
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
        total, count, top_lr = 0.0, 0, 0.0
        stride = max(1, n_batches // LR_POINTS_PER_EPOCH)
        n_groups = len(self.groups)
        unfrozen = [k >= n_groups - min(phase.n_trainable, n_groups) for k in range(n_groups)]
        bar = tqdm(batches, total=n_batches, desc=f"{self.desc} epoch {self.epoch + 1}/{self.total_epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        for batch in bar:
            lrs = [stlr(it, cycle_len, peak, ratio, cut) for peak in self.peak_lrs]
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            top_lr = max(top_lr, lrs[-1])
            step = it - (self.epoch - phase.first_epoch) * n_batches  # 0-based within this epoch
            if step % stride == 0 or step == n_batches - 1:
                self.lr_schedule.append({"iteration": self.steps_done + step, "epoch": self.epoch + 1,
                                         "lrs": lrs, "trainable": unfrozen})
            batch_loss, n_items = self.train_step(batch, trainable)
            total += batch_loss * n_items
            count += n_items
            it += 1
            bar.set_postfix(loss=f"{batch_loss:.3f}", refresh=False)
        bar.close()
        self.steps_done += n_batches
        return total / max(count, 1), top_lr

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
                f"({self.desc}.lr={cfg.lr}) or clip gradients ({self.desc}.clip, e.g. 0.4)")
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
