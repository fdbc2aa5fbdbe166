"""Plots for MLflow artifacts: pure functions from plain data to a PNG file, each returning its path.

Per trial or retrained model:
  - :func:`plot_learning_curves`: losses and validation scores against epoch (a trainer's history).
  - :func:`plot_lr_schedule`: the learning rate of every layer group against iteration.
  - :func:`plot_confusion_matrix`: counts, true class by predicted class.
  - :func:`classification_report` (numbers, JSON-ready) and :func:`plot_classification_report` (bars).
  - :func:`plot_lr_find`: loss against learning rate (log scale) with the suggested rate marked.
Per search:
  - :func:`plot_optimization_history`, :func:`plot_parallel_coordinate`, :func:`plot_param_importances`
    (Optuna's matplotlib plots of the search's study; :func:`plot_study` writes all three). A plot the
    study cannot support yet (too few completed trials) is skipped: the function logs why and returns None.
  - :func:`plot_asha_survival`: how many trials reached each ASHA rung (:func:`asha_rung_epochs`).

Rendering is Agg only and needs no display: our figures are ``matplotlib.figure.Figure`` objects drawn
under matplotlib's default style (so a user's matplotlibrc or a style another library switched on cannot
change them) and never registered with pyplot. Optuna's functions draw through pyplot; their figures
are closed after saving, inside an ``rc_context`` that undoes the ``ggplot`` style Optuna switches on.
Same input, same bytes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

DPI = 100
LOSS_KEYS = ("train_loss", "valid_loss")
SCORE_KEYS = ("valid_accuracy", "valid_macro_f1")
#: Fewer completed trials than this give noise, not parameter importances (fANOVA fits a forest on them).
MIN_TRIALS_FOR_IMPORTANCE = 4


# -- helpers ---------------------------------------------------------------------------------------


def _png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the plots are PNG files; give a path ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _figure(path: str | Path, size: tuple[float, float]) -> Iterator[Figure]:
    """A fresh Agg figure under matplotlib's default style, saved to ``path`` when the block ends."""
    target = _png_path(path)
    with style.context("default"):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig
        fig.savefig(target, dpi=DPI)


def _finite(values: Sequence[Any], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or not len(array):
        raise ValueError(f"{what}: expected a non-empty list of numbers, got shape {array.shape}")
    return array


# -- per trial -------------------------------------------------------------------------------------


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *,
                         loss_keys: Sequence[str] = LOSS_KEYS, score_keys: Sequence[str] = SCORE_KEYS,
                         title: str | None = None) -> Path:
    """Losses (left) and validation scores (right) against epoch.

    ``history``: one mapping per epoch, as ``Trainer.fit`` records it: ``{"epoch": 1, "train_loss": ..,
    "valid_loss": .., "valid_accuracy": .., "valid_macro_f1": .., ...}``; without ``epoch`` the rows are
    epochs 1, 2, ... A key missing from every row is left out; a missing or non-finite value is a gap.
    """
    if not history:
        raise ValueError("history is empty: a learning curve needs at least one epoch")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    present = {k for row in history for k in row}
    losses = [k for k in loss_keys if k in present]
    scores = [k for k in score_keys if k in present]
    if not losses and not scores:
        raise ValueError(f"history has none of {list(loss_keys) + list(score_keys)} (its keys: {sorted(present)}); "
                         "pass loss_keys / score_keys naming its metrics")

    def series(key: str) -> np.ndarray:
        return np.array([_number_or_nan(row.get(key)) for row in history])

    with _figure(path, (10, 4)) as fig:
        ax_loss, ax_score = fig.subplots(1, 2)
        for ax, keys, ylabel in ((ax_loss, losses, "loss"), (ax_score, scores, "score")):
            for key in keys:
                ax.plot(epochs, series(key), marker="o", label=key)  # markers: a 1-epoch run still shows
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if keys:
                ax.legend()
        if scores:
            ax_score.set_ylim(0, 1.02)
        fig.suptitle(title or "learning curves")
    return Path(path)


