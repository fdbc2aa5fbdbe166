"""The plot helper process: plots are drawn there, at a lower CPU priority than the driver; bad data
fails as it would in-process; a dead or impossible helper falls back to drawing in the driver."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from search import plot_process
from search.plot_process import PlotProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TRAIN_LOG = {
    "history": [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.1 / e, "valid_accuracy": 0.5 + 0.1 * e}
                for e in (1, 2, 3)],
    "lr_schedule": [{"iteration": i, "lrs": [0.01 / 2.6, 0.01], "trainable": [i > 5, True]} for i in range(12)],
    "group_names": ["encoder", "head"],
}


@pytest.fixture(scope="module")
def helper():
    """One helper for the tests that keep it alive (each start imports matplotlib and Optuna: seconds)."""
    process = PlotProcess()
    yield process
    process.close()


@pytest.fixture
def own_helper():
    process = PlotProcess()
    yield process
    process.close()


def _priority(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_trial_plots_are_drawn_in_a_lower_priority_process(helper, tmp_path):
    made = helper.call(plot_process.draw_trial_plots, TRAIN_LOG, str(tmp_path))
    assert [p.name for p in made] == ["learning_curves.png", "lr_schedule.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in made)
    pid = helper.call(os.getpid)  # the process that draws
    assert pid == helper.helper_pid != os.getpid()
    assert _priority(pid) == min(_priority(0) + plot_process.NICENESS, 19)
    assert helper.unavailable is None


def test_a_plot_error_comes_back_unchanged(helper, tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        helper.call(plot_process.draw_trial_plots, {"history": []}, str(tmp_path))
    assert helper.unavailable is None  # bad data is not a broken helper
    assert helper.call(os.getpid) != os.getpid()


def test_a_dead_helper_falls_back_to_drawing_here(own_helper, tmp_path, caplog):
    helper = own_helper
    helper.start()
    os.kill(helper.helper_pid, signal.SIGKILL)
    made = helper.call(plot_process.draw_trial_plots, TRAIN_LOG, str(tmp_path))
    assert [p.name for p in made] == ["learning_curves.png", "lr_schedule.png"]
    assert helper.unavailable and "plot helper process is unavailable" in caplog.text
    assert helper.call(os.getpid) == os.getpid() and helper.helper_pid is None


def test_a_helper_that_cannot_start_falls_back(monkeypatch, tmp_path, caplog):
    def no_processes(*args, **kwargs):
        raise OSError("no processes left on this system")

    monkeypatch.setattr(plot_process.subprocess, "Popen", no_processes)
    process = PlotProcess()
    made = process.call(plot_process.draw_trial_plots, TRAIN_LOG, str(tmp_path))
    assert Path(made[0]).read_bytes().startswith(PNG_MAGIC)
    assert "no processes left" in process.unavailable and "no processes left" in caplog.text


def test_work_ahead_is_not_done_in_the_driver_without_a_helper(monkeypatch):
    """Imports ahead of the search's plots are worth it only off the driver's GIL."""
    def no_processes(*args, **kwargs):
        raise OSError("no processes left on this system")

    monkeypatch.setattr(plot_process.subprocess, "Popen", no_processes)
    ran = []
    process = PlotProcess()
    assert process.call_in_background(ran.append, "imported") is None
    assert ran == [] and "no processes left" in process.unavailable


def _two_trial_study(search_dir: Path) -> None:
    import optuna

    from search import store

    search_dir.mkdir()
    study = optuna.create_study(study_name=store.study_name(search_dir), storage=store.study_url(search_dir),
                                direction="maximize")
    for x in (0.1, 0.5):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        study.tell(trial, x)


def test_search_plots_report_what_they_skipped(helper, tmp_path):
    """Two completed trials: the history and parallel plots are drawn, importances skipped with the
    reason returned to the driver (the helper's own log goes nowhere)."""
    search_dir = tmp_path / "search"
    _two_trial_study(search_dir)
    made, skipped = helper.call(plot_process.draw_search_plots, str(search_dir), str(tmp_path / "plots"),
                                (1, 2, 2), [1, 2])
    assert sorted(p.name for p in made) == ["asha_survival.png", "optimization_history.png",
                                            "parallel_coordinate.png"]
    assert len(skipped) == 1 and "parameter importances" in skipped[0] and "2 completed trials" in skipped[0]


def test_skipped_importances_do_not_import_scikit_learn(own_helper, tmp_path):
    """fANOVA's forest is scikit-learn's (seconds to import): a search with too few trials for
    importances never loads it."""
    search_dir = tmp_path / "search"
    _two_trial_study(search_dir)
    own_helper.call(plot_process.draw_search_plots, str(search_dir), str(tmp_path / "plots"), None, [1, 1])
    assert own_helper.call(os.getpid) != os.getpid()  # it ran in the helper, whose modules are asked next
    assert own_helper.call(eval, "'optuna' in __import__('sys').modules") is True
    assert own_helper.call(eval, "'sklearn' in __import__('sys').modules") is False


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """The helper is not a multiprocessing child, so it never re-runs the caller's script (which, for a
    script that starts a search at module level, would start the search again)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os\n"
        "from search import plot_process\n"
        f"open({str(tmp_path / 'runs.txt')!r}, 'a').write('ran\\n')\n"
        "print(plot_process.SHARED.call(os.getpid) != os.getpid())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert (tmp_path / "runs.txt").read_text() == "ran\n"


def _helper_has(helper: PlotProcess, module: str) -> bool:
    return helper.call(eval, f"{module!r} in __import__('sys').modules")


def test_the_search_plots_imports_start_once_the_last_trial_has_started(own_helper, monkeypatch):
    """The search's end waits for its plots: their imports (Optuna's importance evaluators) go ahead in the
    helper while the last trial trains, and not before that trial starts."""
    import time

    from search.tuner import SearchPlotsAhead

    monkeypatch.setattr(plot_process, "SHARED", own_helper)
    ahead = SearchPlotsAhead(num_samples=4)
    ahead.on_trial_start(3, trials=[object()] * 3, trial=None)
    assert not _helper_has(own_helper, "optuna.importance")
    ahead.on_trial_start(4, trials=[object()] * 4, trial=None)
    deadline = time.monotonic() + 120
    while not _helper_has(own_helper, "optuna.importance") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _helper_has(own_helper, "optuna.importance")
    assert own_helper.helper_pid is not None and own_helper.unavailable is None


def test_a_search_too_small_for_importances_imports_no_scikit_learn_ahead(own_helper):
    made = own_helper.call(plot_process.import_search_plot_modules, 3)
    assert made == ["optuna.visualization.matplotlib", "search.store"]
    assert not _helper_has(own_helper, "sklearn")


def test_a_background_call_that_fails_is_logged_not_raised(own_helper, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger=plot_process.__name__)
    own_helper.call_in_background(plot_process.draw_trial_plots, {"history": []}, "/nonexistent").join(60)
    assert "failed in the background" in caplog.text and "history is empty" in caplog.text
    assert own_helper.unavailable is None
