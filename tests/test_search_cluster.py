"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster`` on 127.0.0.1, one CPU
per node): trials run on both nodes, and a node removed mid-trial leaves that trial finishing from
its last checkpoint on the other node (``FailureConfig``)."""
from __future__ import annotations

import pytest
from conftest_search import child_runs, ray_env, smoke_config  # noqa: F401
from ray import tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 5
_STATE: dict = {}  # the Cluster lives here, not on the callback (Ray pickles callbacks into tuner.pkl)


class RemoveWorkerMidTrial(tune.Callback):
    """After the trial on the worker node reports epoch 2 (its epoch-1 and -2 checkpoints are in
    storage), kill that node while the trial trains epoch 3."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        worker = _STATE.get("worker")
        if worker is not None and result.get("node_id") == worker.node_id and result.get("epoch") == 2:
            _STATE["killed_trial"] = trial.trial_id
            _STATE["cluster"].remove_node(worker, allow_graceful=False)
            _STATE["worker"] = None


@pytest.fixture
def loopback_cluster_mode(monkeypatch):
    """Ray nodes on 127.0.0.1 only (STACK_NOTES): otherwise Ray rewrites 127.0.0.1 to the machine's
    address, where a loopback-bound GCS cannot be reached. Ray reads the switch when first imported,
    so the already-imported constant is patched too (for this test only); node processes read the env."""
    from ray._private import ray_constants

    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)


def test_trials_use_both_nodes_and_survive_losing_one(tmp_path, datasets_dir, ray_env, loopback_cluster_mode):
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from search import tuner

    store = 200 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": store, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=store)
        cluster.wait_for_nodes()
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        _STATE.update(cluster=cluster, worker=worker)
        cfg = smoke_config(tmp_path, [
            "search.num_samples=2", "search.max_concurrent=2", "search.name=cluster",
            # no early stopping here: both trials must run every epoch
            f"recipe.classifier.epochs={EPOCHS}", f"search.scheduler={{grace_period: {EPOCHS}}}",
            "recipe.data.max_train_rows=2500", "search.max_failures=2", "search.reuse_actors=false",
        ])
        outcome = tuner.run_search(cfg, address=cluster.address, callbacks=[RemoveWorkerMidTrial()])
    finally:
        _STATE.clear()
        import ray

        ray.shutdown()
        cluster.shutdown()

    assert [r["status"] for r in outcome.leaderboard] == ["completed", "completed"]
    assert all(r["epochs"] == EPOCHS for r in outcome.leaderboard)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    runs = {r.data.tags["ray_trial_id"]: r for r in child_runs(cfg.mlflow.tracking_uri, "cluster")}
    assert len(runs) == 2
    nodes = {tid: set(r.data.tags["nodes"].split(",")) for tid, r in runs.items()}
    assert set().union(*nodes.values()) == {head_id, worker_id}  # trials ran on both nodes

    killed = next(tid for tid, n in nodes.items() if worker_id in n)
    assert nodes[killed] == {head_id, worker_id}  # started on the worker, finished on the head
    run = runs[killed]
    assert run.data.tags["trial_status"] == "completed"
    assert int(run.data.tags["resumed_from_epoch"]) >= 1  # the retry started from a checkpoint, not from scratch
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "valid_accuracy")]
    assert steps == list(range(1, EPOCHS + 1))  # every epoch logged exactly once across both attempts
