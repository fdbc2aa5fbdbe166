"""search.plots: every plot writes a real PNG from real-shaped input; the per-class report's numbers
are right on a hand-checked matrix; study plots skip (with a logged reason) what a study cannot support."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg

from search import plots
from ulmfit_core.metrics import macro_f1
from ulmfit_core.schedule import discriminative_lrs, stlr

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TREC = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def assert_png(path: Path) -> None:
    """A PNG file that decodes to a non-empty image with more than one colour."""
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50, pixels.shape
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1


# -- per trial ---------------------------------------------------------------------------------------

HISTORY = [  # what Trainer.fit records for a 4-epoch classifier
    {"epoch": e, "train_loss": tl, "valid_loss": vl, "valid_accuracy": acc, "valid_macro_f1": f1, "epoch_seconds": 3.1}
    for e, tl, vl, acc, f1 in [(1, 1.62, 1.31, 0.52, 0.41), (2, 1.10, 0.92, 0.68, 0.60),
                               (3, 0.81, 0.74, 0.75, 0.69), (4, 0.62, 0.70, 0.78, 0.72)]
]


def test_learning_curves(tmp_path):
    assert_png(plots.plot_learning_curves(HISTORY, tmp_path / "curves.png", title="trial 3"))
    one_epoch = plots.plot_learning_curves(HISTORY[:1], tmp_path / "one.png")  # ASHA stopped it after 1 epoch
    assert_png(one_epoch)
    with pytest.raises(ValueError, match="loss_keys"):
        plots.plot_learning_curves([{"epoch": 1, "perplexity": 30.0}], tmp_path / "none.png")
    with pytest.raises(ValueError, match=".png"):
        plots.plot_learning_curves(HISTORY, tmp_path / "curves.jpg")


def _stlr_schedule(n_groups=4, epochs=3, batches=20, lr=0.01, unfreeze=(1, 1)):
    """The schedule a ULMFiT classifier stage uses: STLR per phase, discriminative rates, gradual
    unfreezing (one more group per phase), recorded per step as the trainer would."""
    peaks = discriminative_lrs(lr, 2.6, n_groups)
    phase_epochs = list(unfreeze) + [epochs - sum(unfreeze)]
    rows, it = [], 0
    for phase, n_epochs in enumerate(phase_epochs):
        cycle = n_epochs * batches
        n_trainable = min(n_groups, phase + 1) if phase < len(unfreeze) else n_groups
        for step in range(cycle):
            rows.append({"iteration": it, "lrs": [stlr(step, cycle, p, 8.0, 3.0) for p in peaks],
                         "trainable": [g >= n_groups - n_trainable for g in range(n_groups)]})
            it += 1
    return rows


def test_lr_schedule(tmp_path):
    schedule = _stlr_schedule()
    assert_png(plots.plot_lr_schedule(schedule, tmp_path / "lr.png"))
    without_masks = [{"iteration": r["iteration"], "lrs": r["lrs"]} for r in schedule]
    names = ["embedding", "lstm 0", "lstm 1", "head"]
    assert_png(plots.plot_lr_schedule(without_masks, tmp_path / "lr_all.png", group_names=names))
    with pytest.raises(ValueError, match="one rate per group"):
        plots.plot_lr_schedule([{"iteration": 0, "lrs": [0.1, 0.2]}, {"iteration": 1, "lrs": [0.1]}],
                               tmp_path / "x.png")


CM = np.array([  # hand-checked below; rows true, columns predicted; class D never occurs nor is predicted
    [5, 1, 0, 0],
    [2, 3, 1, 0],
    [0, 0, 4, 0],
    [0, 0, 0, 0],
])


def test_classification_report_numbers_by_hand():
    report = plots.classification_report(["A", "B", "C", "D"], CM)
    a, b, c, d = (report["per_class"][k] for k in "ABCD")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((5 / 7, 5 / 6, 10 / 13))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((3 / 4, 3 / 6, 6 / 10))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((4 / 5, 4 / 4, 8 / 9))
    assert (a["support"], b["support"], c["support"], d["support"]) == (6, 6, 4, 0)
    assert (a["predicted"], b["predicted"], c["predicted"]) == (7, 4, 5)
    assert d == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    assert report["accuracy"] == pytest.approx(12 / 16) and report["n"] == 16
    # D (absent from truth and prediction) is left out of the macro means, as the trainer does.
    assert report["macro_f1"] == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3)
    assert report["macro_f1"] == pytest.approx(macro_f1(CM))
    assert report["macro_precision"] == pytest.approx((5 / 7 + 3 / 4 + 4 / 5) / 3)
    assert report["macro_recall"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    assert json.loads(json.dumps(report)) == report  # loggable as JSON as it is


def test_confusion_matrix_and_report_plots(tmp_path):
    rng = np.random.default_rng(0)
    cm = np.diag([9, 130, 80, 60, 75, 100]) + rng.integers(0, 8, size=(6, 6))  # TREC-6-like test set
    assert_png(plots.plot_confusion_matrix(TREC, cm, tmp_path / "cm.png"))
    assert_png(plots.plot_classification_report(plots.classification_report(TREC, cm), tmp_path / "report.png"))
    with pytest.raises(ValueError, match="6x6"):
        plots.plot_confusion_matrix(TREC, cm[:5], tmp_path / "bad.png")


def test_lr_find(tmp_path):
    lrs = np.geomspace(1e-6, 1.0, 80)
    losses = 2.0 - 0.8 / (1 + np.exp(-(np.log10(lrs) + 3))) + np.exp(np.log10(lrs) + 0.5)  # flat, falls, blows up
    assert_png(plots.plot_lr_find(lrs.tolist(), losses.tolist(), tmp_path / "lr_find.png", suggestion=3e-3))
    assert_png(plots.plot_lr_find(lrs, losses, tmp_path / "no_suggestion.png"))
    with pytest.raises(ValueError, match="losses"):
        plots.plot_lr_find(lrs, losses[:-1], tmp_path / "bad.png")


def test_same_input_same_bytes(tmp_path):
    first = plots.plot_confusion_matrix(["A", "B", "C", "D"], CM, tmp_path / "one.png").read_bytes()
    assert plots.plot_confusion_matrix(["A", "B", "C", "D"], CM, tmp_path / "two.png").read_bytes() == first


# -- per search --------------------------------------------------------------------------------------


def _study(n_complete: int, n_pruned: int, seed: int = 0) -> optuna.Study:
    """A search-like study: two parameters (log-scaled lr, drop_mult), per-epoch intermediate values,
    the trials ASHA stopped told as PRUNED (as search.searcher.StudySearcher does)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for i in range(n_complete + n_pruned):
        trial = study.ask()
        lr = trial.suggest_float("classifier.lr", 1e-3, 1e-1, log=True)
        drop = trial.suggest_float("classifier.drop_mult", 0.1, 1.0)
        accuracy = 0.9 - 0.3 * abs(math.log10(lr) + 2) - 0.05 * drop
        n_done = sum(t.state.name == "PRUNED" for t in study.trials)
        pruned = n_done < n_pruned and (i % 2 == 1 or i - n_done >= n_complete)  # every other one, then the rest
        epochs = 1 if pruned else 4
        for epoch in range(1, epochs + 1):
            trial.report(accuracy * epoch / 4, epoch)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, accuracy)
    return study


