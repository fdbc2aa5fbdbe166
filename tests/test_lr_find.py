"""fastai's learning-rate range test: exponential rates, early stop when the loss runs away, the
valley suggestion, and the CLI's plot and numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import launch
from ulmfit_core.config import recipe_from_dict
from ulmfit_core.corpus import prepare_corpus
from ulmfit_core.lr_find import loss_fell, lr_find, valley

TINY = {"data": {"dataset": "trec", "max_train_rows": 300}, "model": {"preset": "tiny"},
        "lm": {"bs": 16, "bptt": 20}, "classifier": {"bs": 16, "bptt": 20, "from_scratch": True}}


def test_valley_picks_the_middle_of_the_longest_descent():
    lrs = list(np.logspace(-6, 0, 30))
    # flat, then a long descent from index 5 to 20, then a blow-up
    losses = [5.0] * 5 + list(np.linspace(5.0, 1.0, 16)) + list(np.linspace(1.5, 20, 9))
    pick = valley(lrs, losses)
    i = lrs.index(pick)
    assert 5 <= i <= 20 and i == 4 + 5 + 2  # start + 1/3 + 1/6 of the valley's length, as fastai
    with pytest.raises(ValueError, match="at least two"):
        valley([1e-3], [1.0])


@pytest.mark.parametrize("stage", ["lm", "classifier"])
def test_range_test_rises_exponentially_and_stops_when_the_loss_runs_away(stage, datasets_dir, tmp_path):
    cfg = recipe_from_dict(TINY)
    corpus = prepare_corpus(cfg, datasets_dir, tmp_path / "cache")
    res = lr_find(cfg, corpus, stage, num_it=60, end_lr=100.0)
    ratios = np.diff(np.log(res.lrs))
    assert np.allclose(ratios, ratios[0]) and res.lrs[0] == pytest.approx(1e-7)
    assert all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] > 1.5 * min(res.losses)  # at rates near 100 the loss runs away
    assert len(res.lrs) == 60 or (res.stopped_early and res.losses[-1] > 4 * min(res.losses))
    if stage == "lm":
        assert res.lrs[0] < res.suggestion < res.lrs[-1]
    else:  # a classifier from scratch on 300 questions: too few batches at a useful rate to fall before it runs away
        assert res.suggestion is None and not loss_fell(res.raw_losses, res.losses)


def test_cli_writes_the_plot_the_numbers_and_the_suggestion(datasets_dir, tmp_path, capsys):
    rc = launch.main(["lr-find", "--stage", "lm", "--set", "data.max_train_rows=300",
                      "--set", "model.preset=tiny", "--set", "lm.bs=16", "--set", "lm.bptt=20",
                      "--num-it", "40", "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(tmp_path / "lrf"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "lrf" / "lr_find_lm.json").read_text())
    assert f"--set lm.lr={saved['suggestion']:.2g}" in out
    assert (tmp_path / "lrf" / "lr_find_lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_flat_curve_gets_no_suggestion_and_the_cli_says_why(datasets_dir, tmp_path, capsys):
    start = [2.1, 1.9, 2.0, 2.05, 1.95]  # the first batches' mean: 2.0
    assert loss_fell(start + [1.9, 1.8], start + [1.99, 1.9]) and not loss_fell(start + [2.0], start + [1.97])
    cfg = recipe_from_dict(TINY)
    corpus = prepare_corpus(cfg, datasets_dir, tmp_path / "cache")
    res = lr_find(cfg, corpus, "lm", num_it=20, end_lr=1e-6)  # rates far too small to move the loss
    assert res.suggestion is None and not loss_fell(res.raw_losses, res.losses)
    # the CLI says nothing of a start it does not have, and suggests no rate from a flat curve
    rc = launch.main(["lr-find", "--stage", "lm", "--set", "data.max_train_rows=300", "--set", "model.preset=tiny",
                      "--set", "lm.bs=16", "--set", "lm.bptt=20", "--num-it", "10", "--end-lr", "1e-6",
                      "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(tmp_path / "lrf"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0 and "random weights" not in captured.out and "starting from" not in captured.out
    assert json.loads((tmp_path / "lrf" / "lr_find_lm.json").read_text())["suggestion"] is None
    assert "no rate is suggested" in captured.err and "suggested learning rate" not in captured.out
