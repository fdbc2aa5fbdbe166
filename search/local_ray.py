"""A local Ray instance for a search on one machine: every Ray port on 127.0.0.1.

Measured with Ray 2.60 on Linux (tests/test_network.py checks it on every run):

- Left to itself, ``ray.init()`` replaces a node address of 127.0.0.1 with the machine's network
  address (so that other machines could join), and the GCS, the raylet, the object manager, the
  runtime-env agent and every worker then listen on all interfaces: anyone who can reach the machine
  can submit code to the search. With Ray's "clusters enabled" switch off (its setting on macOS and
  Windows: the environment variable ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) the node keeps 127.0.0.1 and
  every one of those servers binds there only. Ray reads the variable once, when it is first imported: so
  ``import search`` sets it (as a default, before any of this package imports Ray; :func:`prefer_loopback`),
  and ``launch.py search --address`` turns it back on before Ray is imported, since a driver joining a real
  cluster must register its network address. A program that imports Ray before ``search`` and then starts
  a local search gets :class:`NotOnLoopbackError`, saying so, and nothing listens on the network.
- Token auth: a new local instance turns it on by default, writes ``~/.ray/auth_token`` when missing
  and sets ``RAY_AUTH_MODE=token`` in this process's environment. That file then switches token auth
  on for every later ``ray start --head`` on the machine, but not for ``ray start --address`` workers
  or drivers given an address, which then fail to connect (STACK_NOTES). An instance whose ports are
  all on loopback is not reachable from other machines, so it starts with auth off unless the user
  exported ``RAY_AUTH_MODE`` (which wins: export ``RAY_AUTH_MODE=token`` on a machine shared with
  users you do not trust, since loopback is open to every local user). The setting is scoped to the
  start: nothing is left in the environment of this process or of the processes it starts later.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"
AUTH_MODE_VAR = "RAY_AUTH_MODE"
#: Ray's documented switch for clusters on macOS and Windows; off, a node keeps the loopback address.
CLUSTERS_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


#: The value the user exported, if any (read when ``search`` is first imported, before it sets its own).
EXPORTED = os.environ.get(CLUSTERS_VAR)


def prefer_loopback(joining_a_cluster: bool = False) -> None:
    """Before Ray is imported: a local Ray keeps 127.0.0.1 (``CLUSTERS_VAR=0``), unless this process joins
    a cluster (then ``1``, Ray's default on Linux). A value the user exported wins."""
    if EXPORTED is None:
        os.environ[CLUSTERS_VAR] = "1" if joining_a_cluster else "0"


@contextlib.contextmanager
def preference_for(joining_a_cluster: bool) -> Iterator[None]:
    """:func:`prefer_loopback` for one command, the package's own default put back afterwards (a command
    run in-process must not change what later processes started from this one inherit)."""
    prefer_loopback(joining_a_cluster)
    try:
        yield
    finally:
        prefer_loopback()


class NotOnLoopbackError(RuntimeError):
    """A local Ray instance came up on a network address; it has been shut down."""


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6 (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def start_local_ray(num_cpus: int, object_store_memory: int, configure_logging: bool = True) -> str:
    """Start a private Ray instance whose ports all listen on 127.0.0.1; returns the node's address.

    Raises ``NotOnLoopbackError`` (after shutting the instance down) when Ray put the node on another
    address anyway, e.g. a Ray version that ignores the switch this relies on.
    """
    import ray

    with _auth_off_unless_chosen():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=object_store_memory, configure_logging=configure_logging)
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):
        ray.shutdown()
        raise NotOnLoopbackError(
            f"the local Ray instance came up on {node_ip}, not {LOOPBACK}: its ports would be reachable from "
            f"the network, so it was stopped. Ray was imported before `search` (or with {CLUSTERS_VAR} set to "
            f"{os.environ.get(CLUSTERS_VAR)!r}): import search first, or set {CLUSTERS_VAR}=0 before importing "
            f"Ray; or run Ray yourself and pass --address")
    return node_ip


@contextlib.contextmanager
def _auth_off_unless_chosen() -> Iterator[None]:
    if AUTH_MODE_VAR in os.environ:  # the user's choice, token or disabled
        yield
        return
    os.environ[AUTH_MODE_VAR] = "disabled"  # read by ray.init and inherited by the processes it starts
    try:
        yield
    finally:
        os.environ.pop(AUTH_MODE_VAR, None)