def test_study_plots(tmp_path):
    study = _study(n_complete=6, n_pruned=3)
    assert sum(t.state.name == "PRUNED" for t in study.trials) == 3
    written = plots.plot_study(study, tmp_path)
    assert set(written) == {"optimization_history", "parallel_coordinate", "param_importances"}
    for path in written.values():
        assert path is not None
        assert_png(path)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # Optuna's pyplot figures were closed
    assert plt.rcParams["axes.facecolor"] == "white"  # and its ggplot style did not leak


def test_too_few_trials_for_importances_is_skipped_with_a_reason(tmp_path, caplog):
    study = _study(n_complete=2, n_pruned=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    with caplog.at_level(logging.INFO, logger="search.plots"):
        result = plots.plot_param_importances(study, tmp_path / "importances.png")
    assert result is None and not (tmp_path / "importances.png").exists()
    assert "2 completed trials" in caplog.text and "at least 4" in caplog.text
    assert plots.plot_optimization_history(study, tmp_path / "history.png") is not None  # these still work

    all_pruned = _study(n_complete=0, n_pruned=2)
    assert plots.plot_study(all_pruned, tmp_path / "pruned") == {
        "optimization_history": None, "parallel_coordinate": None, "param_importances": None}
    assert "no completed trial" in plots.study_skip_reason(all_pruned, "history")


def test_asha_survival(tmp_path):
    rungs = [1, 2, 4, 8]
    epochs = [1, 1, 1, 1, 2, 2, 4, 8, 8, 1]  # ten trials: most stopped at the first rung
    assert plots.asha_survivors(epochs, rungs) == {1: 10, 2: 5, 4: 3, 8: 2}
    assert_png(plots.plot_asha_survival(epochs, rungs, tmp_path / "asha.png"))


def test_importances_rank_as_optuna_dashboard_ranks_them():
    """PED-ANOVA on the completed trials, better accuracy being a lower target: optuna-dashboard's method,
    so the plot in MLflow and the dashboard agree. Here the rate decides the accuracy and drop_mult barely."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    study = _study(n_complete=30, n_pruned=4)
    ours = plots.param_importances(study)
    assert list(ours)[0] == "classifier.lr" and ours["classifier.lr"] > 2 * ours["classifier.drop_mult"]
    dashboard = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=lambda t: -t.values[0])
    assert list(ours) == list(dashboard) and ours == pytest.approx(dashboard)
    study.set_metric_names(["valid_accuracy"])
    assert plots.objective_name(study) == "valid_accuracy"
