"""On a Ray cluster of several nodes, the search's storage must be one file system that every node mounts.

Trials write their checkpoints to ``search.storage`` on whatever node runs them, a retried trial reads
them back on another node, and trials share language models through file locks under the LM cache.
On a folder that each node has on its own disk all of that still "works", silently: a retry starts
from scratch, every node trains its own language model, and the driver's folder misses most
checkpoints. So before any trial starts, the driver writes a marker file holding a random token into
the folder, runs a tiny task on every alive node (pinned there, needing no CPU so it fits even on a
head with ``CPU: 0``), and each task reads the marker back. Any node that cannot read the token stops
the search with one line naming the node and the fix.

Nodes that join later (an autoscaler adding workers) are not checked here.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.errors import SearchConfigError

logger = logging.getLogger(__name__)

MARKER_PREFIX = ".storage-check-"
VISIBILITY_WAIT_S = 5.0  # a network file system may show a new file to other clients a moment later


class StorageNotSharedError(SearchConfigError):
    """A folder the search needs on every node is not the same folder on every node."""


@dataclass(frozen=True)
class NodeAnswer:
    node_id: str
    address: str
    token: str | None  # what the node read from the marker; None when it could not read it
    problem: str = ""  # why not: the error it got
    answered: bool = True  # False: the task did not finish in time (or the node went away)


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_storage_shared(folder: str | Path, key: str = "search.storage", timeout_s: float = 120.0) -> list[str]:
    """Check that every alive Ray node sees the same ``folder``; returns the ids of the nodes that did.

    On one node there is nothing to compare: returns at once. Raises ``StorageNotSharedError`` naming
    each node that could not read the driver's marker. A node that does not answer within ``timeout_s``
    (e.g. a spot node going away) proves nothing either way: it is logged as a warning and left out.
    """
    nodes = alive_nodes()
    if len(nodes) < 2:
        return [n["NodeID"] for n in nodes]
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = folder / f"{MARKER_PREFIX}{token}"
    marker.write_text(token)
    try:
        answers = _ask_every_node(nodes, str(marker), timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    for silent in (a for a in answers if not a.answered):
        logger.warning("%s check: node %s (%s) %s; trials it runs may not see %s", key, silent.node_id[:12],
                       silent.address, silent.problem, folder)
    blind = [a for a in answers if a.answered and a.token != token]
    if blind:
        raise StorageNotSharedError(not_shared_message(key, folder, blind, len(answers)))
    return [a.node_id for a in answers if a.answered]


def not_shared_message(key: str, folder: Path, blind: list[NodeAnswer], n_nodes: int) -> str:
    which = "; ".join(f"node {a.node_id[:12]} ({a.address}): {a.problem or 'read something else there'}"
                      for a in blind)
    return (f"{key}: {folder} is not shared by all {n_nodes} Ray nodes: {len(blind)} cannot see the file the "
            f"driver wrote there [{which}]. Put {key} on a file system every node mounts at the same path "
            f"(NFS, EFS; cluster.yaml mounts one at /mnt/shared)")


def _ask_every_node(nodes: list[dict], marker: str, timeout_s: float) -> list[NodeAnswer]:
    pending = {
        _read_marker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker): n
        for n in nodes
    }
    ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    answers = []
    for ref in ready:
        node = pending[ref]
        try:
            token, problem = ray.get(ref)
            answers.append(NodeAnswer(node["NodeID"], node["NodeManagerAddress"], token, problem))
        except Exception as e:  # noqa: BLE001 (the node died, or the task could not be placed there)
            answers.append(NodeAnswer(node["NodeID"], node["NodeManagerAddress"], None,
                                      f"could not run the check ({type(e).__name__})", answered=False))
    for ref in not_ready:
        ray.cancel(ref, force=True)
        node = pending[ref]
        answers.append(NodeAnswer(node["NodeID"], node["NodeManagerAddress"], None,
                                  f"did not answer within {timeout_s:g} s", answered=False))
    return answers


@ray.remote(num_cpus=0, max_retries=0)
def _read_marker(marker: str) -> tuple[str | None, str]:
    """Runs on one node: the marker's content, or None and the error this node got."""
    deadline = time.monotonic() + VISIBILITY_WAIT_S
    while True:
        try:
            return Path(marker).read_text(), ""
        except OSError as e:
            if time.monotonic() >= deadline:
                return None, f"{type(e).__name__}: {e.strerror or e}"
            time.sleep(0.5)
