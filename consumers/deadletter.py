"""Dead-letter stores the projector can use: the DuckDB ``dead_letters`` table (embedded mode),
an in-memory list (tests, runs without persistence), and an adapter over the event log's own
dead-letter adapters (Kafka ``<topic>.dlq``, the embedded log's SQLite table).

The DuckDB and in-memory stores keep a record once per ``(position, raw)``: a record
dead-lettered again after a redelivery or a replay is not duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from analytics.store import AnalyticsStore
from consumers.sinks.base import SinkError
from gateway.eventlog.deadletter import DeadLetterStore, dead_letter_id
from gateway.ids import Clock, utcnow


class DuckDBDeadLetters:
    """Dead letters in the analytics store's ``dead_letters`` table (the store is borrowed)."""

    name = "duckdb-dead-letters"

    def __init__(self, store: AnalyticsStore, *, clock: Clock = utcnow) -> None:
        self._store = store
        self._clock = clock

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        params = [dead_letter_id(raw, position), position, reason, raw, self._clock()]
        try:
            await self._store.run(
                lambda conn: conn.execute(
                    "INSERT INTO dead_letters (id, position, reason, raw, dead_lettered_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    params,
                )
            )
        except duckdb.Error as e:
            raise SinkError(self.name, str(e)) from e

    async def count(self) -> int:
        rows = await self._store.fetchall("SELECT count(*) FROM dead_letters")
        return int(rows[0][0])


class LogDeadLetters:
    """The projector's dead-letter port over one of the event log's dead-letter stores (a Kafka
    topic ``<topic>.dlq``, the embedded log's SQLite table). Their failures (broker down, ...)
    become ``SinkError``: the projector pauses and retries."""

    name = "log-dead-letters"

    def __init__(self, target: DeadLetterStore) -> None:
        self._target = target

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        try:
            await self._target.dead_letter(raw, reason, position)
        except SinkError:
            raise
        except Exception as e:
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e


@dataclass(frozen=True, slots=True)
class DeadLetter:
    raw: bytes
    reason: str
    position: str


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.letters: dict[str, DeadLetter] = {}

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None:
        self.letters.setdefault(dead_letter_id(raw, position), DeadLetter(raw, reason, position))

    def __len__(self) -> int:
        return len(self.letters)
