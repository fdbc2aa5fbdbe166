"""Schedulers driven by fake trial results (no Ray runtime): ASHA at the unfreezing rungs stops trials only
there; HyperBand is built from the config and stops trials; settings are validated with messages."""
from __future__ import annotations

import random

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, HyperBandForBOHB, TrialScheduler

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import trainable as T
from search.errors import SearchConfigError
from search.rungs import unfreeze_rungs
from search.schedulers import MilestoneASHA, RunningTrialLimiter, make_limiter, make_scheduler
from search.searcher import make_searcher
from search.settings import search_config_from_dict
from ulmfit_core.awd_lstm import classifier_group_count
from ulmfit_core.config import recipe_from_dict
from ulmfit_core.schedule import unfreeze_phases

SPACE = {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}


def _config(space=SPACE, epochs=8, unfreeze=(1, 1), **scheduler):
    return search_config_from_dict({
        "recipe": {"data": {"dataset": "trec"}, "model": {"preset": "tiny"},
                   "classifier": {"epochs": epochs, "unfreeze": list(unfreeze)}},
        "space": space, "search": {"scheduler": scheduler or None, "seed": 0, "max_concurrent": 2}})


class FakeTrial:
    """What the schedulers read of a trial: its id (and, for HyperBand, a status)."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving, self.last_result = trial_id, "RUNNING", False, {}

    def __repr__(self) -> str:
        return self.trial_id


class FakeController:
    """The part of Ray's TuneController that HyperBand calls."""

    def __init__(self, limiter):
        self.search_alg = type("SearchAlg", (), {"searcher": limiter})()
        self.stopped: list[str] = []
        self.trials: list[FakeTrial] = []

    def stop_trial(self, trial: FakeTrial) -> None:
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)

    def _mark_trial_to_checkpoint(self, trial: FakeTrial) -> None:
        self.saved = [*getattr(self, "saved", []), trial.trial_id]

    def get_trials(self) -> list[FakeTrial]:
        return self.trials


def _result(epoch: int, accuracy: float) -> dict:
    return {T.EPOCH: epoch, "training_iteration": epoch, "valid_accuracy": accuracy}


def _drive_asha(scheduler, n_trials: int, epochs: int, seed: int = 0) -> dict[str, int]:
    """Trials report epoch by epoch in a shuffled order; returns {trial: epoch at which it was stopped}."""
    rng = random.Random(seed)
    skill = {f"t{i}": rng.random() for i in range(n_trials)}
    trials = {tid: FakeTrial(tid) for tid in skill}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    stopped, epoch_of = {}, dict.fromkeys(skill, 0)
    while any(epoch_of[t] < epochs for t in skill if t not in stopped):
        tid = rng.choice([t for t in skill if t not in stopped and epoch_of[t] < epochs])
        epoch_of[tid] += 1
        e = epoch_of[tid]
        action = scheduler.on_trial_result(None, trials[tid], _result(e, skill[tid] * e / epochs))
        if action == TrialScheduler.STOP and e < epochs:
            stopped[tid] = e
    return stopped


def test_unfreeze_rungs_are_the_ends_of_the_unfreezing_phases():
    recipe = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "classifier": {"epochs": 8, "unfreeze": [1, 1]}})
    phases = unfreeze_phases(classifier_group_count(recipe.model.n_layers), [1, 1], 8)
    assert unfreeze_rungs(recipe) == [p.first_epoch + p.epochs for p in phases]
    assert unfreeze_rungs(recipe) == [1, 2, 8]  # tiny: 2 LSTM layers = 4 groups; head, head+top layer, all
    three = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "small"}, "classifier": {"epochs": 10, "unfreeze": [2, 1, 3]}})
    assert unfreeze_rungs(three) == [2, 3, 6, 10]  # small: 3 layers = 5 groups, every listed phase runs
    scratch = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "classifier": {"epochs": 8, "from_scratch": True}})
    assert unfreeze_rungs(scratch) == [8]  # no gradual unfreezing: one phase


def test_asha_at_unfreeze_rungs_stops_trials_only_there():
    cfg = _config(rungs="unfreeze")
    scheduler = make_scheduler(cfg)
    assert isinstance(scheduler, MilestoneASHA)
    assert scheduler.milestones == (1, 2, 8)
    assert MilestoneASHA.rungs_of(scheduler._brackets[0]) == [1, 2, 8]
    stopped = _drive_asha(scheduler, n_trials=16, epochs=8)
    assert stopped, "ASHA should stop some of 16 trials"
    assert set(stopped.values()) <= {1, 2}
    # Ray's own rungs with the same settings (grace 1, factor 2) decide at 1, 2 and 4: epoch 4 shows up.
    ray_stopped = _drive_asha(make_scheduler(_config()), n_trials=16, epochs=8)
    assert 4 in set(ray_stopped.values())


