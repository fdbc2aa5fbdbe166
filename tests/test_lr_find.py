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
from ulmfit_core.lr_find import lr_find, valley

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
    assert res.lrs[0] < res.suggestion < res.lrs[-1]


def test_cli_writes_the_plot_the_numbers_and_the_suggestion(datasets_dir, tmp_path, capsys):
    rc = launch.main(["lr-find", "--stage", "classifier", "--set", "data.max_train_rows=300",
                      "--set", "model.preset=tiny", "--set", "classifier.from_scratch=true", "--set", "classifier.bs=16",
                      "--num-it", "40", "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(tmp_path / "lrf"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "lrf" / "lr_find_classifier.json").read_text())
    assert f"--set classifier.lr={saved['suggestion']:.2g}" in out
    assert (tmp_path / "lrf" / "lr_find_classifier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