def _number_or_nan(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def plot_lr_schedule(schedule: Sequence[Mapping[str, Any]], path: str | Path, *,
                     group_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """The learning rate of each layer group against the training iteration.

    ``schedule``: one mapping per optimizer step, ``{"iteration": int, "lrs": [lr of group 0, ...]}``
    (groups lowest first, as ``optimizer.param_groups``), optionally with ``"trainable": [bool, ...]``:
    a frozen group's rate is set but unused, so it is drawn as a gap. ``group_names`` label the lines
    (default ``group 0`` ... with the last marked as the head).
    """
    if not schedule:
        raise ValueError("schedule is empty: record {'iteration': i, 'lrs': [...]} at every optimizer step")
    iterations = np.array([row["iteration"] for row in schedule], dtype=float)
    widths = {len(row["lrs"]) for row in schedule}
    if len(widths) != 1:
        raise ValueError(f"schedule rows have {sorted(widths)} layer groups; every row needs one rate per group")
    (n_groups,) = widths
    lrs = np.array([row["lrs"] for row in schedule], dtype=float)
    for i, row in enumerate(schedule):
        if "trainable" in row:
            lrs[i, ~np.asarray(row["trainable"], dtype=bool)] = np.nan
    names = list(group_names) if group_names else [f"group {g}" for g in range(n_groups)]
    if not group_names and n_groups > 1:
        names[-1] += " (head)"
    if len(names) != n_groups:
        raise ValueError(f"{len(names)} group names for {n_groups} layer groups")
    with _figure(path, (9, 4)) as fig:
        ax = fig.subplots()
        for g in range(n_groups):
            ax.plot(iterations, lrs[:, g], label=names[g])
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the peaks fill the corners
        ax.set_title(title or "learning-rate schedule")
    return Path(path)


def _square_matrix(labels: Sequence[str], matrix: Any) -> np.ndarray:
    cm = np.asarray(matrix)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"a confusion matrix for {len(labels)} labels must be {len(labels)}x{len(labels)}; "
                         f"got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("a confusion matrix holds counts; it has negative entries")
    return cm


def plot_confusion_matrix(labels: Sequence[str], matrix: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Counts with true class as rows and predicted class as columns (``metrics.confusion_matrix``'s
    layout), each cell annotated. Colour is the share of the row, so small classes are as visible as
    large ones."""
    cm = _square_matrix(labels, matrix)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.6 * len(labels) + 2.5)
    with _figure(path, (side + 1, side)) as fig:
        ax = fig.subplots()
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, label="share of the true class")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
        ax.set_title(title or f"confusion matrix (n={int(cm.sum())})")
    return Path(path)


def classification_report(labels: Sequence[str], matrix: Any) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows true, columns predicted).

    Returns a JSON-ready dict::

        {"per_class": {label: {"precision", "recall", "f1", "support", "predicted"}},
         "accuracy", "macro_precision", "macro_recall", "macro_f1", "n"}

    A class never predicted has precision 0; one with no examples has recall 0. The macro means cover
    the classes that occur in truth or prediction, as ``ulmfit_core.metrics.macro_f1`` does, so
    ``macro_f1`` equals the ``valid_macro_f1`` the trainer reports.
    """
    cm = _square_matrix(labels, matrix).astype(float)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    present = (support + predicted) > 0
    total = cm.sum()

    def macro(values: np.ndarray) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    return {
        "per_class": {str(name): {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "support": int(support[i]), "predicted": int(predicted[i])}
                      for i, name in enumerate(labels)},
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "n": int(total),
    }


def plot_classification_report(report: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Precision, recall and F1 per class as grouped bars (support under each class name); ``report``
    is what :func:`classification_report` returns."""
    per_class = report["per_class"]
    if not per_class:
        raise ValueError("the report has no classes")
    names = list(per_class)
    x = np.arange(len(names))
    width = 0.27
    with _figure(path, (max(6.0, 0.9 * len(names) + 2), 4)) as fig:
        ax = fig.subplots()
        for k, metric in enumerate(("precision", "recall", "f1")):
            ax.bar(x + (k - 1) * width, [per_class[n][metric] for n in names], width, label=metric)
        ax.set_xticks(x, [f"{n}\n(n={per_class[n]['support']})" for n in names])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(title or f"per-class scores (accuracy {report['accuracy']:.3f}, "
                              f"macro-F1 {report['macro_f1']:.3f})")
    return Path(path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], path: str | Path, *,
                 suggestion: float | None = None, title: str | None = None) -> Path:
    """Loss against learning rate (log x axis), as an ``lr_find`` sweep records them, with the suggested
    rate marked by a vertical line and a point on the curve."""
    x, y = _finite(lrs, "lrs"), _finite(losses, "losses")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} learning rates but {len(y)} losses; record one loss per rate")
    if (x <= 0).any():
        raise ValueError("learning rates must be > 0 for a log axis")
    with _figure(path, (7, 4)) as fig:
        ax = fig.subplots()
        ax.plot(x, y, label="loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3, which="both")
        if suggestion is not None:
            if suggestion <= 0:
                raise ValueError(f"suggestion must be > 0, got {suggestion}")
            order = np.argsort(x)
            at = float(np.interp(np.log(suggestion), np.log(x[order]), y[order]))
            ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2e}")
            ax.plot([suggestion], [at], "o", color="tab:red")
        ax.legend()
        ax.set_title(title or "learning-rate finder")
    return Path(path)


# -- per search: the Optuna study -----------------------------------------------------------------


def study_skip_reason(study: optuna.Study, plot: str, *, min_trials_for_importance: int = MIN_TRIALS_FOR_IMPORTANCE) -> str | None:
    """Why ``plot`` ("history", "parallel" or "importances") cannot be drawn from ``study`` yet, or None.

    Optuna draws these plots from COMPLETE trials only (pruned ones have no final value); with none it
    draws an empty frame, and importances from a handful of trials are noise.
    """
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        return f"the study has {len(study.directions)} objectives; these plots take a single-objective study"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if plot in ("history", "parallel"):
        return None if complete else f"no completed trial yet ({len(study.trials)} trials in all)"
    if plot != "importances":
        raise ValueError(f"unknown study plot {plot!r}; choose history, parallel or importances")
    if len(complete) < min_trials_for_importance:
        return (f"{len(complete)} completed trials; parameter importances need at least "
                f"{min_trials_for_importance}")
    varied = [name for name in {n for t in complete for n in t.params}
              if len({repr(t.params.get(name)) for t in complete}) > 1]
    return None if varied else "no parameter took more than one value among the completed trials"


@contextlib.contextmanager
def _optuna_axes(path: str | Path, size: tuple[float, float]) -> Iterator[list]:
    """Collect the Axes an Optuna matplotlib function returns; save and close its figure afterwards.
    Optuna switches pyplot to its ggplot style: the rc_context puts the user's settings back."""
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    target = _png_path(path)
    holder: list = []
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # optuna.visualization.matplotlib is "experimental"
        try:
            yield holder
            fig = holder[0].figure
            fig.set_size_inches(*size)
            fig.tight_layout()
            fig.savefig(target, dpi=DPI)
        finally:
            for ax in holder:
                plt.close(ax.figure)


def _log_skip(plot: str, reason: str) -> None:
    logger.info("skipping the %s plot: %s", plot, reason)


def plot_optimization_history(study: optuna.Study, path: str | Path) -> Path | None:
    """Each completed trial's objective value and the best so far, by trial number; None (and the
    reason logged) when no trial has completed."""
    reason = study_skip_reason(study, "history")
    if reason:
        _log_skip("optimization history", reason)
        return None
    from optuna.visualization import matplotlib as optuna_plots
    with _optuna_axes(path, (8, 4.5)) as axes:
        axes.append(optuna_plots.plot_optimization_history(study))
    return Path(path)


def plot_parallel_coordinate(study: optuna.Study, path: str | Path, params: Sequence[str] | None = None) -> Path | None:
    """The sampled values of ``params`` (default: all) and the objective of each completed trial as
    lines across parallel axes; None (reason logged) when no trial has completed."""
    reason = study_skip_reason(study, "parallel")
    if reason:
        _log_skip("parallel coordinate", reason)
        return None
    from optuna.visualization import matplotlib as optuna_plots
    n_axes = len(params) if params else len({name for t in study.trials for name in t.params})
    with _optuna_axes(path, (max(8.0, 1.8 * (n_axes + 1)), 5)) as axes:
        axes.append(optuna_plots.plot_parallel_coordinate(study, params=list(params) if params else None))
    return Path(path)


#: The importance method of the search's plot: optuna-dashboard's (PED-ANOVA, on completed trials, better
#: values meaning lower targets), so the plot in MLflow and the dashboard rank the parameters alike.
IMPORTANCE_METHOD = "PED-ANOVA"


def plot_param_importances(study: optuna.Study, path: str | Path, *, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE
                           ) -> Path | None:
    """Each sampled parameter's importance for the objective by PED-ANOVA, computed as optuna-dashboard does
    (the same evaluator and target), the method named in the title; None (and the reason logged) with fewer
    than ``min_trials`` completed trials or no parameter that varied."""
    reason = study_skip_reason(study, "importances", min_trials_for_importance=min_trials)
    if reason:
        _log_skip("parameter importances", reason)
        return None
    from optuna.visualization import matplotlib as optuna_plots

    evaluator, target = _importance_method(study)
    name = objective_name(study)
    with _optuna_axes(path, (8, 4.5)) as axes, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
        ax = optuna_plots.plot_param_importances(study, evaluator=evaluator, target=target, target_name=name)
        ax.set_title(f"Parameter importances for {name} ({IMPORTANCE_METHOD}, as optuna-dashboard computes them)")
        axes.append(ax)
    return Path(path)


def param_importances(study: optuna.Study) -> dict[str, float]:
    """``{parameter: importance}``, most important first: what :func:`plot_param_importances` draws."""
    from optuna.importance import get_param_importances

    evaluator, target = _importance_method(study)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
        return get_param_importances(study, evaluator=evaluator, target=target)


def _importance_method(study: optuna.Study) -> tuple[Any, Callable[[Any], float]]:
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.study import StudyDirection

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0  # PED-ANOVA looks for low targets
    return PedAnovaImportanceEvaluator(), lambda t: sign * t.value


def objective_name(study: optuna.Study) -> str:
    """The objective's name as the study records it (``set_metric_names``), else Optuna's ``Objective Value``."""
    names = study.metric_names
    return names[0] if names else "Objective Value"


def trial_plots(train_log: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """A trial's learning curves and, when recorded, its learning-rate schedule, from the ``train_log.json``
    of its checkpoint; the PNGs written in ``out_dir``."""
    out = Path(out_dir)
    made = [plot_learning_curves(train_log.get("history", []), out / "learning_curves.png")]
    if train_log.get("lr_schedule"):
        made.append(plot_lr_schedule(train_log["lr_schedule"], out / "lr_schedule.png",
                                     group_names=train_log.get("group_names")))
    return made


def plot_study(study: optuna.Study, out_dir: str | Path) -> dict[str, Path | None]:
    """The three study plots as ``optimization_history.png``, ``parallel_coordinate.png`` and
    ``param_importances.png`` in ``out_dir``; a skipped plot maps to None."""
    out = Path(out_dir)
    return {
        "optimization_history": plot_optimization_history(study, out / "optimization_history.png"),
        "parallel_coordinate": plot_parallel_coordinate(study, out / "parallel_coordinate.png"),
        "param_importances": plot_param_importances(study, out / "param_importances.png"),
    }


# -- per search: ASHA -------------------------------------------------------------------------------


def asha_survivors(epochs_reached: Sequence[int], rung_epochs: Sequence[int]) -> dict[int, int]:
    """``{rung epoch: trials that trained at least that many epochs}``, rungs in increasing order."""
    reached = np.asarray(epochs_reached, dtype=int)
    rungs = sorted(int(r) for r in rung_epochs)
    if not rungs or rungs[0] < 1:
        raise ValueError(f"rung epochs must be >= 1; got {list(rung_epochs)}")
    return {r: int((reached >= r).sum()) for r in rungs}


def plot_asha_survival(epochs_reached: Sequence[int], rung_epochs: Sequence[int], path: str | Path, *,
                       title: str | None = None) -> Path:
    """Bars: trials started, then trials that reached each rung epoch (so survived every rung before it).

    ``epochs_reached``: the epochs each trial trained (its last reported epoch), one int per trial.
    ``rung_epochs``: the rungs the search's ASHA decided at (``search.rungs.asha_rungs``).
    """
    if len(epochs_reached) == 0:
        raise ValueError("epochs_reached is empty: give the epochs each trial trained")
    counts = asha_survivors(epochs_reached, rung_epochs)
    names = ["started"] + [f"epoch {r}" for r in counts]
    values = [len(epochs_reached)] + list(counts.values())
    with _figure(path, (max(5.0, 1.1 * len(names) + 2), 4)) as fig:
        ax = fig.subplots()
        bars = ax.bar(names, values, color=["tab:gray"] + ["tab:blue"] * len(counts))
        ax.bar_label(bars)
        ax.set_ylabel("trials")
        ax.set_xlabel("ASHA rung")
        ax.set_ylim(0, max(values) * 1.15)
        ax.set_title(title or "trials reaching each ASHA rung")
    return Path(path)
