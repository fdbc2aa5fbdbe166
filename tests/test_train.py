"""The shared training loop: frozen groups stay put, AR/TAR, and exact resume from a checkpoint."""
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from ulmfit_core.config import StageConfig
from ulmfit_core.schedule import unfreeze_phases
from ulmfit_core.train import StepOutput, Trainer, ar_tar, seed_everything


class ToyTask:
    """Random regression batches drawn from the task's own generator; dropout uses the global RNG."""

    def __init__(self, generator):
        self.generator = generator
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(96, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)
        self.epochs_started = 0

    def start_epoch(self, model):
        self.epochs_started += 1

    def train_batches(self):
        order = torch.randperm(len(self.x), generator=self.generator)
        for i in range(0, len(order), 16):
            idx = order[i:i + 16]
            yield self.x[idx], self.y[idx]

    def n_train_batches(self):
        return 6

    def step(self, model, batch):
        x, y = batch
        hidden = model[1](model[0](x))  # (B, 16) after dropout
        pred = model[2](hidden)
        return StepOutput(loss=F.mse_loss(pred, y), raw_out=hidden.unsqueeze(1), dropped_out=hidden.unsqueeze(1), n_items=len(y))

    def evaluate(self, model):
        return {"valid_loss": float(F.mse_loss(model(self.x), self.y))}


def _setup(tmp_path=None, epochs=4, unfreeze=(1,)):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 1))
    groups = [list(model[0].parameters()), list(model[2].parameters())]
    cfg = StageConfig(epochs=epochs, lr=0.05, use_clr=(8, 3), bs=16, wd=0.01)
    task = ToyTask(torch.Generator().manual_seed(7))
    phases = unfreeze_phases(len(groups), list(unfreeze), epochs)
    return Trainer(model, groups, cfg, phases, task, device=torch.device("cpu"), checkpoint_dir=tmp_path), model


def test_frozen_group_is_unchanged_during_its_frozen_phase():
    trainer, model = _setup(epochs=2, unfreeze=(1,))
    low_before = model[0].weight.detach().clone()
    top_before = model[2].weight.detach().clone()
    trainer.total_epochs = 1  # stop after the first phase (top group only)
    trainer.fit()
    assert torch.equal(model[0].weight, low_before)
    assert not torch.equal(model[2].weight, top_before)
    trainer.total_epochs = 2  # second phase trains everything
    trainer.fit()
    assert not torch.equal(model[0].weight, low_before)


def test_learning_rates_follow_discriminative_stlr():
    trainer, _ = _setup(epochs=1, unfreeze=())
    seen = []
    original = trainer.optimizer.step

    def spy(*a, **k):
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        return original(*a, **k)

    trainer.optimizer.step = spy
    trainer.fit()
    assert len(seen) == 6
    peak = max(range(6), key=lambda i: seen[i][1])
    assert peak == 2  # 6 iterations, cut 3 -> peak at iteration 2
    assert seen[peak][1] == pytest.approx(0.05)
    for low, top in seen:
        assert low == pytest.approx(top / 2.6)


def test_resume_after_epoch_one_matches_uninterrupted_run(tmp_path):
    full, _ = _setup(tmp_path / "full")
    full_history = full.fit().history

    first, _ = _setup(tmp_path / "resumed")
    first.total_epochs = 1
    first.fit()
    # A fresh process would rebuild everything from scratch and then resume.
    seed_everything(999)  # different global RNG state before resuming: the checkpoint must restore it
    resumed, _ = _setup(tmp_path / "resumed")
    assert resumed.resume_from(tmp_path / "resumed")
    assert resumed.epoch == 1
    history = resumed.fit().history
    assert len(history) == len(full_history) == 4
    for a, b in zip(history, full_history):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)


def test_non_finite_loss_stops_with_advice():
    trainer, _ = _setup(epochs=1)
    trainer.cfg.lr = 1e30
    trainer.peak_lrs = [1e30, 1e30]
    trainer.cfg.clip = None
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        trainer.fit()


def test_ar_tar_values():
    raw = torch.tensor([[[1.0], [3.0], [6.0]]])  # (B=1, T=3, E=1)
    dropped = torch.tensor([[[2.0], [0.0], [0.0]]])
    # AR: mean(dropped^2) = 4/3; TAR: mean of (2^2, 3^2) = 6.5
    assert float(ar_tar(raw, dropped, 2.0, 1.0)) == pytest.approx(2 * 4 / 3 + 6.5)
    assert ar_tar(raw, dropped, 0.0, 0.0) == 0.0
