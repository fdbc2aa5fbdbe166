"""The MLflow callback's bookkeeping, driven directly (no Ray trials) against a real SQLite store:
one run per trial across driver restarts, no epoch logged twice, the three final statuses, sticky
``lm_trained``, learning metrics per epoch and bookkeeping as tags, readable run names, and runs of
a trial a resumed search runs again under a new Ray id keeps its run. The background writer's retries are tested on
their own (a store that fails, then works)."""
from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest

import search  # noqa: F401
from search import tracking
from search import trainable as T

BASE = {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "classifier": {"epochs": 3}}
METRICS = ("valid_accuracy", "valid_loss", "valid_macro_f1", "train_loss")


def trial(tid: str, lr: float, status: str = "RUNNING", last: dict | None = None, error: str | None = None,
          number: int | None = None):
    config = {T.RECIPE: BASE, T.RUN: {}, "classifier.lr": lr, "classifier.use_clr[0]": 16}
    if number is not None:
        config[T.OPTUNA_NUMBER] = number
    return SimpleNamespace(trial_id=tid, config=config,
                           status=status, last_result=last or {}, error_msg=error, run_metadata=None,
                           checkpoint=None)


def result(epoch: int, acc: float, lm_trained: float = 0.0) -> dict:
    return {T.EPOCH: epoch, T.EPOCHS_TOTAL: 3, "valid_accuracy": acc, "valid_loss": 1.0 / epoch,
            "valid_macro_f1": acc / 2, "train_loss": 2.0 / epoch, T.LM_KEY: "k1", T.LM_TRAINED: lm_trained,
            T.LM_SECONDS: 1.5, T.NODE_ID: f"node{epoch % 2}", "node_ip": "127.0.0.1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"  # creating a store takes seconds: one for the module
    tracking.check_reachable(uri)
    exp = tracking.ensure_experiment(uri, "cb", str(tmp / "art"))
    parent = tracking.start_parent(uri, exp, "search-1", tmp, {"search": {"num_samples": 4}}, {})
    return uri, exp, parent


def test_callback_keeps_one_run_per_trial_across_restarts(store):
    from mlflow.tracking import MlflowClient

    uri, exp, parent = store
    cb = tracking.MLflowTrialCallback(uri, exp, parent)
    a, b, c, d = trial("a", 0.01, number=0), trial("b", 1e-5), trial("c", 0.5), trial("d", 0.02, number=1)
    cb.on_trial_start(0, [], a)
    cb.on_trial_result(0, [], a, result(1, 0.5, lm_trained=1.0))
    cb.on_trial_result(0, [], a, result(2, 0.6, lm_trained=1.0))
    cb.on_trial_start(0, [], d)  # started, but the driver dies before its first epoch
    assert cb.writer.flush(60)
    assert pickle.loads(pickle.dumps(cb))._writer is None  # Ray pickles callbacks (never read back): no writer

    # The driver dies; the resumed search (a new process, a new callback) runs a and d again as a2 and d2.
    tracking._WRITERS.clear()
    cb = tracking.MLflowTrialCallback(uri, exp, parent)
    a, d = trial("a2", 0.01, number=0), trial("d2", 0.02, number=1)
    cb.on_trial_start(0, [], a)
    cb.on_trial_result(0, [], a, result(2, 0.6))  # replayed from the epoch-2 checkpoint: logged already
    cb.on_trial_result(0, [], a, result(3, 0.7))
    a.last_result, a.status = result(3, 0.7), "TERMINATED"
    cb.on_trial_complete(0, [], a)
    cb.on_trial_start(0, [], d)
    d.status, d.error_msg = "ERROR", "ValueError: refused"
    cb.on_trial_error(0, [], d)

    cb.on_trial_start(0, [], b)
    cb.on_trial_result(0, [], b, result(1, 0.2))
    b.last_result, b.status = result(1, 0.2), "TERMINATED"
    cb.on_trial_complete(0, [], b)  # ended before epochs_total: ASHA stopped it

    cb.on_trial_start(0, [], c)
    c.status, c.error_msg = "ERROR", "RuntimeError: loss became nan"
    cb.on_trial_error(0, [], c)
    cb.on_experiment_end([a, b, c, d])  # flushes the writer
    assert not cb.writer.failures

    client = MlflowClient(uri)
    runs = {r.data.tags["ray_trial_id"]: r for r in client.search_runs([exp], "tags.search_role = 'trial'")}
    assert sorted(runs) == ["a2", "b", "c", "d2"]  # one run per trial: a and d kept theirs, tagged with the new id
    runs["a"] = runs.pop("a2")
    assert runs["d2"].data.tags["optuna_trial"] == "1" and runs["d2"].data.tags["trial_status"] == "errored"
    assert runs["a"].data.tags["trial_status"] == "completed" and runs["a"].info.status == "FINISHED"
    assert runs["b"].data.tags["trial_status"] == "stopped_by_asha"
    assert runs["c"].data.tags["trial_status"] == "errored" and runs["c"].info.status == "FAILED"
    assert "loss became nan" in runs["c"].data.tags["error"]
    history = client.get_metric_history(runs["a"].info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert runs["a"].data.tags["lm_trained"] == "true"  # a later attempt's reuse does not undo it
    assert runs["a"].data.tags["nodes"] == "node0,node1"
    assert runs["a"].data.params == {"classifier.lr": "0.01", "classifier.use_clr.0": "16"}
    assert runs["a"].info.run_name == "trial 0: lr=0.01, use_clr[0]=16"  # the Optuna number names it
    assert runs["b"].info.run_name.startswith("trial b: ")  # no Optuna number: the Ray id
    assert tracking.trial_run_name(7, "a", {"classifier.lr": 0.01}) == "trial 7: lr=0.01"  # Optuna's number first
    # per epoch only learning metrics; the bookkeeping is in tags
    assert set(runs["a"].data.metrics) == {"valid_accuracy", "valid_loss", "valid_macro_f1", "train_loss"}
    assert runs["a"].data.tags["lm_key"] == "k1" and runs["a"].data.tags["lm_seconds"] == "1.5"


def test_epochs_the_driver_died_with_are_logged_from_the_resumed_checkpoint(store):
    """Tune saved the epoch-2 checkpoint, but the driver died before its writer logged epoch 2: the resumed
    trial's first report carries the checkpoint's history, and the run gets epoch 2 before epoch 3."""

    from mlflow.tracking import MlflowClient

    uri, exp, parent = store
    cb = tracking.MLflowTrialCallback(uri, exp, parent)
    e = trial("e", 0.03)
    cb.on_trial_start(0, [], e)
    cb.on_trial_result(0, [], e, result(1, 0.5))
    assert cb.writer.flush(60)
    cb = pickle.loads(pickle.dumps(cb))  # the driver died; epoch 2 never reached MLflow
    tracking._WRITERS.clear()
    checkpoint_history = [{**result(1, 0.5), "lr": 0.01}, {**result(2, 0.55), "lr": 0.02}]
    cb.on_trial_start(0, [], e)
    cb.on_trial_result(0, [], e, {**result(3, 0.7), T.RESUMED_FROM: 2,
                                  T.EARLIER_EPOCHS: json.dumps(checkpoint_history)})
    e.last_result, e.status = result(3, 0.7), "TERMINATED"
    cb.on_trial_complete(0, [], e)
    assert cb.writer.flush(60) and not cb.writer.failures

    client = MlflowClient(uri)
    (run,) = client.search_runs([exp], "tags.ray_trial_id = 'e'")
    history = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.55), (3, 0.7)]  # epoch 1 not twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [2]
    assert run.data.tags["resumed_from_epoch"] == "2"


