"""A real PostgreSQL 15 for tests: the Debian cluster ``15 main``, driven with pg_ctlcluster.

Runs as root (pg_ctlcluster starts the server as the postgres user). The cluster is left as it
was found: ``stop`` only stops it if ``start`` started it. See ``tests/services/README.md``.

CLI::

    python -m tests.services.postgres start    # prints the DSN on stdout
    python -m tests.services.postgres status
    python -m tests.services.postgres stop

From Python (tests simulating a database outage)::

    stop_cluster(); start_cluster()   # start_cluster returns once `select 1` works
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import asyncpg

from tests.services._common import (
    SERVICES_DIR,
    apt_install,
    log,
    read_state,
    run_coroutine,
    run_tool,
    tcp_port_open,
    wait_until,
    write_state,
)

VERSION = "15"
CLUSTER = "main"
HOST = "127.0.0.1"
ROLE = DATABASE = PASSWORD = "gw"
STATE_FILE = SERVICES_DIR / "postgres" / "state.json"
READY_TIMEOUT = 60.0


class PostgresError(RuntimeError):
    """The cluster could not be installed, started or reached."""


@dataclass(frozen=True)
class ClusterInfo:
    port: int
    status: str  # "online", "down", "online,recovery", ...

    @property
    def online(self) -> bool:
        return self.status.startswith("online")


def dsn(port: int = 5432) -> str:
    return f"postgresql://{ROLE}:{PASSWORD}@{HOST}:{port}/{DATABASE}"


def cluster_info() -> ClusterInfo | None:
    """Our cluster's line of ``pg_lsclusters``, or None if it does not exist."""
    if shutil.which("pg_lsclusters") is None:
        return None
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[:2] == [VERSION, CLUSTER]:
            return ClusterInfo(port=int(fields[2]), status=fields[3])
    return None


def ensure_installed() -> ClusterInfo:
    """Install postgresql-15 and create cluster ``15 main`` where they are missing."""
    if shutil.which(f"/usr/lib/postgresql/{VERSION}/bin/postgres") is None:
        apt_install(f"postgresql-{VERSION}")
    if cluster_info() is None:
        log(f"postgres: creating cluster {VERSION} {CLUSTER}")
        run_tool(["pg_createcluster", VERSION, CLUSTER])
    info = cluster_info()
    if info is None:
        raise PostgresError(f"cluster {VERSION} {CLUSTER} missing after install")
    return info


def _ctl(action: str, *flags: str) -> None:
    run_tool(["pg_ctlcluster", VERSION, CLUSTER, action, *flags])


def _psql_as_postgres(sql: str) -> str:
    """Run SQL as the postgres OS user over the Unix socket (peer auth)."""
    info = cluster_info()
    port = str(info.port if info else 5432)
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-p", port,
         "-v", "ON_ERROR_STOP=1", "-qtAc", sql],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    if result.returncode != 0:
        raise PostgresError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


def ensure_role_and_database() -> None:
    """Role gw/gw (SUPERUSER, LOGIN) and database gw, created or repaired idempotently."""
    exists = _psql_as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'")
    verb = "ALTER" if exists == "1" else "CREATE"
    _psql_as_postgres(f"{verb} ROLE {ROLE} WITH LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    if _psql_as_postgres(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
        _psql_as_postgres(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")


async def _select_one(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        if await conn.fetchval("select 1") != 1:
            raise PostgresError("select 1 did not return 1")
    finally:
        await conn.close()


def wait_ready(port: int, timeout: float = READY_TIMEOUT) -> None:
    """Until ``select 1`` as gw over TCP works (the server may still be starting up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run_coroutine(lambda: _select_one(dsn(port)))
            return
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise PostgresError(f"no `select 1` on {dsn(port)}: {exc!r}") from exc
        time.sleep(0.3)


def _start_server(timeout: float) -> int:
    """Start the cluster if it is down; returns its port once it accepts TCP connections."""
    info = ensure_installed()
    if not info.online:
        _ctl("start")
    wait_until(lambda: tcp_port_open(HOST, info.port), timeout, f"postgres port {info.port}")
    return info.port


def start_cluster(timeout: float = READY_TIMEOUT) -> None:
    """Start the cluster if it is down, and return once ``select 1`` works over TCP."""
    wait_ready(_start_server(timeout), timeout)


def stop_cluster() -> None:
    """Fast shutdown (disconnects every client), as in a database outage."""
    info = cluster_info()
    if info is not None and info.online:
        _ctl("stop", "-m", "fast")


async def astart_cluster() -> None:
    await asyncio.to_thread(start_cluster)


async def astop_cluster() -> None:
    await asyncio.to_thread(stop_cluster)


# --------------------------------------------------------------------------- CLI


def _was_running_before() -> bool:
    """Whether the cluster ran before any of our runs (a stale state file says we started it)."""
    previous = read_state(STATE_FILE)
    if previous is not None and not previous["was_running"]:
        return False
    info = cluster_info()
    return info is not None and info.online


def cmd_start(_: argparse.Namespace) -> int:
    started = time.monotonic()
    was_running = _was_running_before()
    port = _start_server(READY_TIMEOUT)
    write_state(STATE_FILE, {"was_running": was_running, "dsn": dsn(port), "port": port})
    ensure_role_and_database()
    wait_ready(port)
    how = "was already running" if was_running else "started"
    log(f"postgres: cluster {VERSION} {CLUSTER} {how}, ready in {time.monotonic() - started:.1f}s")
    print(dsn(port))
    return 0


def cmd_stop(_: argparse.Namespace) -> int:
    state = read_state(STATE_FILE)
    if state is None:
        log("postgres: nothing recorded, leaving the cluster as it is")
    elif state["was_running"]:
        log("postgres: cluster was running before, leaving it running")
    else:
        started = time.monotonic()
        stop_cluster()
        log(f"postgres: cluster stopped in {time.monotonic() - started:.1f}s")
    STATE_FILE.unlink(missing_ok=True)
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    info = cluster_info()
    state = read_state(STATE_FILE)
    if info is None:
        print(f"postgres: cluster {VERSION} {CLUSTER} not installed")
        return 1
    print(f"postgres: cluster {VERSION} {CLUSTER} {info.status} port={info.port} "
          f"dsn={dsn(info.port)} recorded={state}")  # fmt: skip
    return 0 if info.online else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.services.postgres",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("start", cmd_start, "start the cluster if needed, create gw/gw, print the DSN"),
        ("stop", cmd_stop, "stop the cluster if `start` started it"),
        ("status", cmd_status, "show the cluster and the recorded state"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (PostgresError, subprocess.CalledProcessError, TimeoutError) as exc:
        log(f"postgres: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
