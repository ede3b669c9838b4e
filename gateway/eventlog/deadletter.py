"""Dead letters next to the event log: records a consumer cannot apply (unreadable, too-new
schema), kept byte for byte with the reason and the log position they came from.

``dead_letter(raw, reason, position)`` is the method of the projector's ``DeadLetters`` port
(``consumers.sinks.base``); these stores add ``start``/``close``. Adapters:

- ``KafkaDeadLetters``: topic ``<topic>.dlq``, value = the original bytes, headers ``reason``,
  ``source_position``, ``source_topic``, key = ``dead_letter_id`` (so a record dead-lettered
  again after a redelivery can be recognised; a topic cannot refuse the copy).
- ``SqliteDeadLetters``: table ``dead_letters`` in the embedded log's file, once per
  ``(position, raw)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.eventlog.sqlite import close_locked, connect

if TYPE_CHECKING:  # aiokafka is imported when a Kafka store starts (an embedded gateway never loads it)
    from aiokafka import AIOKafkaProducer


def dead_letter_id(raw: bytes, position: str) -> str:
    digest = hashlib.sha256(position.encode())
    digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    reason: str
    position: str
    created_at: datetime


class DeadLetterStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        """Store one record durably; returns once it is stored (the caller may commit past it)."""
        ...


class SqliteDeadLetters:
    """Table ``dead_letters`` in the embedded log's file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        if self._conn is None:
            self._conn = await asyncio.to_thread(self._open)

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (id TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "reason TEXT NOT NULL, position TEXT NOT NULL, created_at TEXT NOT NULL)"
        )
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await close_locked(conn, self._lock)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteDeadLetters is not started")
        return self._conn

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        row = (dead_letter_id(raw, position), raw, reason, position, datetime.now(UTC).isoformat())

        def insert() -> None:
            with self._lock:
                self._db().execute(
                    "INSERT OR IGNORE INTO dead_letters (id, value, reason, position, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )

        await asyncio.to_thread(insert)

    async def letters(self) -> list[DeadLetter]:
        def select() -> list[DeadLetter]:
            with self._lock:
                rows = (
                    self._db()
                    .execute("SELECT value, reason, position, created_at FROM dead_letters ORDER BY rowid")
                    .fetchall()
                )
            return [DeadLetter(v, r, p, datetime.fromisoformat(c)) for v, r, p, c in rows]

        return await asyncio.to_thread(select)


class KafkaDeadLetters:
    """Topic ``<topic>.dlq`` (one partition), written with ``acks=all`` and idempotence."""

    def __init__(
        self,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        *,
        replication_factor: int | None = None,
        client_id: str = "llm-gateway-consumer",
    ) -> None:
        self._kafka = kafka_connection(bootstrap_servers)
        self.bootstrap_servers = self._kafka.bootstrap_servers
        self.source_topic = topic
        self.topic = f"{topic}.dlq"
        self._replication_factor = replication_factor
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer

        from gateway.eventlog.kafka_admin import ensure_topic

        await ensure_topic(
            self._kafka,
            self.topic,
            1,
            replication_factor=self._replication_factor,
            client_id=self._client_id,
        )
        producer = AIOKafkaProducer(
            **self._kafka.client_options(), client_id=self._client_id, acks="all", enable_idempotence=True
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            from gateway.eventlog.kafka_admin import stop_producer

            producer, self._producer = self._producer, None
            await stop_producer(producer, 5.0)

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        if self._producer is None:
            raise RuntimeError("KafkaDeadLetters is not started")
        headers = [
            ("reason", reason.encode()),
            ("source_position", position.encode()),
            ("source_topic", self.source_topic.encode()),
        ]
        key = dead_letter_id(raw, position).encode()
        await self._producer.send_and_wait(self.topic, value=raw, key=key, headers=headers)
