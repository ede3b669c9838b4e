"""Where a replay reads the log: a bounded, throw-away reader per log adapter.

A replay reads a range of the log that is fixed when it starts: from the beginning (or from a
time, or from a position) up to the last record on the log at that moment. Records appended
later are the live projector's business. The readers here belong to no consumer group and
commit nothing, so a replay never moves (nor is moved by) the live projector's position:

- embedded log: its own SQLite connection to ``events.sqlite3``, plain ``SELECT``s by ``seq``
  (WAL: reads never block the gateway's appends); nothing is written to the file;
- Kafka: a consumer without a group (``group_id=None``) assigned every partition of the topic,
  reading each from its start offset to the end offset taken at :meth:`open`. Nothing is left
  on the broker to clean up.

Start of the range:

- ``since`` (timezone-aware): events whose ``created_at`` is at or after it. The embedded log
  stores ``created_at`` as the row's ``ts``; Kafka records carry it as their timestamp, so
  ``offsets_for_times`` finds where to start. The exact ``created_at`` filter is applied again
  on the decoded events by the replayer.
- ``from_position``: the embedded log's ``seq`` (``"17"``: that record and everything after
  it), or Kafka ``partition:offset`` pairs (``"0:120,2:98"``); partitions not named are read
  from their beginning.

``behind(group)`` tells how many records of the range a (live) consumer group has not committed
yet: those it will still project itself, with their recorded costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.eventlog.log_errors import describe
from gateway.eventlog.sqlite import close_locked
from gateway.settings import Settings

log = logging.getLogger(__name__)


class ReplayRangeError(ValueError):
    """The requested start of the replay cannot be understood (a bad position)."""


@dataclass(frozen=True, slots=True)
class ReplayStart:
    since: datetime | None = None
    from_position: str | None = None

    @property
    def from_beginning(self) -> bool:
        return self.since is None and self.from_position is None


class ReplaySource(Protocol):
    #: records in the range (known after ``open``; an upper bound with ``since``)
    total: int
    #: where the range starts and ends, for the summary (e.g. ``"seq 1"`` / ``"seq 100000"``)
    first: str
    last: str
    #: what the log no longer holds of the range asked (records its retention deleted), for the
    #: summary; None when it holds it all
    trimmed: str | None

    async def open(self, start: ReplayStart) -> None: ...

    async def fetch(self, max_records: int) -> list[bytes]:
        """The values of the next records of the range, in log order; [] once the range is read.
        (A replay needs nothing else of a record: no position, key or timestamp objects are built.)"""
        ...

    async def behind(self, group_id: str) -> int | None:
        """Records of the range that ``group_id`` has not committed (None: cannot tell)."""
        ...

    async def close(self) -> None: ...


def build_replay_source(settings: Settings) -> ReplaySource:
    if settings.kafka_bootstrap_servers:
        return KafkaReplaySource(settings.kafka, settings.topic)
    from gateway.eventlog.factory import embedded_log_path

    return SqliteReplaySource(embedded_log_path(settings))


def _epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ReplayRangeError(f"'since' must carry a timezone, got {moment.isoformat()}")
    return int(moment.timestamp() * 1000)


# --- embedded log -------------------------------------------------------------------------------


class SqliteReplaySource:
    """A range of the embedded SQLite log, read by ``seq``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = 0
        self.first = self.last = "-"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._after = 0  # last seq read
        self._bound = 0  # last seq of the range
        self._min_ts: int | None = None
        self.trimmed: str | None = None

    async def open(self, start: ReplayStart) -> None:
        after = 0 if start.from_position is None else _embedded_position(start.from_position) - 1
        self._min_ts = None if start.since is None else _epoch_ms(start.since)
        if not self.path.is_file():
            return  # no log yet: nothing to replay
        self._conn = await asyncio.to_thread(self._connect)
        self._after = after
        self._bound, self.total, oldest = await asyncio.to_thread(self._measure)
        if oldest > after + 1 and start.since is None:
            self.trimmed = (
                f"the log starts at seq {oldest}: the {oldest - after - 1} records before it were deleted by its "
                "retention (log_retention_days); the stores keep them as they are (not re-projected nor re-priced)"
            )
        self.first = f"seq {after + 1}" + ("" if self._min_ts is None else f" ({start.since:%Y-%m-%dT%H:%M:%S%z})")
        self.last = f"seq {self._bound}"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _measure(self) -> tuple[int, int, int]:
        """(the range's last seq, its records, the log's first seq)."""
        with self._lock:
            conn = self._db()
            if not _has_table(conn, "events"):
                return 0, 0, 0
            bound, oldest = conn.execute("SELECT coalesce(max(seq), 0), coalesce(min(seq), 0) FROM events").fetchone()
            sql = "SELECT count(*) FROM events WHERE seq > ? AND seq <= ? AND ts >= ?"
            min_ts = -(2**62) if self._min_ts is None else self._min_ts
            (total,) = conn.execute(sql, (self._after, bound, min_ts)).fetchone()
        return int(bound), int(total), int(oldest)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the replay source is not open")
        return self._conn

    async def fetch(self, max_records: int) -> list[bytes]:
        if self._conn is None or self._after >= self._bound:
            return []
        return await asyncio.to_thread(self._read, max_records)

    def _read(self, limit: int) -> list[bytes]:
        # the seq range bounds the scan (rowid order); ``ts`` filters inside it
        with self._lock:
            if self._min_ts is None:
                sql = "SELECT seq, value FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
                rows = self._db().execute(sql, (self._after, self._bound, limit)).fetchall()
            else:
                sql = "SELECT seq, value FROM events WHERE seq > ? AND seq <= ? AND ts >= ? ORDER BY seq LIMIT ?"
                rows = self._db().execute(sql, (self._after, self._bound, self._min_ts, limit)).fetchall()
            self._after = rows[-1][0] if rows else self._bound
        return [value for _, value in rows]

    async def behind(self, group_id: str) -> int:
        if self._conn is None:
            return 0

        def count() -> int:
            with self._lock:
                conn = self._db()
                committed = 0
                if _has_table(conn, "positions"):
                    row = conn.execute("SELECT position FROM positions WHERE group_id = ?", (group_id,)).fetchone()
                    committed = int(row[0]) if row else 0
                return max(0, self._bound - committed)

        return await asyncio.to_thread(count)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await close_locked(conn, self._lock)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# --- Kafka --------------------------------------------------------------------------------------


