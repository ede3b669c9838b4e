"""A Kafka spool whose disk is full cannot delete what Kafka acknowledged: those events must not
be sent again (a storage review: the same 1,350 events went 5 times a second, 196,770 applied
for 9,341 calls, while the log blamed Kafka). Against a fake producer: no broker needed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.eventlog.kafka_producer import KafkaEventLog
from tests.unit.test_sqlite_eventlog import UNREACHABLE_KAFKA, make_event


class Builder:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes) -> object:
        self.values.append(value)
        return object()


class FakeProducer:
    """What the forwarder uses of AIOKafkaProducer; every batch is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, builder: Builder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.extend(builder.values)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_acknowledged_events_a_full_spool_cannot_delete_are_not_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = KafkaEventLog(UNREACHABLE_KAFKA, "llm.usage", tmp_path / "spool.sqlite3", forward_batch=3)
    for i in range(5):
        log.publish(make_event(i))
    spool = log._spool
    delete_range = spool.delete_range

    def full_disk(first: int, last: int, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(spool, "delete_range", full_disk)
    producer = FakeProducer()
    while await log._forward_once(producer):  # type: ignore[arg-type]
        pass
    assert len(producer.sent) == 5  # each once, though none could be deleted
    assert log.pending() == 0
    assert "cannot delete the" in caplog.text and "spool" in caplog.text

    monkeypatch.setattr(spool, "delete_range", delete_range)  # space again
    assert not await log._forward_once(producer)  # deletes them, finds nothing more to send
    assert spool.count() == 0 and len(producer.sent) == 5
    await log.close(timeout=0.5)
