"""A Kafka-mode gateway's spool left with events (stopped while its broker was down), and the data
dir run embedded again: the events, answered and billed, were in no log and no store, without a
word (a review: 10 calls). The embedded log takes them in at start; a spool another gateway
process holds is left to it."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from gateway.eventlog.spool_adoption import SPOOL_TABLE
from gateway.eventlog.spool_lock import lock_spool
from gateway.eventlog.sqlite import SqliteEventLog, SqliteOutbox
from gateway.events import UsageEvent
from tests.unit.test_event_json import BASE


def spool_with(path: Path, count: int) -> list[bytes]:
    values = [UsageEvent(**{**BASE, "event_id": f"{path.stem}-{i}"}).to_json() for i in range(count)]
    spool = SqliteOutbox(path, table=SPOOL_TABLE)
    spool.append_many([("t", value, 1_700_000_000_000 + i) for i, value in enumerate(values)])
    spool.close()
    return values


def rows(path: Path, table: str) -> list[bytes]:
    with sqlite3.connect(path) as conn:
        return [bytes(row[0]) for row in conn.execute(f"SELECT value FROM {table} ORDER BY seq")]


async def test_the_embedded_log_takes_in_what_a_kafka_spool_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    left = spool_with(tmp_path / "spool.sqlite3", 10) + spool_with(tmp_path / "spool-gw2.sqlite3", 2)
    held = spool_with(tmp_path / "spool-live.sqlite3", 3)
    lock = lock_spool(tmp_path / "spool-live.sqlite3")  # a Kafka-mode gateway runs on this one
    caplog.set_level(logging.WARNING, logger="gateway.eventlog.spool_adoption")
    log = SqliteEventLog(tmp_path / "events.sqlite3")
    try:
        await log.start()
    finally:
        await log.close()
        assert lock is not None
        os.close(lock)
    assert sorted(rows(tmp_path / "events.sqlite3", "events")) == sorted(left)
    assert rows(tmp_path / "spool.sqlite3", SPOOL_TABLE) == rows(tmp_path / "spool-gw2.sqlite3", SPOOL_TABLE) == []
    assert rows(tmp_path / "spool-live.sqlite3", SPOOL_TABLE) == held  # left to its gateway
    messages = [r.getMessage() for r in caplog.records]
    assert any("moved 10 usage events" in m for m in messages) and any("in use by another" in m for m in messages)
    # that gateway stopped: the next start takes its spool in too, and the one after finds nothing
    for expected in (15, 15):
        caplog.clear()
        log = SqliteEventLog(tmp_path / "events.sqlite3")
        await log.start()
        await log.close()
        assert len(rows(tmp_path / "events.sqlite3", "events")) == expected
    assert not caplog.records and rows(tmp_path / "spool-live.sqlite3", SPOOL_TABLE) == []
