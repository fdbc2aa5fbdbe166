"""A Ray worker node on 127.0.0.1 as a process of its own: ``python ray_worker_node.py GCS_ADDRESS``.

Used by tests/test_shared_storage.py, which runs it under ``unshare -m`` so that this node (and every
worker process it starts) sees a different file system than the driver: the situation of a cluster
whose storage is not shared. It is what ``ray.cluster_utils.Cluster.add_node`` does in-process
(``ray start --address`` refuses 127.0.0.1, and on any other address binds its ports on every
interface). Stops its Ray processes on SIGTERM.
"""
from __future__ import annotations

import os
import signal
import sys

# Keep 127.0.0.1 as this node's address (Ray otherwise swaps in the machine's network address): read
# by Ray when it is first imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray._private.node  # noqa: E402
import ray._private.parameter  # noqa: E402


def main(gcs_address: str, num_cpus: int = 1, object_store_mb: int = 100) -> None:
    params = ray._private.parameter.RayParams(
        node_ip_address="127.0.0.1", gcs_address=gcs_address, num_cpus=num_cpus, num_gpus=0,
        object_store_memory=object_store_mb * 1024 * 1024, min_worker_port=0, max_worker_port=0,
        include_log_monitor=False, node_manager_port=0)
    params.dashboard_agent_listen_port = None  # a free port: the head's agent holds the default one
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"node_id={node.node_id}", flush=True)
    # Blocked only now: the node's processes started above must not inherit a blocked SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
