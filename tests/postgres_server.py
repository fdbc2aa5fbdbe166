"""A throwaway PostgreSQL server on 127.0.0.1 for the tests (imported by tests/test_postgres_store.py).

It uses Debian's server binaries (``apt-get install postgresql``: ``/usr/lib/postgresql/<version>/bin``)
without touching the system's own cluster: ``initdb`` into a private temp folder, ``pg_ctl start`` on a
free port of 127.0.0.1 with its Unix socket in that folder, and ``pg_ctl stop`` afterwards (that
server's own postmaster, by the PID in its data folder). PostgreSQL refuses to run as root, so under
root the server runs as the ``postgres`` user (``runuser``). Password authentication (SCRAM), as on
the cluster; clients find the password in a ``.pgpass`` file named by ``PGPASSFILE``.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_USER_WHEN_ROOT = "postgres"  # created by Debian's postgresql package


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    database: str
    pgpass: Path  # a 0600 .pgpass holding the password: set PGPASSFILE to it for libpq clients

    @property
    def uri(self) -> str:
        """SQLAlchemy URI without a password (libpq reads it from PGPASSFILE), as cluster.yaml uses. The driver is
        named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, not psycopg2."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.database}"


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and createdb; None if absent."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name))
    for bin_dir in reversed(candidates):
        if all((bin_dir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "createdb")):
            return bin_dir
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def missing_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if postgres_bin_dir() is None:
        return "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        except KeyError:
            return f"running as root and no {SERVER_USER_WHEN_ROOT!r} user to run PostgreSQL as"
        if not shutil.which("runuser"):
            return "running as root and runuser (util-linux) is missing"
    return None


@contextlib.contextmanager
def postgres_server(port: int, user: str = "mlflow", database: str = "mlflow") -> Iterator[Postgres]:
    """Start PostgreSQL on 127.0.0.1:``port`` with ``database`` owned by ``user``; stop it and delete it after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(missing_reason())
    work = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the Unix socket path must fit 107 bytes
    password = secrets.token_hex(16)
    as_server_user = _server_user_prefix(work)
    data, log = work / "data", work / "server.log"
    pw_file = work / "initdb.pw"
    pw_file.write_text(password + "\n")
    _chown_like(work, pw_file)
    pgpass = work / "client.pgpass"
    pgpass.write_text(f"127.0.0.1:{port}:*:{user}:{password}\n")
    pgpass.chmod(0o600)  # libpq ignores a .pgpass others can read
    started = False
    try:
        _run([*as_server_user, str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pw_file}",
              "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"])
        _run([*as_server_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
              "-o", f"-h 127.0.0.1 -p {port} -k {work}"], log=log)
        started = True
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database],
             env={**os.environ, "PGPASSFILE": str(pgpass)})
        yield Postgres("127.0.0.1", port, user, database, pgpass)
    finally:
        if started:
            _run([*as_server_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                 check=False)
        shutil.rmtree(work, ignore_errors=True)


def _server_user_prefix(work: Path) -> list[str]:
    """``runuser -u postgres --`` under root (PostgreSQL refuses root), after handing it ``work``."""
    if os.geteuid() != 0:
        return []
    _chown_like(work, work)
    return ["runuser", "-u", SERVER_USER_WHEN_ROOT, "--"]


def _chown_like(work: Path, path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(cmd: list[str], *, env: dict | None = None, check: bool = True, log: Path | None = None) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd="/")
    if check and done.returncode != 0:
        server_log = log.read_text()[-2000:] if log and log.exists() else ""
        tool = next((Path(part).name for part in cmd if part.startswith("/")), cmd[0])
        raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}{server_log}")
