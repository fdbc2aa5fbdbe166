"""Which TCP ports a set of processes listens on, and on which addresses, read from ``/proc`` (Linux).

Imported by tests/test_network.py. ``/proc/net/tcp`` and ``/proc/net/tcp6`` list every socket of the
network namespace with its inode; ``/proc/PID/fd/*`` links to ``socket:[INODE]`` say which process
holds it. Only the processes asked about are looked at: other Ray instances may run on this machine.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = "0A"  # the kernel's TCP_LISTEN state, as /proc/net/tcp prints it


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    address: str  # as ipaddress prints it: 127.0.0.1, ::ffff:127.0.0.1, ::, 0.0.0.0
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6 (``::ffff:127.0.0.1``, how a dual-stack
    socket bound to 127.0.0.1 appears in /proc/net/tcp6)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def decode_address(hex_address: str) -> str:
    """``0100007F`` -> ``127.0.0.1``: the kernel prints each 32-bit word of the address in host byte order."""
    words = [int(hex_address[i:i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    return str(ipaddress.ip_address(raw))


def parse_proc_net_tcp(text: str) -> dict[int, tuple[str, int]]:
    """Listening sockets in one /proc/net/tcp{,6} table: ``{inode: (address, port)}``."""
    listening = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        hex_address, hex_port = fields[1].split(":")
        listening[int(fields[9])] = (decode_address(hex_address), int(hex_port, 16))
    return listening


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # exited meanwhile
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listeners(pids: Iterable[int]) -> list[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) held by one of ``pids``."""
    table: dict[int, tuple[str, int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(name).exists():
            table.update(parse_proc_net_tcp(Path(name).read_text()))
    found = []
    for pid in sorted(set(pids)):
        for inode in _socket_inodes(pid) & table.keys():
            address, port = table[inode]
            found.append(Listener(pid, _command(pid), address, port))
    return found


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(root: int, also_matching: str | None = None) -> set[int]:
    """``root`` and all its descendants, plus (with their descendants) processes whose command line
    contains ``also_matching`` (e.g. a Ray session's private temp folder: daemons a node re-parents)."""
    parents = _parents()
    tree = {root}
    if also_matching:
        tree |= {pid for pid in parents if also_matching in _command(pid)}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def listen_on(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` (port chosen by the kernel), for checking the reader itself."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen()
    return sock
