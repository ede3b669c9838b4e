"""An in-memory event log (publisher and reader): for tests and for running without persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.eventlog.base import LogOutage, LogRecord, epoch_ms
from gateway.events import UsageEvent


class MemoryEventLog:
    #: a batch lingering for company reads once, at the end (``LogReader``)
    read_while_lingering: float | None = None

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self._changed = asyncio.Event()
        self._committed = 0
        self._cursor = 0
        self._rewind_floor = 0
        #: the last position committed since the rewind (``rewind_done``)
        self._read_again = 0

    # --- publisher ----------------------------------------------------------------------------
    def publish(self, event: UsageEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def stage(self, event: UsageEvent) -> None:
        self.publish(event)

    async def settled(self, callers: int = 1) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self, timeout: float = 5.0) -> None:
        return None

    def pending(self) -> int:
        return 0

    def lost(self) -> int:
        return 0

    def outage(self) -> LogOutage | None:
        return None

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[UsageEvent]:
        """Wait until at least ``count`` events arrived (tests)."""
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.events)

    # --- reader (one group) -----------------------------------------------------------------------
    async def fetch(self, max_records: int, timeout: float) -> list[LogRecord]:
        if self._cursor >= len(self.events):
            self._changed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                return []
        batch = self.events[self._cursor : self._cursor + max_records]
        records = [
            LogRecord(str(self._cursor + i + 1), e.to_json(), e.tenant_id, epoch_ms(e.created_at))
            for i, e in enumerate(batch)
        ]
        self._cursor += len(records)
        return records

    async def commit(self, records: Sequence[LogRecord]) -> None:
        if records:
            self._committed = max(self._committed, int(records[-1].position))
            self._read_again = max(self._read_again, int(records[-1].position))

    async def seek_to_beginning(self) -> None:
        self._cursor = 0
        self._rewind_floor, self._read_again = self._committed, 0

    async def rewind_done(self) -> bool:
        return self._read_again >= self._rewind_floor

    async def end_rewind(self) -> None:
        pass

    async def has_committed(self) -> bool:
        return self._committed > 0

    async def lag(self) -> int:
        return len(self.events) - self._committed
