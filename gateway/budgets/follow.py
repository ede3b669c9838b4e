"""The budget ledger follows the embedded log: at the start, from its snapshot's position (or
from the earliest current period's start, found by bisecting ``seq`` on the record time, an hour
early for records out of time order: :data:`SKEW`) to the end, before the gateway takes calls;
then every new record, a few times a second. The records are this process's own attempts,
counted already when they were recorded: known by their ids, they only move the position that
a snapshot keeps.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from gateway.budgets.ledger import SpendLedger
from gateway.budgets.snapshot import Snapshot
from gateway.event_json import event_id_of
from gateway.eventlog.base import epoch_ms
from gateway.eventlog.retention import latest_cut
from gateway.eventlog.sqlite import close_locked, connect, ensure_log_table, first_seq_since
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.budgets")

#: how much earlier than a period's start the read begins (records out of time order)
SKEW = timedelta(hours=1)
LOG_NAME = "sqlite"
_CHUNK = 5000


class SqliteBudgetFollower:
    def __init__(self, path: Path, ledger: SpendLedger, *, poll_interval: float = 0.2) -> None:
        self.path = path
        self.ledger = ledger
        self.poll_interval = poll_interval
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        #: the last ``seq`` applied, and its event's id (what a snapshot is checked by)
        self.position = 0
        self.last_id: str | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
            ensure_log_table(self._conn, "events")
        return self._conn

    def _start(self, snapshot: Snapshot | None) -> bool:
        """Place the position: at ``snapshot``'s when the log still holds its event there (True),
        else before the earliest current period's first record."""
        with self._lock:
            return self._start_locked(snapshot)

    def _start_locked(self, snapshot: Snapshot | None) -> bool:
        conn = self._db()
        if snapshot is not None and 0 in snapshot.checks and 0 in snapshot.positions:
            seq, check = snapshot.positions[0], snapshot.checks[0]
            row = conn.execute("SELECT value FROM events WHERE seq = ?", (seq,)).fetchone()
            if row is not None and event_id_of(row[0]) == check:
                self.position, self.last_id = seq, check
                return True
            log.info("budgets: the snapshot's position is not on this log: the current periods are read from it")
        since = self.ledger.earliest_start()
        first = first_seq_since(conn, epoch_ms(since - SKEW))
        self.position = 0 if first is None else first - 1
        cut = latest_cut(conn)
        if cut is not None and cut > epoch_ms(since):
            # records deleted by a retention shorter than the period (an earlier configuration's)
            log.warning(
                "budgets: the log's retention deleted its records before %s, after the current periods' start "
                "%s: what was spent before then is not counted",
                datetime.fromtimestamp(cut / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        return False

    def _read(self) -> list[tuple[int, bytes]]:
        with self._lock:
            return (
                self._db()
                .execute("SELECT seq, value FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (self.position, _CHUNK))
                .fetchall()
            )

    def _apply(self, rows: list[tuple[int, bytes]]) -> None:
        observe = self.ledger.observe_record
        for _seq, value in rows:
            observe(value)
        self.position = rows[-1][0]
        self.last_id = event_id_of(rows[-1][1])

    async def catch_up(self, snapshot: Snapshot | None) -> None:
        """Read the log to its end (from ``snapshot`` when it fits), then the ledger is complete."""
        began = time.perf_counter()
        resumed = await asyncio.to_thread(self._start, snapshot)
        if resumed:
            assert snapshot is not None
            self.ledger.restore(snapshot.spent, snapshot.recent)
        before = self.position
        await self.drain()
        read = self.position - before
        self.ledger.complete = True
        log.info(
            "budgets: read %d events of the log in %.1f s (from %s)%s",
            read,
            time.perf_counter() - began,
            "the snapshot's position" if resumed else "the current periods' start",
            f"; {self.ledger.unreadable} unreadable, not counted" if self.ledger.unreadable else "",
        )

    async def drain(self) -> None:
        """Read what the log holds now (at a stop: the snapshot then starts the next run at its end)."""
        while rows := await asyncio.to_thread(self._read):
            self._apply(rows)

    async def run(self) -> None:
        """Follow the log's new records until cancelled."""
        failures = WindowedLog(log, lambda _key, count, seconds: f"budgets: {count} more failed reads of the log")
        while True:
            try:
                rows = await asyncio.to_thread(self._read)
            except sqlite3.Error as exc:  # the gateway's log write fails the same way: it says so
                failures.hit("read", partial("budgets cannot read the embedded log ({}); retrying{}".format, exc))
                rows = []
            if rows:
                self._apply(rows)
            else:
                await asyncio.sleep(self.poll_interval)

    def moved(self) -> object:
        """What changes when the follower reads on (a snapshot is written only then)."""
        return self.position

    def snapshot(self) -> Snapshot:
        checks = {0: self.last_id} if self.last_id is not None else {}
        return Snapshot(LOG_NAME, {0: self.position}, self.ledger.confirmed(), checks, self.ledger.recent_ids())

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await close_locked(conn, self._lock)