class KafkaReplaySource:
    """A range of the Kafka topic, every partition, read without a consumer group."""

    def __init__(
        self,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        *,
        client_id: str = "llm-gateway-replay",
        request_timeout_ms: int = 30_000,
        max_partition_fetch_bytes: int = 8 * 1024 * 1024,
        stall_timeout: float = 60.0,
    ) -> None:
        #: the topic's retention is the operator's: what it deleted is not known here
        self.trimmed: str | None = None
        self._kafka = kafka_connection(bootstrap_servers)
        self.bootstrap_servers = self._kafka.bootstrap_servers
        self.topic = topic
        self.total = 0
        self.first = self.last = "-"
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._max_partition_fetch_bytes = max_partition_fetch_bytes
        self._stall_timeout = stall_timeout
        self._consumer: object | None = None
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._pending: set[int] = set()

    async def open(self, start: ReplayStart) -> None:
        from aiokafka.errors import KafkaError

        try:
            await self._open(start)
        except KafkaError as e:
            raise ConnectionError(f"Kafka at {self.bootstrap_servers}: {describe(e)}") from e

    async def _open(self, start: ReplayStart) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        wanted = _kafka_positions(start.from_position) if start.from_position is not None else {}
        self._starts, self._ends, self._pending = {}, {}, set()  # a source may be opened again
        # the consumer is made once the broker answered: made before, a broker that is down left it
        # unclosed ("ERROR asyncio: Unclosed AIOKafkaConsumer" after the replay's one-line error)
        async with self._admin() as admin:
            partitions = sorted(await _partitions(admin, self.topic))
        consumer = AIOKafkaConsumer(
            **self._kafka.client_options(),
            group_id=None,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=self._request_timeout_ms,
            max_partition_fetch_bytes=self._max_partition_fetch_bytes,
            fetch_max_wait_ms=100,
        )
        self._consumer = consumer  # closed by close(), whatever start() did
        await consumer.start()
        unknown = sorted(set(wanted) - set(partitions))
        if unknown:
            raise ReplayRangeError(f"topic {self.topic} has no partition(s) {unknown} (it has {partitions})")
        if not partitions:
            return  # no topic yet: nothing to replay
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: _epoch_ms(start.since) for tp in tps}) if start.since else {}
        for tp in tps:
            first, end = beginnings[tp], ends[tp]
            if start.since is not None:
                hit = found.get(tp)
                first = end if hit is None else max(first, hit.offset)
            if tp.partition in wanted:
                first = min(max(first, wanted[tp.partition]), end)
            self._starts[tp.partition], self._ends[tp.partition] = first, end
            if first < end:
                consumer.seek(tp, first)
                self._pending.add(tp.partition)
        # pause finished partitions so fetches only ask for the ones with records left
        consumer.pause(*[tp for tp in tps if tp.partition not in self._pending])
        self.total = sum(self._ends[p] - self._starts[p] for p in partitions)
        self.first = ",".join(f"{p}:{self._starts[p]}" for p in partitions)
        self.last = ",".join(f"{p}:{self._ends[p] - 1}" for p in partitions)

    async def fetch(self, max_records: int) -> list[bytes]:
        from aiokafka.errors import KafkaError

        try:
            return await self._fetch(max_records)
        except KafkaError as e:
            raise ConnectionError(f"Kafka at {self.bootstrap_servers}: {describe(e)}") from e

    async def _fetch(self, max_records: int) -> list[bytes]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = self._consumer
        if not isinstance(consumer, AIOKafkaConsumer) or not self._pending:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stall_timeout
        while self._pending:
            batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
            records: list[bytes] = []
            for tp in sorted(batches, key=lambda tp: tp.partition):
                end = self._ends[tp.partition]
                # a record without a value (a tombstone) is no event: it counts as undecodable
                records.extend(msg.value or b"" for msg in batches[tp] if msg.offset < end)
            for partition in list(self._pending):
                tp = TopicPartition(self.topic, partition)
                if await consumer.position(tp) >= self._ends[partition]:
                    self._pending.discard(partition)
                    consumer.pause(tp)
            if records:
                return records
            if loop.time() > deadline:
                raise TimeoutError(
                    f"no records from {self.topic} partitions {sorted(self._pending)} for {self._stall_timeout:.0f}s"
                )
        return []

    async def behind(self, group_id: str) -> int | None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        from gateway.eventlog import kafka_offsets

        if not self._ends:
            return 0
        tps = [TopicPartition(self.topic, p) for p in sorted(self._ends)]
        for attempt in range(1, 4):
            try:  # asks again while the coordinator cannot answer (e.g. none yet on a fresh cluster)
                async with self._admin() as admin:
                    offsets = await kafka_offsets.admin_committed(admin, group_id, tps)
                break
            except KafkaError as e:  # the admin client could not start, or gave up
                if not e.retriable or attempt == 3:
                    log.warning("cannot read the committed offsets of group %s: %s", group_id, e)
                    return None
                await asyncio.sleep(0.3)
        total = 0
        for tp in tps:
            committed = offsets.get(tp, 0)
            total += max(0, self._ends[tp.partition] - max(committed, self._starts[tp.partition]))
        return total

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[Any]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            **self._kafka.client_options(),
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
        )
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()


