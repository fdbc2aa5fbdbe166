"""The two stage-specific :class:`~ulmfit_core.train.Task` implementations.

Everything else about training (optimiser, schedules, checkpoints) is shared in ``train.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .awd_lstm import detach_hidden
from .config import ClassifierConfig, LMConfig
from .data import ClassifierBatches, LMStream, classifier_batches
from .losses import lm_cross_entropy
from .metrics import accuracy, confusion_matrix, macro_f1
from .train import DeviceBatches, StepOutput


class LanguageModelTask:
    """Next-token prediction over ``bs`` contiguous streams; hidden state carried across batches."""

    def __init__(self, train_docs: list[np.ndarray], valid_docs: list[np.ndarray], cfg: LMConfig,
                 device: torch.device, generator: torch.Generator) -> None:
        self.device, self.generator = device, generator
        self.train = LMStream(train_docs, cfg.bs, cfg.bptt, shuffle=True, backwards=cfg.backwards, generator=generator)
        # The validation text may be short: fewer streams rather than an empty stream.
        n_valid = sum(len(d) for d in valid_docs)
        valid_bs = max(1, min(cfg.bs, n_valid // (cfg.bptt + 1)))
        self.valid = LMStream(valid_docs, valid_bs, cfg.bptt, shuffle=False, backwards=cfg.backwards, generator=generator)
        self.hidden = None

    def start_epoch(self, model: nn.Module) -> None:
        self.hidden = None  # a new epoch reshuffles documents: the old state means nothing

    def train_batches(self) -> DeviceBatches:
        return DeviceBatches(self.train.epoch(), self.device)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch  # (B, T) each
        logits, raw, dropped, hidden = model(x, self.hidden)
        self.hidden = detach_hidden(hidden)
        loss = lm_cross_entropy(logits, y)  # F.cross_entropy's value, without its (N, V) temporaries on CPU
        return StepOutput(loss=loss, raw_out=raw, dropped_out=dropped, n_items=y.numel())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        hidden, total_loss, correct, count = None, 0.0, 0, 0
        for x, y in DeviceBatches(self.valid, self.device):
            logits, _, _, hidden = model(x, hidden)
            logits = logits.float()
            total_loss += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
        loss = total_loss / max(count, 1)
        return {"valid_loss": loss, "valid_perplexity": math.exp(min(loss, 50.0)), "valid_accuracy": correct / max(count, 1)}


def predict_logits(model: nn.Module, batches: ClassifierBatches, device: torch.device) -> np.ndarray:
    """(N, C) float32 logits in the documents' original order."""
    out: np.ndarray | None = None
    for x, _lengths, _y, idx in DeviceBatches(batches, device):
        logits = model(x)[0].float().cpu().numpy()
        if out is None:
            out = np.zeros((len(batches.docs), logits.shape[1]), dtype=np.float32)
        out[idx.cpu().numpy()] = logits
    if out is None:
        raise ValueError("no documents to predict")
    return out


def classification_metrics(logits: np.ndarray, labels: np.ndarray, n_classes: int, prefix: str = "valid_") -> dict[str, float]:
    """Accuracy, mean cross-entropy and macro-F1 from logits (or log-probabilities)."""
    t = torch.from_numpy(logits)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    loss = float(F.cross_entropy(t, y))
    cm = confusion_matrix(labels, logits.argmax(1), n_classes)
    return {f"{prefix}accuracy": accuracy(cm), f"{prefix}loss": loss, f"{prefix}macro_f1": macro_f1(cm)}


class ClassifierTask:
    """Document classification with sortish batches; no state between batches."""

    def __init__(self, train_docs: list[np.ndarray], train_labels: np.ndarray, valid_docs: list[np.ndarray],
                 valid_labels: np.ndarray, n_classes: int, cfg: ClassifierConfig, pad_idx: int,
                 device: torch.device, generator: torch.Generator) -> None:
        self.device, self.generator, self.n_classes = device, generator, n_classes
        self.train = classifier_batches(train_docs, train_labels, cfg, pad_idx, train=True, generator=generator)
        self.valid = classifier_batches(valid_docs, valid_labels, cfg, pad_idx, train=False)
        self.valid_labels = np.asarray(valid_labels)

    def start_epoch(self, model: nn.Module) -> None:
        pass

    def train_batches(self) -> DeviceBatches:
        # ClassifierBatches never yields a batch of one document (BatchNorm cannot normalise it in
        # training mode): a lone leftover document is seen again next epoch in another batch.
        return DeviceBatches(self.train, self.device)

    def step(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> StepOutput:
        x, _lengths, y, _idx = batch
        logits, raw, dropped = model(x)
        loss = F.cross_entropy(logits.float(), y)
        return StepOutput(loss=loss, raw_out=raw, dropped_out=dropped, n_items=y.numel())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, self.valid, self.device)
        return classification_metrics(logits, self.valid_labels, self.n_classes)