def test_finish_parent_records_the_leaderboard_and_status(store, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, exp, parent = store
    best = tmp_path / "best.yaml"
    best.write_text("recipe: {}\n")
    board = [{"trial_id": "a", "status": "completed", "valid_accuracy": 0.7},
             {"trial_id": "b", "status": "stopped_by_asha", "valid_accuracy": 0.2}]
    summary = {"trials": 2, "lm_seconds_saved": 3.0, "best_valid_accuracy": 0.7}
    tracking.finish_parent(uri, parent, "finished", board, summary, best)
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["search_status"] == "finished"
    assert run.data.metrics == {"best_valid_accuracy": 0.7}  # the learning result; the rest is bookkeeping
    assert run.data.tags["summary.trials"] == "2" and run.data.tags["summary.lm_seconds_saved"] == "3"
    assert {a.path for a in client.list_artifacts(parent)} >= {"best.yaml", "leaderboard.csv", "leaderboard.json",
                                                               "summary.json"}


def test_writer_retries_through_an_outage_keeps_order_and_reports_what_failed():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from search.mlflow_writer import MlflowWriter

    slept: list[float] = []
    writer = MlflowWriter(retry_seconds=30, sleep=slept.append)
    calls: list[str] = []
    down = {"left": 3}

    def flaky(name: str) -> None:
        if down["left"]:
            down["left"] -= 1
            raise MlflowException("API request failed: Connection refused")  # the server is restarting
        calls.append(name)

    for name in ("create", "epoch 1", "epoch 2"):
        writer.submit(name, lambda n=name: writer.call(n, lambda: flaky(n)))
    writer.submit("bad", lambda: writer.call("bad", lambda: (_ for _ in ()).throw(
        MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE))))
    assert writer.close(30)
    assert calls == ["create", "epoch 1", "epoch 2"]  # in order, none lost
    assert slept == [0.5, 1.0, 2.0]  # exponential backoff while the store was down
    assert writer.retried == 1
    assert len(writer.failures) == 1 and writer.failures[0].startswith("bad: MlflowException: param changed")


