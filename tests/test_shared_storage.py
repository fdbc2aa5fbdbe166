"""On several Ray nodes, a search refuses a storage folder that is not the same folder on every node.

A real two-node cluster on 127.0.0.1: the head in this process (``ray.cluster_utils.Cluster``) and a
worker node in a process of its own (tests/ray_worker_node.py) started under ``unshare -m`` with an
empty tmpfs mounted over one folder. That node, and every task it runs, sees a different file system
there than the driver does: exactly a storage folder on each node's own disk. Other folders are the
same for both, as on a cluster's shared NFS/EFS mount.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest_search import PYTHON, ROOT, ray_environment, smoke_config, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WORKER_SCRIPT = ROOT / "tests" / "ray_worker_node.py"
STORE_MB = 100


def _can_unshare_mounts() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def _start_worker_node_hiding(folder: Path, gcs_address: str, log: Path) -> subprocess.Popen:
    """A worker node in its own mount namespace where ``folder`` is an empty tmpfs (private: the mount
    never shows outside that namespace, and goes away with its last process)."""
    script = f'mount -t tmpfs tmpfs "{folder}" && exec "{PYTHON}" "{WORKER_SCRIPT}" {gcs_address} 1 {STORE_MB}'
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_nodes(n: int, worker: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import ray

    deadline = time.time() + timeout
    while len([x for x in ray.nodes() if x["Alive"]]) < n:
        if worker.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the worker node did not join:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _kill_leftovers(ray_tmp: str) -> None:
    """Processes of these two nodes still alive (they all carry the session's private temp folder)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if ray_tmp in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(cluster, worker node id, shared folder, node-local folder) with the driver connected."""
    if not _can_unshare_mounts():
        pytest.skip("needs a private mount namespace (`unshare -m`, root or CAP_SYS_ADMIN) to give one Ray node "
                    "its own view of a folder")
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("storage")
    shared, node_local = tmp / "shared", tmp / "node_local"
    shared.mkdir()
    node_local.mkdir()
    with ray_environment() as ray_tmp, pytest.MonkeyPatch.context() as mp:
        # Nodes on 127.0.0.1 only (see tests/test_search_cluster.py's loopback_cluster_mode).
        mp.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": STORE_MB * 1024 * 1024,
            "include_dashboard": False})
        worker = None
        try:
            worker = _start_worker_node_hiding(node_local, cluster.address, tmp / "worker.log")
            ray.init(address=cluster.address, log_to_driver=False)
            _wait_for_nodes(2, worker, tmp / "worker.log")
            worker_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != cluster.head_node.node_id)
            yield cluster, worker_id, shared, node_local
        finally:
            ray.shutdown()
            if worker is not None:
                stop_group(worker, timeout=30)
            cluster.shutdown()
            _kill_leftovers(ray_tmp)


def test_a_folder_every_node_sees_passes_on_both_nodes(two_nodes):
    from search.shared_storage import MARKER_PREFIX, check_storage_shared

    cluster, worker_id, shared, _ = two_nodes
    confirmed = check_storage_shared(shared)
    assert sorted(confirmed) == sorted([cluster.head_node.node_id, worker_id])  # the check ran on each node
    assert not list(shared.glob(f"{MARKER_PREFIX}*"))  # the marker is removed


def test_a_folder_on_each_nodes_own_disk_fails_naming_that_node(two_nodes):
    from search.shared_storage import StorageNotSharedError, check_storage_shared

    cluster, worker_id, _, node_local = two_nodes
    with pytest.raises(StorageNotSharedError) as e:
        check_storage_shared(node_local)
    message = str(e.value)
    assert message.startswith(f"search.storage: {node_local} is not shared by all 2 Ray nodes: 1 cannot see")
    assert worker_id[:12] in message and cluster.head_node.node_id[:12] not in message
    assert "FileNotFoundError" in message
    assert "every node mounts" in message and "\n" not in message


def test_a_search_on_an_unshared_storage_stops_before_any_trial(two_nodes, tmp_path, datasets_dir):
    from search import tuner
    from search.shared_storage import StorageNotSharedError

    cluster, worker_id, shared, node_local = two_nodes
    runs = node_local / "runs"
    cfg = smoke_config(tmp_path, [f"search.storage={runs}", "search.num_samples=1", "search.name=unshared"])
    with pytest.raises(StorageNotSharedError, match=f"search.storage: {runs} is not shared.*{worker_id[:12]}"):
        tuner.run_search(cfg, address=cluster.address)
    assert [p.name for p in runs.iterdir()] == []  # no search folder: nothing started

    # A separate LM cache is checked too: trials share language models through its file locks.
    cfg = smoke_config(tmp_path, [f"search.storage={shared / 'runs'}", f"search.lm_root={node_local / 'lm'}",
                                  "search.num_samples=1", "search.name=unshared_lm"])
    with pytest.raises(StorageNotSharedError, match="search.lm_root: .* is not shared"):
        tuner.run_search(cfg, address=cluster.address)
    assert not (shared / "runs").exists() or not any((shared / "runs").iterdir())
