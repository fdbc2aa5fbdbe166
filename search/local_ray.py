"""A local Ray instance for a search on one machine: every Ray port on 127.0.0.1.

Measured with Ray 2.60 on Linux (tests/test_network.py checks it on every run):

- Left to itself, ``ray.init()`` replaces a node address of 127.0.0.1 with the machine's network
  address (so that other machines could join), and the GCS, the raylet, the object manager, the
  runtime-env agent and every worker then listen on all interfaces: anyone who can reach the machine
  can submit code to the search. With Ray's "clusters enabled" switch off (its setting on macOS and
  Windows) the node keeps 127.0.0.1 and every one of those servers binds there only. The switch is a
  module constant Ray reads when first imported, so it is turned off for this one start and restored:
  a later ``--address`` connection from the same process is unaffected.
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

import ray
from ray._private import ray_constants

LOOPBACK = "127.0.0.1"
AUTH_MODE_VAR = "RAY_AUTH_MODE"


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
    with _node_address_kept_on_loopback(), _auth_off_unless_chosen():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=object_store_memory, _node_ip_address=LOOPBACK,
                 configure_logging=configure_logging)
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):
        ray.shutdown()
        raise NotOnLoopbackError(
            f"the local Ray instance came up on {node_ip}, not {LOOPBACK}: its ports would be reachable from "
            f"the network, so it was stopped. Ray {ray.__version__} no longer honours "
            f"ray_constants.ENABLE_RAY_CLUSTER; see search/local_ray.py, or run Ray yourself and pass --address")
    return node_ip


@contextlib.contextmanager
def _node_address_kept_on_loopback() -> Iterator[None]:
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # keep 127.0.0.1 (see the module docstring)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


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
