"""The one-line reasons `serve` and `consume` give when the machine stops them from starting."""

from __future__ import annotations

import errno
import sqlite3

import duckdb
import pytest

from gateway.startup import startup_failure


def test_environmental_failures_get_one_line() -> None:
    lock = duckdb.IOException('IO Error: Could not set lock on file "/d/analytics.duckdb":\nConflicting lock')
    reason = startup_failure(lock)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("the analytics store (DuckDB): IO Error") and "--no-project" in reason
    reason = startup_failure(sqlite3.OperationalError("unable to open database file"))
    assert reason == "the event log (SQLite): unable to open database file (is the data dir writable?)"
    taken = OSError(errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 8080): address in use")
    assert "address in use" in (startup_failure(taken) or "")
    from aiokafka.errors import KafkaConnectionError

    # `consume` started before its broker: was a traceback
    reason = startup_failure(KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]"))
    assert reason is not None and reason.startswith("the Kafka broker: KafkaConnectionError: Unable to bootstrap")
    from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    # a user the cluster's ACLs refuse: was a 60-line traceback (a review)
    reason = startup_failure(TopicAuthorizationFailedError("creating topic llm.usage.dlq"))
    assert reason == (
        "the Kafka cluster refuses this user: [Error 29] TopicAuthorizationFailedError: creating topic "
        "llm.usage.dlq (see the ACLs it needs in the README)"
    )
    assert "GroupAuthorizationFailedError" in (startup_failure(GroupAuthorizationFailedError()) or "")


@pytest.mark.parametrize("bug", [ValueError("x"), KeyError("y"), RuntimeError("z")])
def test_anything_else_keeps_its_traceback(bug: Exception) -> None:
    assert startup_failure(bug) is None


def test_a_data_dir_open_to_other_users_is_said_at_start(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A data dir an older version made keeps its 0644 files (the umask only covers new ones,
    and SQLite gives its -wal and -shm files the database's mode): an upgrade review."""
    import logging

    from gateway.startup import warn_if_readable

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "events.sqlite3").write_bytes(b"")
    (data / "events.sqlite3").chmod(0o600)
    caplog.set_level(logging.WARNING)
    warn_if_readable(data)
    assert "readable by other users" not in caplog.text
    (data / "analytics.duckdb").write_bytes(b"")
    (data / "analytics.duckdb").chmod(0o644)
    warn_if_readable(data)
    assert f"1 file(s) of the data dir {data} are readable by other users" in caplog.text
    assert f"chmod -R go-rwx {data}" in caplog.text
