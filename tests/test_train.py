"""The shared training loop: frozen groups stay put, AR/TAR, and exact resume from a checkpoint."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ulmfit_core.config import StageConfig
from ulmfit_core.losses import ar_tar
from ulmfit_core.schedule import unfreeze_phases
from ulmfit_core.train import StepOutput, Trainer, fused_adamw_available, make_optimizer, seed_everything


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
        return [(self.x[order[i:i + 16]], self.y[order[i:i + 16]]) for i in range(0, len(order), 16)]

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


def test_non_finite_loss_is_caught_before_the_weights_change():
    trainer, model = _setup(epochs=1)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []
    step = trainer.task.step

    def nan_on_second_batch(m, batch):
        out = step(m, batch)
        calls.append(1)
        if len(calls) == 2:
            out.loss = out.loss * float("nan")
        return out

    trainer.task.step = nan_on_second_batch
    after_first = []
    original = trainer.optimizer.step

    def record(*a, **k):
        result = original(*a, **k)
        after_first.append([p.detach().clone() for p in model.parameters()])
        return result

    trainer.optimizer.step = record
    with pytest.raises(FloatingPointError, match="loss became nan"):
        trainer.fit()
    assert len(after_first) == 1  # no optimizer step for the NaN batch
    for p, good in zip(model.parameters(), after_first[0]):
        assert torch.isfinite(p).all() and torch.equal(p.detach(), good)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def test_stlr_cycle_spans_every_batch_of_a_variable_bptt_epoch(monkeypatch):
    """Variable BPTT yields more batches than stream_len // bptt; the schedule must span the real count,
    not run the last ~3 % of the epoch at the floor rate."""
    import numpy as np

    import ulmfit_core.train as train_module
    from ulmfit_core.config import LMConfig
    from ulmfit_core.tasks import LanguageModelTask

    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, size=int(n)) for n in rng.integers(20, 200, size=200)]
    cfg = LMConfig(epochs=1, bs=4, bptt=20, lr=0.01)
    task = LanguageModelTask(docs, docs[:20], cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    seen = []
    real_stlr = train_module.stlr
    monkeypatch.setattr(train_module, "stlr", lambda it, total, *a: seen.append((it, total)) or real_stlr(it, total, *a))
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))

    class Step:
        def __call__(self, m, batch):
            x, y = batch
            logits = m(x)
            return StepOutput(loss=F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1)), n_items=y.numel())

    task.step = Step()
    task.evaluate = lambda m: {}
    groups = [list(model.parameters())]
    trainer = Trainer(model, groups, cfg, unfreeze_phases(1, [], 1), task, device=torch.device("cpu"))
    trainer.fit()
    iterations = sorted({it for it, _ in seen})
    totals = {total for _, total in seen}
    n_batches = len(iterations)
    assert n_batches > task.train.stream_len // cfg.bptt  # variable BPTT really made more batches
    assert totals == {n_batches} and iterations == list(range(n_batches))
    # the last batch runs just above the floor, not at it for a stretch of batches
    assert real_stlr(n_batches - 1, n_batches, 1.0, 32, 10) > 1 / 32


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    from ulmfit_core.artifacts import ArtifactError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps({"model": Payload()}))
    trainer, _ = _setup(tmp_path)
    with pytest.raises(ArtifactError, match="refused"):
        trainer.resume_from(tmp_path)
    assert not marker.exists()


def test_fused_adamw_equals_the_for_loop_adamw_to_rounding():
    """The Trainer's optimizer (fused where torch has it) against torch's reference for-loop AdamW."""
    torch.manual_seed(0)
    shapes = [(40, 16), (40,), (8, 40), (3, 7)]
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    cfg = StageConfig(lr=0.05, wd=0.01)
    opt = make_optimizer([ours[:2], ours[2:]], cfg, torch.device("cpu"))
    ref_opt = torch.optim.AdamW([{"params": ref[:2]}, {"params": ref[2:]}], lr=0.05, betas=cfg.betas, weight_decay=0.01,
                                foreach=False)
    assert opt.defaults["fused"] == (True if fused_adamw_available("cpu") else None)
    g = torch.Generator().manual_seed(1)
    for step in range(30):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        if step % 7 == 3:
            ours[3].grad = ref[3].grad = None  # a frozen parameter is skipped by both
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_epoch_that_ends_with_a_non_finite_validation_loss_saves_nothing(tmp_path):
    """The weights can diverge at the last step of an epoch, after every training loss was finite: the
    validation loss then says so, and the epoch's checkpoint is not written."""
    import numpy as np
    import torch

    from ulmfit_core.awd_lstm import build_language_model, lm_layer_groups
    from ulmfit_core.config import LMConfig, ModelConfig
    from ulmfit_core.schedule import unfreeze_phases
    from ulmfit_core.tasks import LanguageModelTask
    from ulmfit_core.train import CHECKPOINT_FILE, Trainer

    class Diverged(LanguageModelTask):
        def evaluate(self, model):
            return {**super().evaluate(model), "valid_loss": float("nan")}

    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, size=40) for _ in range(8)]
    cfg = LMConfig(epochs=1, bs=4, bptt=10, lr=0.01)
    model = build_language_model(50, ModelConfig(preset="tiny"), cfg.scaled_dropouts)
    task = Diverged(docs, docs[:2], cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    groups = lm_layer_groups(model)
    trainer = Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=torch.device("cpu"),
                      checkpoint_dir=tmp_path, desc="lm", precision="fp32")
    with pytest.raises(FloatingPointError, match=r"lm: valid_loss became nan after epoch 1: the weights diverged "
                                                 r"and were not saved; lower the learning rate \(lm.lr=0.01\)"):
        trainer.fit()
    assert not (tmp_path / CHECKPOINT_FILE).exists()
