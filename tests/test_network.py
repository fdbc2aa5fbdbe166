"""Network exposure of a local search: every port of its Ray instance listens on loopback only, and
importing ``search`` leaves Ray's token auth setting alone.

The sockets are read from /proc/net/tcp{,6} for the driver and every process below it or holding the
Ray session's private temp folder (tests/listening_sockets.py): other Ray instances on this machine
are not looked at.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_search import PYTHON, ROOT, ray_env, smoke_config  # noqa: F401
from listening_sockets import Listener, is_loopback, listen_on, listeners, parse_proc_net_tcp, process_tree
from ray import tune

_SEEN: dict[str, list[Listener]] = {}  # filled in the driver by the callback (Ray pickles callbacks)


class RecordListenersWhileATrialRuns(tune.Callback):
    """On a trial's first result (its worker process is alive and training), record every listening
    socket of the driver's process tree and of the Ray session's processes."""

    def __init__(self, ray_tmp: str):
        self.ray_tmp = ray_tmp

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "during_trial" not in _SEEN:
            _SEEN["during_trial"] = listeners(process_tree(os.getpid(), self.ray_tmp))


def _describe(found: list[Listener]) -> str:
    return "\n".join(f"  {x.endpoint}  pid {x.pid}  {x.command[:90]}" for x in found)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_local_search_listens_on_loopback_only(tmp_path, datasets_dir, ray_env, monkeypatch):
    from search import tuner

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where Ray would write a token file
    cfg = smoke_config(tmp_path, ["search.num_samples=1", "search.max_concurrent=1", "search.name=network",
                                  "recipe.classifier.epochs=1", "search.scheduler={type: fifo}"])
    _SEEN.clear()
    try:
        outcome = tuner.run_search(cfg, callbacks=[RecordListenersWhileATrialRuns(ray_env)])
    finally:
        found = _SEEN.pop("during_trial", None)
    assert [r["status"] for r in outcome.leaderboard] == ["completed"]
    assert found is not None, "no trial reported a result: nothing was checked"

    commands = " ".join(x.command for x in found)
    # Not vacuous: Ray's own servers and a trial's worker process are among the listeners.
    assert "gcs_server" in commands and "raylet" in commands, _describe(found)
    assert any(x.command.startswith("ray::") for x in found), _describe(found)
    exposed = [x for x in found if not x.loopback]
    assert not exposed, "Ray ports listening beyond loopback:\n" + _describe(exposed)
    assert outcome.leaderboard[0]["node_ip"] == "127.0.0.1"

    # Auth was switched off for this loopback-only start alone: nothing left behind.
    assert "RAY_AUTH_MODE" not in os.environ
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()


def test_importing_search_leaves_ray_auth_mode_unset():
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["PYTHONPATH"] = str(ROOT)
    code = "import os, search, search.tuner; print(os.environ.get('RAY_AUTH_MODE', 'unset'))"
    out = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "unset"


def test_local_start_switches_auth_off_only_when_the_user_chose_nothing(monkeypatch):
    from search.local_ray import _auth_off_unless_chosen

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with _auth_off_unless_chosen():
        assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with _auth_off_unless_chosen():
        assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_the_socket_reader_finds_listeners_and_tells_loopback_from_the_rest():
    with listen_on("127.0.0.1") as sock:
        port = sock.getsockname()[1]
        mine = [x for x in listeners([os.getpid()]) if x.port == port]
    assert [(x.address, x.pid, x.loopback) for x in mine] == [("127.0.0.1", os.getpid(), True)]

    # Lines as the kernel prints them (x86: each 32-bit word little-endian); state 0A = LISTEN, 01 = ESTABLISHED.
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    tcp = header + (
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
        "   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 112 1\n"
        "   2: 0202000A:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 113 1\n"
        "   3: 0202000A:1F93 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 114 1\n")
    assert parse_proc_net_tcp(tcp) == {111: ("127.0.0.1", 8080), 112: ("0.0.0.0", 8081), 113: ("10.0.2.2", 8082)}
    tcp6 = header + (
        "   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 211 1\n"
        "   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 212 1\n"
        "   2: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 213 1\n")
    parsed = parse_proc_net_tcp(tcp6)
    assert parsed == {211: ("::ffff:7f00:1", 8080), 212: ("::1", 8081), 213: ("::", 8082)}
    assert [is_loopback(a) for a, _ in parsed.values()] == [True, True, False]
    assert [is_loopback(a) for a in ("127.0.0.1", "127.0.0.3", "0.0.0.0", "10.0.2.2")] == [True, True, False, False]


def test_the_process_tree_holds_children_and_reparented_processes_that_match():
    marker = f"tree-marker-{os.getpid()}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # A grandchild whose parent exits at once: re-parented away from this process, found by its command line.
    subprocess.run(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(60)' {marker} >/dev/null 2>&1 &"],
                   check=True)
    orphans: set[int] = set()
    try:
        plain = process_tree(os.getpid())
        matching = process_tree(os.getpid(), marker)
        orphans = matching - plain
        assert {os.getpid(), child.pid} <= plain and 1 not in plain
        assert len(orphans) == 1 and marker in Path(f"/proc/{orphans.pop()}/cmdline").read_text()
    finally:
        child.kill()
        child.wait()
        for pid in process_tree(os.getpid(), marker) - process_tree(os.getpid()):
            os.kill(pid, 9)