async def _partitions(admin: Any, topic: str) -> set[int]:
    """The topic's partitions; none when it does not exist (it is not created: a metadata
    request naming it could, on brokers that auto-create topics)."""
    if topic not in set(await admin.list_topics()):
        return set()
    [described] = await admin.describe_topics([topic])
    return {int(p["partition"]) for p in described["partitions"]}


def check_position(settings: Settings, position: str) -> None:
    """Raise :class:`ReplayRangeError` if ``position`` is no position of the configured log (a
    record number on the embedded log, ``partition:offset`` pairs on Kafka): before a replay
    starts, so a service can refuse the request (400) instead of failing in its stream."""
    if settings.kafka_bootstrap_servers:
        _kafka_positions(position)
    else:
        _embedded_position(position)


def _embedded_position(position: str) -> int:
    text = position.strip()
    if not _digits(text) or int(text) < 1:
        raise ReplayRangeError(f"the embedded log's positions are record numbers >= 1, got {text!r}")
    return int(text)


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _kafka_positions(text: str) -> dict[int, int]:
    """``"0:120,2:98"`` -> {0: 120, 2: 98}."""
    positions: dict[int, int] = {}
    for part in text.split(","):
        partition, sep, offset = part.strip().partition(":")
        if not sep or not _digits(partition) or not _digits(offset):
            raise ReplayRangeError(f"Kafka positions are partition:offset pairs (e.g. '0:120,2:98'), got {text!r}")
        if int(partition) in positions:
            raise ReplayRangeError(f"partition {partition} is named twice in {text!r}")
        positions[int(partition)] = int(offset)
    return positions