def test_writer_gives_up_after_its_deadline_and_says_so():
    from mlflow.exceptions import MlflowException

    from search.mlflow_writer import MlflowWriter

    clock = {"t": 0.0}
    writer = MlflowWriter(retry_seconds=5, sleep=lambda s: clock.__setitem__("t", clock["t"] + s))

    def down() -> None:
        raise MlflowException("Connection refused")

    import search.mlflow_writer as mw

    real = mw.time.monotonic
    mw.time.monotonic = lambda: clock["t"]
    try:
        assert writer.call("epoch 3", down) is None
    finally:
        mw.time.monotonic = real
    assert writer.failures == ["epoch 3: MlflowException: Connection refused"]
    assert 3 <= clock["t"] <= 5  # kept trying until the next wait would pass the deadline


def test_losses_are_stored_without_float32_noise_and_ratios_exactly():
    assert tracking.metric_value("valid_loss", 0.6931471824645996) == 0.6931472
    assert tracking.metric_value("lm_valid_perplexity", 46.857112884521484) == 46.85711
    assert tracking.metric_value("valid_accuracy", 7 / 29) == 7 / 29  # what a warm start reads back


def test_an_mlflow_outage_at_the_end_loses_neither_the_leaderboard_nor_the_search(tmp_path, monkeypatch):
    """The search's own records come first: leaderboard.csv is written before MLflow is asked anything, and a
    store that is down at the end is reported as what MLflow misses, not raised."""
    from search import tuner
    from search.settings import search_config_from_dict

    cfg = search_config_from_dict({"recipe": BASE, "space": {"classifier.lr": [0.01, 0.02]},
                                   "search": {"num_samples": 1}})

    import optuna

    # One trial, stopped by ASHA after epoch 1 of 3, as the searcher and Tune's JSON logger record it.
    study = optuna.create_study(study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"classifier.lr": 0.01}, intermediate_values={1: 0.5},
        distributions={"classifier.lr": optuna.distributions.CategoricalDistribution([0.01, 0.02])},
        user_attrs={"ray_trial_id": "a"}))
    (tmp_path / "trial_a").mkdir()
    (tmp_path / "trial_a" / "params.json").write_text(json.dumps(
        {T.RECIPE: BASE, T.RUN: {}, "classifier.lr": 0.01, T.OPTUNA_NUMBER: 0}))
    (tmp_path / "trial_a" / "result.json").write_text(json.dumps({**result(1, 0.5), "trial_id": "a"}) + "\n")

    def down(*args, **kwargs):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(tracking, "child_runs", down)
    monkeypatch.setattr(tracking, "finish_parent", down)
    meta = {"tracking_uri": "http://127.0.0.1:9", "parent_run_id": "p-outage", "experiment_id": "1", "experiment": "x"}
    out = tuner._fit_and_finish(SimpleNamespace(fit=lambda: []), cfg, tmp_path, meta)
    board = (tmp_path / "leaderboard.csv").read_text()
    assert "stopped_by_asha" in board and out.leaderboard[0]["trial"] == 0
    assert out.tracking_failures and "parent run at the end" in out.tracking_failures[-1]