def test_explicit_rungs_and_grace_period():
    assert make_scheduler(_config(rungs=[3, 5])).milestones == (3, 5, 8)
    assert make_scheduler(_config(rungs="unfreeze", grace_period=2)).milestones == (2, 8)
    stopped = _drive_asha(make_scheduler(_config(rungs=[3, 5])), n_trials=16, epochs=8, seed=1)
    assert stopped and set(stopped.values()) <= {3, 5}
    two = make_scheduler(_config(rungs=[2, 4], brackets=2))
    assert [MilestoneASHA.rungs_of(b) for b in two._brackets] == [[2, 4, 8], [4, 8]]


@pytest.mark.parametrize("scheduler, space, message", [
    ({"rungs": "unfreeze"}, {**SPACE, "classifier.unfreeze[0]": {"type": "int", "low": 1, "high": 2}},
     "searches classifier.unfreeze[0]"),
    ({"rungs": [2, 9]}, SPACE, "epoch 9 is past the last epoch"),
    ({"rungs": [4, 2]}, SPACE, "increasing order"),
    ({"rungs": "epochs"}, SPACE, "must be 'unfreeze' or a list of epochs"),
    ({"rungs": [2], "type": "fifo"}, SPACE, "scheduler.type is 'fifo'"),
    ({"rungs": "unfreeze", "grace_period": 3}, SPACE, "too few for 1 bracket"),
    ({"type": "hyperband", "brackets": 2}, SPACE, "HyperBand builds its own brackets"),
    ({"type": "hyperband", "reduction_factor": 16}, SPACE, "max_t (8 epochs) >= reduction_factor"),
    ({"type": "bohb"}, SPACE, "search.scheduler.type: must be one of"),
])
def test_scheduler_settings_are_validated(scheduler, space, message):
    with pytest.raises(SearchConfigError, match="search.scheduler") as e:
        _config(space, **scheduler)
    assert message in str(e.value)


def test_fifo_and_plain_asha_are_ray_s_own():
    assert isinstance(make_scheduler(_config(type="fifo")), FIFOScheduler)
    plain = make_scheduler(_config(grace_period=2))
    assert type(plain) is AsyncHyperBandScheduler
    assert MilestoneASHA.rungs_of(plain._brackets[0]) == [2, 4, 8]


def test_hyperband_pauses_at_milestones_and_stops_the_worse_trials():
    cfg = _config(type="hyperband", reduction_factor=2)
    scheduler = make_scheduler(cfg)
    assert isinstance(scheduler, HyperBandForBOHB) and scheduler._max_t_attr == 8
    limiter = make_limiter(cfg, make_searcher(cfg))
    assert isinstance(limiter, RunningTrialLimiter)
    controller = FakeController(limiter)
    # The first bracket (the most aggressive) takes 8 trials with a first milestone of 1 epoch.
    trials = [FakeTrial(f"t{i}") for i in range(8)]
    for t in trials:
        scheduler.on_trial_add(controller, t)
        controller.trials.append(t)
    actions = {}
    for i, t in enumerate(trials):
        t.last_result = {**_result(1, i / 10), T.EPOCHS_TOTAL: 8}
        actions[t.trial_id] = scheduler.on_trial_result(controller, t, _result(1, i / 10))
        if actions[t.trial_id] == TrialScheduler.PAUSE:
            t.status = "PAUSED"
    assert list(actions.values())[:-1] == [TrialScheduler.PAUSE] * 7  # waiting for the bracket
    # The last result completes the milestone: half the trials (the worse ones) are stopped.
    stopped = set(controller.stopped) | {tid for tid, a in actions.items() if a == TrialScheduler.STOP}
    assert stopped == {f"t{i}" for i in range(4)}
    assert scheduler._num_stopped == 4
    # Stopped while paused: ended (done) and saved as such, so export and resume see them stopped early.
    assert all(t.last_result.get("done") for t in trials if t.trial_id in controller.stopped)
    assert set(controller.saved) == set(controller.stopped)


def test_running_trial_limiter_frees_the_slot_of_a_paused_trial():
    from optuna.trial import TrialState

    cfg = _config(type="hyperband")
    searcher = make_searcher(cfg)
    limiter = make_limiter(cfg, searcher)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two running: the limit
    limiter.on_trial_result("a", {**_result(1, 0.5), T.EPOCHS_TOTAL: 8})
    limiter.on_pause("a")
    assert limiter.suggest("c") is not None  # a paused trial does not count
    limiter.on_trial_complete("a", {**_result(1, 0.5), T.EPOCHS_TOTAL: 8})  # stopped while paused
    assert limiter.live_trials == {"b", "c"}
    (a,) = [t for t in searcher.study.trials if t.number == 0]
    assert a.state == TrialState.PRUNED  # the stop reached Optuna
