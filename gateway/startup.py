"""Why a long-running command (``serve``, ``consume``) could not start, in one line.

What stops a start is almost always the machine, not the code: the port is taken, the data dir
is read-only or missing, another process holds the DuckDB file (DuckDB lets one process write
it). Those get one clear line and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from gateway.eventlog.log_errors import describe, refuses_user

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_open(has_keys: bool, host: str, what: str) -> None:
    """Say at WARNING that a keyless service listens beyond loopback (``serve``, ``consume``)."""
    if not has_keys and host not in _LOOPBACK:
        log.warning(
            "no API keys are configured and the %s listens on %s: whoever reaches it can %s; configure api_keys",
            what,
            host,
            "spend as any tenant, read every tenant's costs and run SQL analytics"
            if what == "gateway"
            else "read every tenant's costs, run SQL analytics and start replays",
        )


def warn_if_readable(data_dir: Path) -> None:
    """Say at WARNING that the data dir's files are open to other users: the files this version
    creates are its user's only (umask 077), but a data dir an older version made keeps its
    0644 files, and SQLite gives its -wal and -shm files the database file's mode (an upgrade
    review). Changing modes the operator may have chosen is left to them."""
    try:
        paths = [data_dir, *data_dir.rglob("*")]
        shared = [p for p in paths if p.stat().st_mode & 0o077 and (p.is_file() or p == data_dir)]
    except OSError:
        return
    if shared:
        log.warning(
            "%d file(s) of the data dir %s are readable by other users (they hold tenants' usage and "
            "vendors' error texts): chmod -R go-rwx %s",
            len(shared),
            data_dir,
            data_dir,
        )


#: what to do about a DuckDB file another process holds
_LOCK_HINT = (
    " (another gateway or `llm-gateway consume` on the same data dir holds it: stop it, use another"
    " data dir, or run this gateway with --no-project)"
)


def startup_failure(exc: BaseException) -> str | None:
    """The one-line reason for an environmental start-up failure; None for anything else."""
    if type(exc).__module__ in ("duckdb", "_duckdb"):
        text = " ".join(str(exc).split())
        hint = _LOCK_HINT if "lock" in text.lower() else ""
        return f"the analytics store (DuckDB): {text}{hint}"
    if (type(exc).__module__, type(exc).__name__) == ("analytics.store", "StoreError"):  # e.g. a newer version's
        return f"the analytics store (DuckDB): {' '.join(str(exc).split())}"
    if isinstance(exc, sqlite3.Error):
        return f"the event log (SQLite): {' '.join(str(exc).split())} (is the data dir writable?)"
    if isinstance(exc, OSError):
        return " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__module__.startswith("aiokafka") and type(exc).__name__ in _KAFKA_UNREACHABLE:
        return f"the Kafka broker: {describe(exc)} (is KAFKA_BOOTSTRAP_SERVERS right, and the broker up?)"
    if refuses_user(exc):
        # a consumer whose user may not create the dead-letter topic, or join its group, exited
        # with a 60-line traceback (a review on a broker with ACLs)
        return f"the Kafka cluster refuses this user: {describe(exc)} (see the ACLs it needs in the README)"
    return None


#: aiokafka's errors for a broker that cannot be reached (by name: aiokafka is imported only in
#: Kafka mode); a consumer started before its broker exits with this line, and its supervisor
#: (compose's ``restart``, Kubernetes) starts it again
_KAFKA_UNREACHABLE = frozenset({"KafkaConnectionError", "KafkaTimeoutError", "NodeNotReadyError"})