def test_a_run_whose_trial_ended_while_the_driver_died_is_ended_at_the_search_end(store):
    """The driver died after tagging a trial stopped but before ending its run; the resumed search does not run
    that trial again, so its end reconciles MLflow with the study's outcome."""
    from mlflow.tracking import MlflowClient

    uri, exp, parent = store
    client = MlflowClient(uri)
    run = client.create_run(exp, tags={tracking.PARENT_TAG: parent, tracking.OPTUNA_TRIAL_TAG: "41",
                                       tracking.STATUS_TAG: "stopped_by_asha"})
    done = client.create_run(exp, tags={tracking.PARENT_TAG: parent, tracking.OPTUNA_TRIAL_TAG: "42"})
    client.set_terminated(done.info.run_id, "FINISHED")
    client.log_metric(run.info.run_id, "valid_accuracy", 0.25, step=1)  # epoch 2 died in the writer's queue
    runs = {"41": client.get_run(run.info.run_id), "42": client.get_run(done.info.run_id)}
    board = [{"trial": 41, "status": "stopped_by_asha"}, {"trial": 42, "status": "completed"}]
    history = {41: [{"epoch": 1, "valid_accuracy": 0.25, "valid_loss": 1.5},
                    {"epoch": 2, "valid_accuracy": 0.5, "valid_loss": 1.25, "train_loss": 1.0}],
               42: [{"epoch": 1, "valid_accuracy": 0.75}]}
    assert tracking.finish_ended_runs(uri, runs, board, history.__getitem__) == 1  # the finished one is left alone
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FINISHED" and ended.data.tags[tracking.STATUS_TAG] == "stopped_by_asha"
    # the epoch the dead driver never logged is there, from the trial's checkpoint; the logged one is not repeated
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "valid_accuracy")] == [(1, 0.25), (2, 0.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [(2, 1.0)]
    assert not client.get_metric_history(done.info.run_id, "valid_accuracy")


def test_a_trials_history_is_its_newest_checkpoints(tmp_path):
    """What a run that lost its last epochs is completed from: the newest checkpoint among the trial's runs'
    folders (a retry continues in a new folder), read as data; a checkpoint without a readable log is passed over."""
    def checkpoint(folder: str, name: str, epochs: int) -> None:
        path = tmp_path / folder / name
        path.mkdir(parents=True)
        (path / "train_log.json").write_text(json.dumps({"history": [
            {"epoch": e, "valid_accuracy": e / 10} for e in range(1, epochs + 1)]}))

    checkpoint("trial_a", "checkpoint_000000", 1)
    checkpoint("trial_b", "checkpoint_000000", 3)  # the retry, further on
    checkpoint("trial_b", "checkpoint_000001", 2)
    (tmp_path / "trial_b" / "checkpoint_000002").mkdir()
    (tmp_path / "trial_b" / "checkpoint_000002" / "train_log.json").write_text("{cut short")
    history = T.trial_history([tmp_path / "trial_a", tmp_path / "trial_b"])
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["valid_accuracy"] == 0.3
    assert T.trial_history([tmp_path / "no_such_trial"]) == []
