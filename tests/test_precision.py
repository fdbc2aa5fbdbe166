"""Mixed precision: the ``precision`` key, CPU bf16 detection, and both stages under CPU bf16 autocast.

bf16 runs here on tiny models: on a CPU without AVX512_BF16 the bf16 matmuls are emulated (slow but
exact to bf16 rounding), which is all these tests need.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ulmfit_core import awd_lstm, precision
from ulmfit_core.awd_lstm import (
    WeightDropLSTM,
    build_classifier,
    build_language_model,
    classifier_layer_groups,
    lm_layer_groups,
)
from ulmfit_core.config import ClassifierConfig, ConfigError, LMConfig, ModelConfig, recipe_from_dict
from ulmfit_core.losses import lm_cross_entropy
from ulmfit_core.schedule import unfreeze_phases
from ulmfit_core.tasks import ClassifierTask, LanguageModelTask
from ulmfit_core.train import Trainer, seed_everything

pytestmark = pytest.mark.filterwarnings("ignore:precision. bf16 on a CPU without:RuntimeWarning")

V = 300
CPU = torch.device("cpu")
#: bf16 keeps 8 significant bits (a relative rounding of 2^-8 = 0.4 % per op); through a tiny model's
#: decoder and head the logits stay within 2 % of the largest float32 logit.
LOGIT_TOLERANCE = 0.02


@pytest.fixture(autouse=True)
def _fresh_detection():
    precision.cpu_has_native_bf16.cache_clear()
    yield
    precision.cpu_has_native_bf16.cache_clear()


def _docs(n: int, lo: int, hi: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, V, size=int(k)) for k in rng.integers(lo, hi, size=n)]


def _lm_trainer(prec: str) -> tuple[Trainer, torch.nn.Module]:
    seed_everything(0)
    cfg = LMConfig(epochs=1, bs=8, bptt=12, lr=0.01)
    model = build_language_model(V, ModelConfig(preset="tiny"), cfg.scaled_dropouts)
    task = LanguageModelTask(_docs(60, 10, 40, 1), _docs(10, 10, 40, 2), cfg, CPU, torch.Generator().manual_seed(0))
    groups = lm_layer_groups(model)
    return Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=CPU, precision=prec), model


def _classifier_trainer(prec: str) -> tuple[Trainer, torch.nn.Module]:
    seed_everything(0)
    cfg = ClassifierConfig(epochs=1, bs=8, bptt=12, max_seq=48, lr=0.01, unfreeze=[])
    model = build_classifier(V, ModelConfig(preset="tiny"), cfg.scaled_dropouts, n_classes=3, lin_ftrs=[16],
                             head_p=0.1, bptt=cfg.bptt, max_seq=cfg.max_seq)
    labels = np.arange(48) % 3
    task = ClassifierTask(_docs(48, 5, 40, 3), labels, _docs(12, 5, 40, 4), labels[:12], 3, cfg, 1, CPU,
                          torch.Generator().manual_seed(0))
    groups = classifier_layer_groups(model)
    return Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=CPU, precision=prec), model


STAGES = {"lm": _lm_trainer, "classifier": _classifier_trainer}


def _fit(make, prec: str, outer: contextlib.AbstractContextManager | None = None) -> tuple[list, dict]:
    trainer, model = make(prec)
    with outer or contextlib.nullcontext():
        history = trainer.fit().history
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- the key and its resolution --------------------------------------------------------------


def test_precision_key_is_validated_with_the_choices():
    assert recipe_from_dict({"data": {"dataset": "trec"}}).precision == "auto"
    assert recipe_from_dict({"data": {"dataset": "trec"}, "precision": "bf16"}).precision == "bf16"
    with pytest.raises(ConfigError, match=r"^precision: must be one of auto, fp32, bf16"):
        recipe_from_dict({"data": {"dataset": "trec"}, "precision": "fp16"})


def test_cpu_bf16_detection_asks_torch_then_cpuinfo(monkeypatch, tmp_path):
    read_cpuinfo = precision._cpuinfo_flags
    caps = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert not precision.cpu_has_native_bf16()
    precision.cpu_has_native_bf16.cache_clear()
    caps["amx_bf16"] = True
    assert precision.cpu_has_native_bf16()
    precision.cpu_has_native_bf16.cache_clear()

    def broken():
        raise RuntimeError("no cpuinfo in this build")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.cpu_has_native_bf16()  # torch could not tell: the kernel's flags decide

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert read_cpuinfo(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert read_cpuinfo(tmp_path / "missing") == set()


def test_auto_is_bf16_only_on_cpus_that_compute_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", "cpu").dtype == torch.bfloat16
    assert precision.resolve("fp32", "cpu").dtype is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", "cpu").dtype is None
    assert isinstance(precision.resolve("auto", "cpu").autocast(), contextlib.nullcontext)
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert precision.resolve("bf16", "cpu").dtype == torch.bfloat16  # honoured, with a warning
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("half", "cpu")


def test_an_explicit_precision_gets_its_own_language_model():
    from ulmfit_core.stages import lm_key

    keys = {p: lm_key(recipe_from_dict({"data": {"dataset": "trec"}, "precision": p}), "text") for p in ("auto", "fp32", "bf16")}
    assert len(set(keys.values())) == 3
    assert keys["auto"] == lm_key(recipe_from_dict({"data": {"dataset": "trec"}}), "text")


# --- float32 is the plain float32 path -------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_fp32_training_is_bit_identical_to_training_without_autocast(stage, monkeypatch):
    make = STAGES[stage]
    history, weights = _fit(make, "fp32")
    # Explicitly without autocast, even if something inside tried to switch it on.
    plain_history, plain = _fit(make, "fp32", torch.autocast("cpu", enabled=False))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    auto_history, auto = _fit(make, "auto")  # auto on a CPU without bf16 is float32
    for other_history, other in ((plain_history, plain), (auto_history, auto)):
        assert other_history[0]["train_loss"] == history[0]["train_loss"]
        assert all(torch.equal(weights[k], other[k]) for k in weights)
    # ...and the comparison can tell: a bf16 run of the same stage ends elsewhere.
    _, bf16 = _fit(make, "bf16")
    assert any(not torch.equal(weights[k], bf16[k]) for k in weights if weights[k].is_floating_point())


# --- bf16 autocast on CPU --------------------------------------------------------------------


def test_lstm_stays_float32_under_cpu_autocast_without_native_bf16(monkeypatch):
    monkeypatch.setattr(awd_lstm, "cpu_has_native_bf16", lambda: False)
    rnn = WeightDropLSTM(8, 12, weight_p=0.0).eval()
    x, state = torch.randn(3, 5, 8), (torch.randn(1, 3, 12), torch.randn(1, 3, 12))
    ref, (ref_h, ref_c) = rnn(x, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = rnn(x.bfloat16(), (state[0].bfloat16(), state[1].bfloat16()))
    assert out.dtype == h.dtype == c.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same, _ = rnn(x, state)
    assert torch.equal(same, ref)  # float32 inputs: exactly the float32 LSTM (docs/RECIPE.md)


@pytest.mark.skipif(not precision.cpu_has_native_bf16(), reason="oneDNN's bf16 LSTM needs AVX512_BF16 or AMX-BF16")
def test_lstm_runs_bf16_under_cpu_autocast_with_native_bf16_and_hands_on_a_float32_state():
    torch.manual_seed(0)
    rnn = WeightDropLSTM(16, 24, weight_p=0.2).train()
    x, state = torch.randn(4, 70, 16), (torch.randn(1, 4, 24), torch.randn(1, 4, 24))
    torch.manual_seed(1)  # the same DropConnect mask in both runs
    ref, (ref_h, ref_c) = rnn(x, state)
    ref.sum().backward()
    ref_grad = rnn.weight_hh_raw.grad.clone()
    rnn.zero_grad()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = rnn(x, state)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and h.dtype == c.dtype == torch.float32
    # 70 steps of bf16 gates: outputs and state within 2 % of their float32 range, gradients finite and close.
    for got, want in ((out, ref), (h, ref_h), (c, ref_c)):
        assert (got.float() - want).abs().max() <= LOGIT_TOLERANCE * want.abs().max()
    grad = rnn.weight_hh_raw.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert (grad - ref_grad).abs().max() <= 0.05 * ref_grad.abs().max()


def test_lm_cross_entropy_takes_bf16_logits_and_computes_in_float32():
    logits = (4 * torch.randn(90, 70)).bfloat16().requires_grad_()
    targets = torch.randint(0, 70, (90,))
    loss = lm_cross_entropy(logits.view(3, 30, 70), targets.view(3, 30))
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits, targets)
    ref.backward()
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, rtol=1e-2, atol=1e-5)  # bf16 rounding


def _assert_close_logits(bf16: torch.Tensor, fp32: torch.Tensor) -> None:
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    err = (bf16.float() - fp32).abs().max()
    assert err <= LOGIT_TOLERANCE * fp32.abs().max(), (float(err), float(fp32.abs().max()))


def test_bf16_language_model_logits_match_fp32_and_training_stays_finite():
    trainer, model = _lm_trainer("bf16")
    x = torch.randint(2, V, (4, 16))
    model.eval()
    with torch.no_grad():
        ref = model(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, raw, _, hidden = model(x)
    _assert_close_logits(logits, ref)
    # The LSTM's own outputs are bf16 where the CPU runs oneDNN's bf16 LSTM; its state is float32 always.
    assert raw.dtype == (torch.bfloat16 if precision.cpu_has_native_bf16() else torch.float32)
    assert all(h.dtype == c.dtype == torch.float32 for h, c in hidden)
    _check_finite_bf16_training(trainer, model)
    assert all(h.dtype == torch.float32 for h, _ in trainer.task.hidden)  # the state carried between batches


def test_bf16_classifier_logits_match_fp32_and_training_stays_finite():
    trainer, model = _classifier_trainer("bf16")
    x = torch.randint(2, V, (4, 30))
    model.eval()
    with torch.no_grad():
        ref = model(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)[0]
    _assert_close_logits(logits, ref)
    _check_finite_bf16_training(trainer, model)


def _check_finite_bf16_training(trainer: Trainer, model: torch.nn.Module) -> None:
    """One epoch under bf16 autocast: every loss and gradient finite, weights and gradients float32."""
    assert trainer.precision.dtype == torch.bfloat16
    checked = []
    step = trainer.optimizer.step

    def checking_step(*args, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        checked.append(all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads) and bool(grads))
        return step(*args, **kwargs)

    trainer.optimizer.step = checking_step
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (epoch,) = trainer.fit().history
    assert checked and all(checked)
    assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["valid_loss"])
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it did train
