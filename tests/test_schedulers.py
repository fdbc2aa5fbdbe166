"""Schedulers driven by fake trial results (no Ray runtime): ASHA stops trials only at its rungs and
decides as Ray's ASHAScheduler does; the rungs come from one place (search/rungs.py), for the scheduler and
the plot; settings are validated with messages."""
from __future__ import annotations

import random

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import trainable as T
from search.errors import SearchConfigError
from search.rungs import asha_rungs, unfreeze_rungs
from search.schedulers import Asha, make_scheduler
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
    """What a scheduler reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving, self.last_result = trial_id, "RUNNING", False, {}

    def __repr__(self) -> str:
        return self.trial_id


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
    assert isinstance(scheduler, Asha) and scheduler.rungs == [1, 2, 8] == asha_rungs(cfg)
    stopped = _drive_asha(scheduler, n_trials=16, epochs=8)
    assert stopped, "ASHA should stop some of 16 trials"
    assert set(stopped.values()) <= {1, 2}
    # ASHA's own rungs with the same settings (grace 1, factor 2) decide at 1, 2 and 4: epoch 4 shows up.
    own = make_scheduler(_config())
    assert own.rungs == [1, 2, 4, 8] and 4 in set(_drive_asha(own, n_trials=16, epochs=8).values())


@pytest.mark.parametrize("grace, factor, seed", [(1, 2, 0), (2, 2, 1), (1, 3, 2)])
def test_asha_decides_as_rays_asha_scheduler(grace, factor, seed):
    """The same results in the same order: the same trials stopped at the same epochs as Ray's public ASHA."""
    ours = make_scheduler(_config(grace_period=grace, reduction_factor=factor))
    rays = ASHAScheduler(time_attr=T.EPOCH, metric="valid_accuracy", mode="max", max_t=8, grace_period=grace,
                         reduction_factor=factor)
    assert _drive_asha(ours, n_trials=20, epochs=8, seed=seed) == _drive_asha(rays, n_trials=20, epochs=8, seed=seed)


def test_a_resumed_asha_seeded_from_the_study_decides_as_if_the_search_never_stopped():
    """Trials known by their Optuna number (a resumed trial runs under a new Ray id): the seeded scheduler
    holds what the first one recorded, does not judge a trial run again at a rung it passed, and stops a
    newcomer against every earlier trial."""
    first = make_scheduler(_config(rungs="unfreeze"))
    values = {n: {1: 0.1 * n, 2: 0.1 * n + 0.05} for n in range(4)}  # trials 0..3 passed rungs 1 and 2
    for n, epochs in values.items():
        for epoch, value in epochs.items():
            first.decide(n, _result(epoch, value))
    resumed = make_scheduler(_config(rungs="unfreeze"))
    resumed.seed(values)
    assert resumed.recorded == first.recorded
    again = FakeTrial("new-ray-id")
    again.config = {T.OPTUNA_NUMBER: 0}  # trial 0, the worst at rung 2, runs on from its epoch-2 checkpoint
    resumed.on_trial_add(None, again)
    assert resumed.on_trial_result(None, again, _result(3, 0.0)) == TrialScheduler.CONTINUE
    newcomer = FakeTrial("other")
    newcomer.config = {T.OPTUNA_NUMBER: 4}
    assert resumed.on_trial_result(None, newcomer, _result(1, 0.05)) == TrialScheduler.STOP  # below 3 of 4 seeded


def test_explicit_rungs_grace_period_and_brackets():
    assert make_scheduler(_config(rungs=[3, 5])).rungs == [3, 5, 8]
    assert make_scheduler(_config(rungs="unfreeze", grace_period=2)).rungs == [2, 8]
    stopped = _drive_asha(make_scheduler(_config(rungs=[3, 5])), n_trials=16, epochs=8, seed=1)
    assert stopped and set(stopped.values()) <= {3, 5}
    two = make_scheduler(_config(rungs=[2, 4], brackets=2))
    assert [sorted(b) for b in two.recorded] == [[2, 4], [4]]  # bracket 1 starts one rung later
    stopped = _drive_asha(two, n_trials=16, epochs=8, seed=2)
    assert {t for t, e in stopped.items() if e == 2} <= {f"t{i}" for i in range(0, 16, 2)}  # bracket 0's trials


def test_the_survival_plot_draws_the_rungs_asha_decided_at(tmp_path, monkeypatch):
    import optuna

    from search import plots, store, tuner

    cfg = _config(rungs="unfreeze")
    search_dir = tmp_path / "s-20250101-000000"
    search_dir.mkdir()
    optuna.create_study(study_name=search_dir.name, storage=store.study_url(search_dir))
    drawn = {}
    monkeypatch.setattr(plots, "plot_asha_survival", lambda epochs, rungs, path: drawn.update(rungs=rungs) or path)
    tuner.search_plots(cfg, search_dir, [{"epochs": 8}, {"epochs": 1}, {"epochs": 2}])
    assert drawn["rungs"] == make_scheduler(cfg).rungs == [1, 2, 8]  # not ASHA's geometric [1, 2, 4, 8]


@pytest.mark.parametrize("scheduler, space, message", [
    ({"rungs": "unfreeze"}, {**SPACE, "classifier.unfreeze[0]": {"type": "int", "low": 1, "high": 2}},
     "searches classifier.unfreeze[0]"),
    ({"rungs": [2, 9]}, SPACE, "epoch 9 is past the last epoch"),
    ({"rungs": [4, 2]}, SPACE, "increasing order"),
    ({"rungs": "epochs"}, SPACE, "must be 'unfreeze' or a list of epochs"),
    ({"rungs": [2], "type": "fifo"}, SPACE, "scheduler.type is 'fifo'"),
    ({"rungs": "unfreeze", "grace_period": 3}, SPACE, "too few for 1 bracket"),
    ({"max_t": 5}, SPACE, "5 is below the 8 epochs a trial runs"),
    ({"type": "hyperband"}, SPACE, "search.scheduler.type: must be one of ['asha', 'fifo']"),
])
def test_scheduler_settings_are_validated(scheduler, space, message):
    with pytest.raises(SearchConfigError, match="search.scheduler") as e:
        _config(space, **scheduler)
    assert message in str(e.value)


def test_fifo_is_rays_own():
    assert type(make_scheduler(_config(type="fifo"))) is FIFOScheduler
