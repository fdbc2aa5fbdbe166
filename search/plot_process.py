"""Draw a search's plots in one helper process at low CPU priority, off the driver.

A trial's learning curves and learning-rate schedule take about 0.25 s of CPU to draw; the search's
Optuna plots at its end about 1 s, plus about 3.5 s the first time for importing Optuna's visualization
and scikit-learn (Optuna's fANOVA importances) on a 2-core machine: those imports go ahead once the
search's last trial has started (``import_search_plot_modules``). Drawn on the driver's MLflow writer
thread, that work held the GIL that Tune's event loop needs to answer every trial's per-epoch report,
and ran at the trials' priority. Here it runs in one helper process, started with the search and
niced by :data:`NICENESS` so that the kernel runs a trial's threads first. The process stays for later
searches of the same driver process (a notebook, the benchmarks) and ends with it.

A plot is never a reason to fail a search: when the helper cannot start or dies, plots are drawn in
this process instead (as before the helper existed) and the reason is logged once. An exception the
plot function itself raises (bad data) comes back unchanged, as if it had run here.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

logger = logging.getLogger(__name__)

#: Added to the helper's nice value: the kernel then gives a trial's threads the CPU first.
NICENESS = 10

R = TypeVar("R")


class PlotProcess:
    """One helper process that runs plot functions; see the module docstring.

    ``call(fn, *args)`` returns ``fn(*args)`` computed in the helper (``fn`` and its arguments must be
    picklable: module-level functions and plain data), or here when the helper is unavailable.
    Thread-safe: the MLflow writer thread and the driver's main thread share it; calls run one at a time.

    The helper is ``python -m search.plot_process``, not a ``multiprocessing`` child: those re-run the
    caller's main script, and a user's script that starts a search without an ``if __name__ ==
    "__main__"`` guard would start a second search. Requests and answers are pickles over its
    stdin/stdout, between this process and its own child only.
    """

    def __init__(self, niceness: int = NICENESS) -> None:
        self.niceness = niceness
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.unavailable: str | None = None  # why plots are drawn in this process, once that happened

    def start(self) -> None:
        """Start the helper now (it imports in the background); a no-op when it runs or cannot."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is not None or self.unavailable:
            return
        # The helper sees the modules this process sees, wherever the project lives.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.niceness)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as e:
            self._give_up(e)

    @property
    def helper_pid(self) -> int | None:
        """The helper's process id while it runs; None before it starts, after it stopped, or without one."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        with self._lock:
            self._start()
            proc = self._proc
            if proc is not None:
                try:
                    _send(proc.stdin, (fn, args, kwargs))
                    ok, value = pickle.load(proc.stdout)  # our own child's answer
                except (OSError, EOFError, pickle.PickleError) as e:  # it died, or never started
                    self._stop(proc)
                    self._give_up(e)
                else:
                    if ok:
                        return value
                    raise value
        return fn(*args, **kwargs)

    def call_in_background(self, fn: Callable[..., Any], /, *args: Any) -> threading.Thread | None:
        """``call(fn, *args)`` on a daemon thread, its result dropped and any error logged: work the
        helper can do ahead of a later call (imports). Calls made meanwhile wait for it, as calls do.
        Nothing runs (None) when the helper is unavailable: done in this process, such work would take
        the GIL from Tune's loop while trials run, to save nothing the later call would not do anyway."""
        self.start()
        if self.unavailable:
            return None

        def run() -> None:
            try:
                self.call(fn, *args)
            except Exception as e:  # noqa: BLE001 (ahead-of-time work only: the later call does it anyway)
                logger.debug("plot helper: %s failed in the background: %s", getattr(fn, "__name__", fn), e)

        thread = threading.Thread(target=run, name="plot-helper-background", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the helper; a later ``call`` starts a new one."""
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)

    def _stop(self, proc: subprocess.Popen) -> None:
        self._proc = None
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # EOF on its stdin ends the helper's loop
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _give_up(self, error: BaseException) -> None:
        self.unavailable = f"{type(error).__name__}: {error}"
        logger.warning("plots are drawn in the driver process: the plot helper process is unavailable (%s)",
                       self.unavailable)


def _send(stream: BinaryIO, message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _serve(niceness: int) -> None:
    """The helper's loop: lower its priority, import what drawing needs, then answer requests until
    its stdin closes. Answers go to a private copy of stdout; anything a library prints goes to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)
        except OSError:  # not allowed here: drawing still stays off the driver's GIL
            pass
    # Only what every search draws (the trials' plots): Optuna's plots and their scikit-learn (fANOVA),
    # seconds of CPU, are imported once the search's last trial has started (import_search_plot_modules),
    # since on a small machine work in the background during the first trials slows them (measured:
    # bench/search_scaling.py).
    from search import plots  # noqa: F401

    while True:
        try:
            fn, args, kwargs = pickle.load(requests)  # from the driver that started this process
        except EOFError:
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 (handed back to the caller, who decides)
            answer = (False, e)
        try:
            _send(answers, answer)
        except (pickle.PickleError, TypeError, AttributeError) as e:  # an unpicklable result or exception
            _send(answers, (False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({e})")))


# -- what the helper draws (module-level, so the helper can unpickle them) ---------------------------


def draw_trial_plots(train_log: Mapping[str, Any], out_dir: str) -> list[Path]:
    """A trial's learning curves and, when recorded, its learning-rate schedule, from the
    ``train_log.json`` of its checkpoint; the PNGs written in ``out_dir``."""
    from search import plots

    out = Path(out_dir)
    made = [plots.plot_learning_curves(train_log.get("history", []), out / "learning_curves.png")]
    if train_log.get("lr_schedule"):
        made.append(plots.plot_lr_schedule(train_log["lr_schedule"], out / "lr_schedule.png",
                                           group_names=train_log.get("group_names")))
    return made


def import_search_plot_modules(trials: int) -> list[str]:
    """Import what ``draw_search_plots`` needs for a search of ``trials`` trials (Optuna's plots and
    study storage; from ``plots.MIN_TRIALS_FOR_IMPORTANCE`` trials, its importance evaluators), so that the
    search's end, which waits for its plots, does not wait for imports; returns the modules imported. Sent
    ahead by ``tuner.SearchPlotsAhead``."""
    from optuna.visualization import matplotlib  # noqa: F401

    from search import plots, store  # noqa: F401  (store: Optuna's RDB storage, SQLAlchemy)

    imported = ["optuna.visualization.matplotlib", "search.store"]
    if trials >= plots.MIN_TRIALS_FOR_IMPORTANCE:
        from optuna.importance import PedAnovaImportanceEvaluator  # noqa: F401

        imported.append("optuna.importance")
    return imported


def draw_search_plots(search_dir: str, out_dir: str, asha: tuple[int, float, int] | None,
                      epochs_reached: Sequence[int]) -> tuple[list[Path], list[str]]:
    """The study's plots (``plots.plot_study``) and, for an ASHA search (``asha``: its grace period,
    reduction factor and max epochs), the bars of trials reaching each rung from ``epochs_reached``;
    returns the PNGs made and the reasons logged for the ones skipped (the caller logs them: the
    helper's own log goes nowhere)."""
    from search import plots, store

    study = store.load_study(search_dir)
    if study is None:  # a search from before studies were stored: Ray's searcher state (imports Ray Tune)
        from search.searcher import load_study

        study = load_study(search_dir)
    out = Path(out_dir)
    skipped: list[str] = []
    collect = _Collect(skipped)
    saved = plots.logger.level, plots.logger.propagate
    plots.logger.addHandler(collect)
    plots.logger.setLevel(logging.INFO)
    plots.logger.propagate = False  # the caller logs them, once, wherever this ran
    try:
        made = [p for p in plots.plot_study(study, out).values() if p is not None]
        if asha:
            rungs = plots.asha_rung_epochs(*asha)
            made.append(plots.plot_asha_survival(list(epochs_reached), rungs, out / "asha_survival.png"))
    finally:
        plots.logger.removeHandler(collect)
        plots.logger.setLevel(saved[0])
        plots.logger.propagate = saved[1]
    return made, skipped


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


#: The driver's helper, shared by the MLflow callback (per-trial plots) and the search's end.
SHARED = PlotProcess()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else NICENESS)
