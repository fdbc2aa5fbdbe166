"""STLR values, discriminative rates, freezing and unfreezing phases: index arithmetic, no training."""

import pytest
import torch
from torch import nn

from ulmfit_core.schedule import Phase, discriminative_lrs, freeze_to, phase_of_epoch, stlr, unfreeze_phases


def test_stlr_matches_paper_formula_at_known_iterations():
    # T = 100, cut_frac = 1/10 -> peak at iteration 10; ratio 32.
    lr, ratio, cut, T = 0.01, 32.0, 10.0, 100
    assert stlr(0, T, lr, ratio, cut) == pytest.approx(lr / ratio)
    assert stlr(10, T, lr, ratio, cut) == pytest.approx(lr)
    assert stlr(5, T, lr, ratio, cut) == pytest.approx(lr * (1 + 0.5 * (ratio - 1)) / ratio)
    # Decay: p = 1 - (55 - 10) / 90 = 0.5
    assert stlr(55, T, lr, ratio, cut) == pytest.approx(lr * (1 + 0.5 * (ratio - 1)) / ratio)
    assert stlr(100, T, lr, ratio, cut) == pytest.approx(lr / ratio)
    assert stlr(500, T, lr, ratio, cut) == pytest.approx(lr / ratio)


def test_stlr_rises_then_falls_monotonically():
    values = [stlr(t, 60, 1.0, 8, 3) for t in range(61)]
    peak = values.index(max(values))
    assert peak == 20
    assert all(a < b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a > b for a, b in zip(values[peak:-1], values[peak + 1:]))


def test_discriminative_rates_divide_by_lrm_per_group_down():
    lrs = discriminative_lrs(0.01, 2.6, 5)
    assert lrs[-1] == pytest.approx(0.01)
    for k in range(4):
        assert lrs[k] == pytest.approx(lrs[k + 1] / 2.6)
    assert lrs[0] == pytest.approx(0.01 / 2.6 ** 4)


def _groups():
    return [[nn.Parameter(torch.zeros(2))] for _ in range(4)]


def test_freeze_to_top_groups_only():
    groups = _groups()
    freeze_to(groups, 2)
    assert [g[0].requires_grad for g in groups] == [False, False, True, True]
    freeze_to(groups, 4)
    assert all(g[0].requires_grad for g in groups)
    freeze_to(groups, 0)  # 0 means all
    assert all(g[0].requires_grad for g in groups)


def test_unfreeze_phases_default_gradual_schedule():
    phases = unfreeze_phases(5, [1, 1, 1], 6)
    assert phases == [Phase(1, 1, 0), Phase(2, 1, 1), Phase(3, 1, 2), Phase(5, 3, 3)]
    assert [phase_of_epoch(phases, e).n_trainable for e in range(6)] == [1, 2, 3, 5, 5, 5]


def test_unfreeze_phases_cut_short_and_capped():
    assert unfreeze_phases(5, [1, 1, 1], 2) == [Phase(1, 1, 0), Phase(2, 1, 1)]
    # More phases than groups: the schedule reaches "all groups" and stays there.
    assert unfreeze_phases(2, [1, 1, 1], 3) == [Phase(1, 1, 0), Phase(2, 2, 1)]
    assert unfreeze_phases(4, [], 3) == [Phase(4, 3, 0)]
    with pytest.raises(IndexError):
        phase_of_epoch(unfreeze_phases(4, [], 3), 3)
