"""A search's trials read from its own files (search/records.py): the study says how each trial ended, its
folders say what it reported; a trial run again by a resume is one trial; a line Tune's logger lost (a full
disk) or cut short (a kill) does not hide the epoch its checkpoint holds."""
from __future__ import annotations

import json

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import records
from search import trainable as T
from search.settings import search_config_from_dict

DIST = {"classifier.lr": FloatDistribution(1e-3, 1e-1, log=True)}


def _run(search_dir, ray_id, number, epochs, *, checkpoint_epoch=None, cut_last=False, error=None):
    """A run's folder as the search folder holds it: Tune's result.json and error.txt (copied from the driver,
    so possibly behind), and a checkpoint's metadata (persisted by the trial itself)."""
    folder = search_dir / f"trial_{ray_id}"
    folder.mkdir()
    lines = [json.dumps({T.EPOCH: e, "valid_accuracy": 0.1 * e, "trial_id": ray_id}) for e in epochs]
    if cut_last:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    (folder / "result.json").write_text("\n".join(lines) + "\n")
    if checkpoint_epoch is not None:
        ckpt = folder / f"checkpoint_{checkpoint_epoch - 1:06d}"
        ckpt.mkdir()
        (ckpt / ".metadata.json").write_text(json.dumps(
            {T.EPOCH: checkpoint_epoch, "metrics": {T.EPOCH: checkpoint_epoch, "valid_accuracy": 0.1 * checkpoint_epoch}}))
    if error:
        (folder / "error.txt").write_text(f"Failure # 1\nTraceback (most recent call last):\n{error}\n")


def _add(study, state, ray_ids, **attrs):
    study.add_trial(create_trial(state=state, params={"classifier.lr": 0.01}, distributions=DIST,
                                 value=0.3 if state == TrialState.COMPLETE else None,
                                 user_attrs={records.RAY_TRIAL_ATTR: ray_ids[-1], records.RAY_TRIALS_ATTR: ray_ids,
                                             **attrs}))


def test_each_trial_once_with_its_latest_epoch_and_how_the_study_says_it_ended(tmp_path):
    study = optuna.create_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    _add(study, TrialState.COMPLETE, ["a"])  # 0: its epoch-3 line was lost; the checkpoint has it
    _run(tmp_path, "a", 0, [1, 2], checkpoint_epoch=3)
    _add(study, TrialState.FAIL, ["b"])  # 1: failed, then retried by a resume as b2 and completed
    _run(tmp_path, "b", 1, [1], error="OSError: [Errno 28] No space left on device")
    _run(tmp_path, "b2", 1, [2, 3])
    _add(study, TrialState.RUNNING, ["c"])  # 2: running when the driver was killed mid-line
    _run(tmp_path, "c", 2, [1, 2], cut_last=True)
    _add(study, TrialState.FAIL, ["d"])  # 3: errored for good
    _run(tmp_path, "d", 3, [1], error="ValueError: loss is nan")
    _add(study, TrialState.COMPLETE, ["b", "b2"], **{records.RETRY_OF_ATTR: 1})  # b's retry, recorded anew
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9, params={"classifier.lr": 0.02},
                                 distributions=DIST))  # a warm-start trial of another search: not this one's

    cfg = search_config_from_dict({"recipe": {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}},
                                   "space": {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
                                   "search": {"storage": str(tmp_path)}})
    _run(tmp_path, "x", 9, [1])  # a folder no trial of the study names: not a trial
    found = {r.number: r for r in records.read_trials(tmp_path, cfg=cfg)}
    assert sorted(found) == [0, 1, 2, 3]
    assert (found[0].status, found[0].result[T.EPOCH]) == ("completed", 3)
    assert (found[1].status, found[1].result[T.EPOCH], found[1].trial_id) == ("completed", 3, "b2")
    assert found[1].error is None and [f.name for f in found[1].folders] == ["trial_b", "trial_b2"]
    assert (found[2].status, found[2].result[T.EPOCH]) == ("interrupted", 1)
    assert (found[3].status, found[3].error) == ("errored", "ValueError: loss is nan")
    # each trial's config is search.json's recipe and run settings with the study's values, whatever the folders
    assert T.sampled_values(found[2].config) == {"classifier.lr": 0.01} and found[2].config[T.OPTUNA_NUMBER] == 2
    assert found[2].config[T.RUN]["search_dir"] == str(tmp_path)
