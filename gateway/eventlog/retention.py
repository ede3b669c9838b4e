"""Retention of the embedded log (``log_retention_days``): the process that projects it (``serve``,
or ``consume`` beside ``serve --no-project``) deletes, at its start and once an hour, the events
older than that many days that every reader of the log has projected, while its stores are
neither catching up with the log nor being rebuilt.

A gateway at 100 calls a second appends about 9 million events a day to ``events.sqlite3``,
which nothing trimmed: the disk filled. Off by default (the log is the history ``replay``
rebuilds the stores from); once on, the stores keep the history the log no longer holds, and
``replay --full``, which would lose it, refuses (``replay --since`` re-projects what is left).

What goes: records stamped before the cut (``ts``, the event's time) and before the lowest
position of the ``positions`` table (every group that reads the log: the projector of
``serve``, ``consume``'s), so no event leaves the log before it is in the stores. A group that
stopped for good holds every record after its position: each hour's run says how many it holds
back. The rows go
in small transactions, so the gateway's appends never wait long for one; SQLite reuses the pages
they free (the file does not shrink: ``VACUUM`` it offline for that).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aiohttp import web

from gateway.eventlog.base import epoch_ms
from gateway.eventlog.sqlite import connect, ensure_log_table, first_seq_since

log = logging.getLogger("gateway.eventlog")

#: how often the log is trimmed (seconds), the first time at the start
TRIM_EVERY = 3600.0
#: rows deleted in one transaction (a few milliseconds of the writer's lock)
CHUNK = 2000
#: seconds before the next try when the stores were catching up or being rebuilt
NOT_STEADY_RETRY = 60.0


@dataclass(frozen=True, slots=True)
class Trimmed:
    #: records deleted
    deleted: int
    #: the lowest reader's position (None: no reader has committed one: nothing is projected)
    floor: int | None
    #: records older than the cut that wait for a reader (past ``floor``)
    held: int
    #: the reader at ``floor``, and where (for the log line)
    holder: str | None = None


def _bounds(conn: sqlite3.Connection, before_ms: int) -> tuple[int, tuple[int, str] | None]:
    """(the last ``seq`` up to which every record is stamped before the cut, 0 for none; the
    lowest reader's position and group)."""
    first_new = first_seq_since(conn, before_ms)
    if first_new is None:
        return 0, None
    (ts,) = conn.execute("SELECT ts FROM events WHERE seq = ?", (first_new,)).fetchone()
    by_time = first_new if ts < before_ms else first_new - 1  # every record old: the last one too
    # the bisection supposes the log in time order: a record stamped after the cut below it
    # (a clock stepped back, an adopted spool) ends the range there (one stamped 400 days ago
    # in the middle of the log took 599 newer ones with it: a review)
    (newer,) = conn.execute("SELECT min(seq) FROM events WHERE seq <= ? AND ts >= ?", (by_time, before_ms)).fetchone()
    if newer is not None:
        by_time = int(newer) - 1
    try:
        row = conn.execute("SELECT position, group_id FROM positions ORDER BY position LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # no reader ever committed: nothing is projected
        return by_time, None
    return by_time, None if row is None else (int(row[0]), str(row[1]))


#: the table noting the latest cut a trim deleted records before (what a reader of the log, such
#: as the budgets', no longer finds)
CUT_TABLE = "retention_cut"


def _note_cut(conn: sqlite3.Connection, cut_ms: int) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {CUT_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), cut_ms INTEGER)")
    conn.execute(
        f"INSERT INTO {CUT_TABLE} (id, cut_ms) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET cut_ms = max(cut_ms, excluded.cut_ms)",
        (cut_ms,),
    )


def latest_cut(conn: sqlite3.Connection) -> int | None:
    """The latest cut a trim deleted records before (epoch ms; None: the log was never trimmed)."""
    try:
        row = conn.execute(f"SELECT cut_ms FROM {CUT_TABLE} WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # no such table: never trimmed
        return None
    return None if row is None else int(row[0])


def trim(path: Path, before: datetime, *, stopped: Callable[[], bool] = lambda: False) -> Trimmed:
    """Delete the records of ``path`` older than ``before`` that every reader has projected, a
    :data:`CHUNK` a transaction, until done or ``stopped()``."""
    conn = connect(path)
    try:
        ensure_log_table(conn, "events")
        by_time, lowest = _bounds(conn, epoch_ms(before))
        floor = None if lowest is None else lowest[0]
        # the record at a reader's position stays: the start checks the stores against it
        last = 0 if floor is None else min(by_time, floor - 1)
        # older than the cut and not projected yet (the record at the position is, and stays)
        unprojected = 0 if floor is None else floor
        held = conn.execute(
            "SELECT count(*) FROM events WHERE seq > ? AND seq <= ?", (unprojected, by_time)
        ).fetchone()[0]
        (low,) = conn.execute("SELECT min(seq) FROM events").fetchone()
        deleted = 0
        if low is not None and low <= last:
            _note_cut(conn, epoch_ms(before))
        while low is not None and low <= last and not stopped():
            high = min(low + CHUNK - 1, last)
            began = time.perf_counter()
            deleted += conn.execute("DELETE FROM events WHERE seq >= ? AND seq <= ?", (low, high)).rowcount
            low = high + 1
            # as long again idle: the gateway's appends take the writer's lock in between, and the
            # calls keep most of the CPU (a review's 2,000,000-row trim under load: 40% fewer
            # calls a second while it ran with a 1 ms pause)
            time.sleep(max(0.001, time.perf_counter() - began))
        if low is not None and low <= last:  # a stop: its task no longer waits to log it
            log.info("log retention: stopped after deleting %d events (the rest at the next start)", deleted)
        holder = None if lowest is None else f"{lowest[1]} at seq {lowest[0]}"
        return Trimmed(deleted, floor, int(held), holder)
    finally:
        conn.close()


def retention_plugin(
    path: Path,
    days: int,
    clock: Callable[[], datetime],
    *,
    steady: Callable[[], Awaitable[bool]],
    lock: asyncio.Lock,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` of the process that projects the log (after its projector has started):
    trims ``path`` at the start and every :data:`TRIM_EVERY` seconds, holding ``lock`` (the
    replays'), and only while ``steady()`` says its stores are neither catching up with the log
    nor being rebuilt (a store that reads the log again needs all of it: a review's removed
    ``analytics.duckdb`` got 69 of its 400 events back, the start's trim had taken the rest)."""
    stop = threading.Event()

    async def once() -> bool:
        cut = clock() - timedelta(days=days)
        async with lock:
            if not await steady():
                return False
            began = time.perf_counter()
            done = await asyncio.to_thread(trim, path, cut, stopped=stop.is_set)
        if done.deleted:
            log.info(
                "log retention: %d events before %s deleted in %.1f s",
                done.deleted,
                cut.strftime("%Y-%m-%dT%H:%M:%SZ"),
                time.perf_counter() - began,
            )
        if done.held:
            log.info(
                "log retention: %d events before %s are kept until every reader has projected them "
                "(the lowest position: %s)",
                done.held,
                cut.strftime("%Y-%m-%dT%H:%M:%SZ"),
                done.holder or "none: no reader has projected the log",
            )
        return True

    async def run() -> None:
        while True:
            try:
                trimmed = await once()
            except sqlite3.Error as exc:  # a full disk, a lock held too long: the next hour tries again
                log.warning("log retention: cannot trim %s (%s); trying again in an hour", path, exc)
                trimmed = True
            if not trimmed:
                log.info("log retention: the stores are catching up with the log or being rebuilt: trying again soon")
            await asyncio.sleep(TRIM_EVERY if trimmed else NOT_STEADY_RETRY)

    async def plugin(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name="log-retention")
        try:
            yield
        finally:
            stop.set()  # a trim in its thread ends after its current chunk
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    return plugin
