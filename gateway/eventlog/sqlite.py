"""The embedded event log: a durable append-only log in one SQLite file (the zero-setup default).

``SqliteOutbox`` is the storage both durable adapters share: the embedded log appends events
to it for good, and the Kafka adapter uses one as its spool (rows are deleted once Kafka has
acknowledged them).

Durability: the file is in WAL mode with ``synchronous=NORMAL``. A commit is one ``write()``
of a WAL frame and no ``fsync``: once ``append`` returns the row is in the kernel, so a
``kill -9`` of the process loses nothing (an OS crash or power cut may lose the last commits,
never the file's integrity). ``append`` is synchronous on purpose: the response path must
not answer before the event is safe. It stages its events instead of publishing them one by
one (``group_commit.py``): the events of one loop turn go in one transaction (``append_many``)
and every answer waits for it.

A failing file (a full disk, an I/O error, a lock held past the timeout) never costs an event
its call: the rows it refused are **held in memory**, oldest first, written before any newer
row, and retried by the checkpoint loop every ``interval``; ``pending()`` counts them (the
gateway's ``/healthz`` ``eventsPending``). What a process that dies meanwhile held is lost, so
the holding is bounded (:data:`MAX_HELD_ROWS`); past it, and at close, each event is logged in
full at ERROR, to be recovered by hand.

Checkpoints never run inside ``append``: ``run_checkpoints`` copies the WAL into the database
file from a worker thread (PASSIVE, so writers are never blocked). Under a write load without
pauses a passive checkpoint can never reach the end of the WAL; when the WAL has grown past
``wal_limit_frames`` the last few frames are checkpointed while appends wait, and the next
append starts the WAL over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gateway.eventlog.base import LogOutage, LogRecord, epoch_ms
from gateway.eventlog.group_commit import GroupCommit
from gateway.eventlog.log_errors import one_line
from gateway.events import UsageEvent
from gateway.ids import utcnow

log = logging.getLogger(__name__)

#: (seq, key, value, timestamp in ms since the epoch)
Row = tuple[int, str | None, bytes, int]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
#: rows held in memory while the file refuses them (about 1 KB each); past it, logged and dropped
MAX_HELD_ROWS = 50_000
#: what says "the file cannot take rows now" (a full disk, an I/O error, a lock timeout), not
#: "this row is wrong"
_FILE_FAILURES = (sqlite3.DatabaseError, OSError)  # OperationalError (full, locked) is a DatabaseError


def connect(path: Path, *, autocheckpoint: int | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL, ``synchronous=NORMAL``, usable from any thread
    (callers serialise its use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # keep the WAL file's blocks allocated after a restart: rewriting is cheaper than growing
    conn.execute("PRAGMA journal_size_limit=67108864")
    # deleted spool rows need not be zeroed on disk (some builds turn secure_delete on)
    conn.execute("PRAGMA secure_delete=OFF")
    # 2 MiB of page cache per connection: the log is appended at its end and read just behind
    # it, and the OS caches the file anyway; 16 MiB held about 15 MB more RSS under sustained load
    conn.execute("PRAGMA cache_size=-2048")
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    return conn


async def close_locked(conn: sqlite3.Connection, lock: threading.Lock) -> None:
    """Close ``conn`` once the thread using it under ``lock`` is done. A read runs on in its
    worker thread after its task is cancelled (``asyncio.to_thread`` cannot stop it), and
    closing the connection under that read crashed the interpreter (a segfault in a CI run)."""

    def close() -> None:
        with lock:
            conn.close()

    await asyncio.to_thread(close)


def ensure_log_table(conn: sqlite3.Connection, table: str) -> None:
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"bad table name {table!r}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} "
        "(seq INTEGER PRIMARY KEY, key TEXT, value BLOB NOT NULL, ts INTEGER NOT NULL)"
    )


def first_seq_since(conn: sqlite3.Connection, since_ms: int) -> int | None:
    """The smallest ``seq`` from which on every record is stamped ``since_ms`` or later, were the
    log in time order (None: an empty log)."""
    low, high = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    if low is None:
        return None
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT ts FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)).fetchone()
        if row[0] < since_ms:
            low = middle + 1
        else:
            high = middle
    return int(low)


class SqliteOutbox:
    """An append-only table ``(seq, key, value, ts)`` in a SQLite file.

    ``append`` runs on the caller's thread (the event loop), everything else is meant for a
    worker thread (``asyncio.to_thread``). Each concern has its own connection and lock:
    appends and deletes share the writer, reads never block appends (WAL).
    """

    def __init__(
        self, path: Path, *, table: str = "events", wal_limit_frames: int = 16384, count_rows: bool = True
    ) -> None:
        self.path = path
        self.table = table
        self._wal_limit = wal_limit_frames
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._writer = connect(path)
        ensure_log_table(self._writer, table)
        self._reader = connect(path)
        self._checkpointer = connect(path)
        self._insert = f"INSERT INTO {table} (key, value, ts) VALUES (?, ?, ?)"
        self._select = f"SELECT seq, key, value, ts FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?"
        # a spool is small; the embedded log grows for good and does not need its size
        self._count = int(self._writer.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) if count_rows else 0
        self._closed = False
        #: rows the file refused (see the module docstring), oldest first; guarded by _held_lock,
        #: which is taken before _write_lock
        self._held: list[tuple[str | None, bytes, int]] = []
        #: held rows the file still refused when it closed: logged in full, not on the log
        self.lost = 0
        #: why rows are held, since when (None: none are)
        self.refusal: LogOutage | None = None
        self._held_lock = threading.Lock()

    # --- writer side (event loop) ---------------------------------------------------------------
    def append(self, key: str | None, value: bytes, ts_ms: int) -> None:
        """Durable (against a process crash) when it returns."""
        with self._write_lock:
            self._writer.execute(self._insert, (key, value, ts_ms))
            self._count += 1

    def append_many(self, rows: Sequence[tuple[str | None, bytes, int]]) -> None:
        """``append`` for several rows, in one transaction: all of them or none."""
        if len(rows) == 1:
            self.append(*rows[0])
            return
        with self._write_lock:
            self._writer.execute("BEGIN")
            try:
                self._writer.executemany(self._insert, rows)
                self._writer.execute("COMMIT")
            except BaseException:
                # some failures (a full disk, an I/O error) end the transaction themselves
                with contextlib.suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
                raise
            self._count += len(rows)

    def append_rows(self, rows: Sequence[tuple[str | None, bytes, int]]) -> int:
        """Append ``rows`` in one transaction (if that fails, row by row, in order, as far as the
        file takes them); returns how many are on the file. What the file refuses is held (the
        module docstring); while rows are held, new ones join them without a write (oldest
        first: the checkpoint loop writes them all once the file takes them)."""
        with self._held_lock:
            if self._held:
                self._hold(rows)
                return 0
            try:
                self.append_many(rows)
                return len(rows)
            except _FILE_FAILURES as exc:
                if len(rows) > 1:
                    log.warning("appending %d usage events in one transaction failed; appending one by one", len(rows))
                written = self._append_while_taken(rows)
                if written < len(rows):
                    log.error("%s refuses usage events (%s): holding them in memory", self.path, exc)
                    self.refusal = LogOutage(f"{self.path} refuses writes: {one_line(exc)}", utcnow())
                    self._hold(rows[written:])
                return written

    def _append_while_taken(self, rows: Sequence[tuple[str | None, bytes, int]]) -> int:
        for written, row in enumerate(rows):
            try:
                self.append(*row)
            except _FILE_FAILURES:
                return written
        return len(rows)

    def _hold(self, rows: Sequence[tuple[str | None, bytes, int]]) -> None:
        room = max(0, MAX_HELD_ROWS - len(self._held))
        self._held.extend(rows[:room])
        for _key, value, _ts in rows[room:]:
            log.error("usage event NOT stored in %s (%d held already): %s", self.path, MAX_HELD_ROWS, value.decode())
        self.lost += len(rows[room:])  # the stop counts them too (a re-test found them left out)

    def retry_held(self) -> int:
        """Write the held rows if the file takes them now; how many it took."""
        with self._held_lock:
            if not self._held:
                return 0
            try:
                self.append_many(self._held)
            except _FILE_FAILURES:
                return 0
            written, self._held = len(self._held), []
            self.refusal = None
        log.info("%d usage events held back by a failing %s are on it now", written, self.path)
        return written

    def held(self) -> int:
        """Rows held in memory, not on the file yet."""
        return len(self._held)

    def count(self) -> int:
        """Rows in the table (kept in memory: rows found at open, if counted, plus this process's
        appends minus its deletes)."""
        return self._count

    # --- worker-thread side -----------------------------------------------------------------------
    def read_after(self, seq: int, limit: int) -> list[Row]:
        with self._read_lock:
            return self._reader.execute(self._select, (seq, limit)).fetchall()

    def delete_range(self, first: int, last: int, *, chunk: int = 1000) -> int:
        """Delete rows ``first <= seq <= last``, ``chunk`` seqs per transaction (appends wait
        for at most one chunk); returns how many were deleted."""
        deleted = 0
        for low in range(first, last + 1, chunk):
            with self._write_lock:
                count = self._writer.execute(
                    f"DELETE FROM {self.table} WHERE seq BETWEEN ? AND ?", (low, min(low + chunk - 1, last))
                ).rowcount
                self._count -= count
            deleted += count
        return deleted

    def delete(self, seqs: Iterable[int]) -> int:
        with self._write_lock:
            cursor = self._writer.executemany(f"DELETE FROM {self.table} WHERE seq = ?", ((s,) for s in seqs))
            self._count -= cursor.rowcount
        return int(cursor.rowcount)

    def checkpoint(self) -> None:
        with self._checkpoint_lock:
            if self._closed:
                return
            _busy, wal_frames, _done = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if wal_frames >= self._wal_limit:
                # appends wait while the frames written since the passive pass are copied
                with self._write_lock:
                    self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    async def run_checkpoints(self, interval: float = 0.5, on_written: Callable[[], None] | None = None) -> None:
        """Checkpoint from a worker thread every ``interval`` seconds until cancelled, and write
        the rows held back by a failing file once it takes them (then ``on_written()``, on the
        event loop)."""
        with self._write_lock:
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
        warned_at, failures = -math.inf, 0
        try:
            while True:
                await asyncio.sleep(interval)
                if self._held:
                    written = await asyncio.to_thread(self.retry_held)
                    if written and on_written is not None:
                        on_written()
                try:
                    await asyncio.to_thread(self.checkpoint)
                    failures = 0
                except _FILE_FAILURES as exc:  # a full disk: the loop must live on to write the held rows
                    failures += 1
                    # once a minute: every 0.5 s made 7,200 lines an hour of a disk that stays full
                    if time.monotonic() - warned_at >= 60:
                        warned_at = time.monotonic()
                        log.warning(
                            "checkpointing %s failed (%s), %d time(s) in a row; trying again every %gs",
                            self.path,
                            exc,
                            failures,
                            interval,
                        )
        finally:
            with self._write_lock:
                if not self._closed:
                    self._writer.execute("PRAGMA wal_autocheckpoint=1000")

    def close(self, retry_for: float = 0.0) -> None:
        """Write the held rows if the file takes them within ``retry_for`` seconds (else log each
        in full and count it ``lost``), checkpoint what is left and close the connections
        (idempotent). A stop on a full disk gave up on the first try: a review's SIGTERM lost
        the events of 315 answered calls, and said they were on the log."""
        deadline = time.monotonic() + retry_for
        while not self._closed and self._held and not self.retry_held():
            if time.monotonic() >= deadline:
                with self._held_lock:
                    # what fits one by one (room for some: all or nothing lost them all, a re-test)
                    self._held = self._held[self._append_while_taken(self._held) :]
                    for _key, value, _ts in self._held:
                        log.error(
                            "usage event NOT stored in %s (closing while it refuses it): %s", self.path, value.decode()
                        )
                    self.lost += len(self._held)
                    self._held = []
                break
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))
        with self._checkpoint_lock, self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            for conn in (self._checkpointer, self._reader, self._writer):
                conn.close()

    @property
    def closed(self) -> bool:
        return self._closed


def refused_after_close(outbox: SqliteOutbox, *events: UsageEvent) -> bool:
    """True (after logging each event in full, so it can be recovered by hand) when ``outbox``
    is closed."""
    if not outbox.closed:
        return False
    for event in events:
        log.error("usage event %s published after close, NOT stored: %s", event.event_id, event.model_dump_json())
    return True


def _row(outbox: SqliteOutbox, event: UsageEvent) -> tuple[str | None, bytes, int] | None:
    """The event as a log row; None (logged in full at ERROR) for an event that can never be
    written (this event, not the file)."""
    try:
        return (event.tenant_id, event.to_json(), epoch_ms(event.created_at))
    except (ValueError, TypeError, OverflowError):
        log.exception("usage event %s NOT stored in %s: %r", event.event_id, outbox.path, event)
        return None


def append_event(outbox: SqliteOutbox, event: UsageEvent) -> bool:
    """Append one event; never raises (the response path calls it). True once it is on the
    file; False if the file refused it (held in memory, see the module docstring) or the event
    cannot be written at all (logged in full at ERROR)."""
    row = _row(outbox, event)
    return row is not None and outbox.append_rows((row,)) == 1


def append_events(outbox: SqliteOutbox, events: Sequence[UsageEvent]) -> int:
    """Append ``events`` in one transaction; never raises. Returns how many are on the file now
    (0 while the file refuses them: they are held)."""
    rows = [row for event in events if (row := _row(outbox, event)) is not None]
    return outbox.append_rows(rows) if rows else 0


class SqliteEventLog:
    """``EventLog`` over a SQLite file: an event is on the durable log when ``publish`` returns,
    or, staged, when ``settled`` returns (``group_commit.py``)."""

    def __init__(self, path: Path, *, checkpoint_interval: float = 0.5) -> None:
        self._outbox = SqliteOutbox(path, table="events", count_rows=False)
        self._checkpoint_interval = checkpoint_interval
        self._checkpoints: asyncio.Task[None] | None = None
        self._staged = GroupCommit(self._write)

    @property
    def path(self) -> Path:
        return self._outbox.path

    def publish(self, event: UsageEvent) -> None:
        if not refused_after_close(self._outbox, event):
            append_event(self._outbox, event)

    def stage(self, event: UsageEvent) -> None:
        if not refused_after_close(self._outbox, event):
            self._staged.stage(event)

    async def settled(self, callers: int = 1) -> None:
        await self._staged.settled(callers)

    def _write(self, events: list[UsageEvent]) -> None:
        if not refused_after_close(self._outbox, *events):
            append_events(self._outbox, events)

    async def start(self) -> None:
        if self._checkpoints is None:
            from gateway.eventlog.spool_adoption import adopt_spools

            await asyncio.to_thread(adopt_spools, self._outbox, self.path.parent)
            self._checkpoints = asyncio.create_task(
                self._outbox.run_checkpoints(self._checkpoint_interval), name="eventlog-checkpoints"
            )

    async def close(self, timeout: float = 5.0) -> None:
        self._staged.flush()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        await asyncio.to_thread(self._outbox.close, timeout)

    def pending(self) -> int:
        # the file is the log: only staged events wait, and those a failing file refused (held)
        return self._staged.staged() + self._outbox.held()

    def lost(self) -> int:
        return self._outbox.lost

    def outage(self) -> LogOutage | None:
        return self._outbox.refusal


class SqliteLogReader:
    """``LogReader`` over the embedded log. The group's position (the last committed ``seq``)
    is kept in the table ``positions(group_id, position)`` of the same file.

    One reader per group: the embedded log has a single partition, so two readers of one
    group would both read everything.
    """

    #: a batch lingering for company reads the file once, at the end: each read is a query
    read_while_lingering: float | None = None

    def __init__(
        self, path: Path, group_id: str, *, poll_interval: float = 0.02, max_poll_interval: float = 0.25
    ) -> None:
        """The log is polled every ``poll_interval`` seconds while records keep coming; each
        empty poll doubles the wait, up to ``max_poll_interval``, so an idle reader costs a few
        polls a second instead of fifty (measured: an idle embedded gateway used 30 ms of CPU a
        second on 20 ms polls)."""
        self.path = path
        self.group_id = group_id
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._wait = poll_interval
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._cursor = 0
        #: the group's position when the reader was rewound (``rewind_done``), and whether it is
        #: reading the log again (its commits below that position are not stored)
        self._rewind_floor = 0
        self._rewinding = False
        #: the last position applied (committed) since the rewind
        self._read_again = 0

    async def start(self) -> None:
        if self._conn is None:
            self._conn = await asyncio.to_thread(self._open)
            self._cursor = await asyncio.to_thread(self._committed)

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path)
        ensure_log_table(conn, "events")
        conn.execute("CREATE TABLE IF NOT EXISTS positions (group_id TEXT PRIMARY KEY, position INTEGER NOT NULL)")
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await close_locked(conn, self._lock)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteLogReader is not started")
        return self._conn

    def _read(self, after: int, limit: int) -> list[Row]:
        with self._lock:
            return (
                self._db()
                .execute(
                    "SELECT seq, key, value, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                )
                .fetchall()
            )

    def _committed(self) -> int:
        with self._lock:
            row = self._db().execute("SELECT position FROM positions WHERE group_id = ?", (self.group_id,)).fetchone()
        return int(row[0]) if row else 0

    async def fetch(self, max_records: int, timeout: float) -> list[LogRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rows = await asyncio.to_thread(self._read, self._cursor, max_records)
            if rows:
                self._cursor = rows[-1][0]
                self._wait = self._poll_interval
                return [LogRecord(str(seq), value, key, ts) for seq, key, value, ts in rows]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(self._wait, remaining))
            self._wait = min(self._wait * 2, self._max_poll_interval)

    async def commit(self, records: Sequence[LogRecord]) -> None:
        """Store the group's position: just after the last of ``records``."""
        if records:
            position = max(int(r.position) for r in records)
            if self._rewinding:
                self._read_again = max(self._read_again, position)
                if position <= self._rewind_floor:
                    return  # read again during a catch-up: the group's position does not move back
            await asyncio.to_thread(self._store, position)

    def _store(self, position: int) -> None:
        with self._lock:
            self._db().execute(
                "INSERT INTO positions (group_id, position) VALUES (?, ?) "
                "ON CONFLICT (group_id) DO UPDATE SET position = excluded.position",
                (self.group_id, position),
            )

    async def seek_to_beginning(self) -> None:
        self._cursor = 0
        self._rewind_floor = await asyncio.to_thread(self._committed)
        self._rewinding, self._read_again = True, 0

    async def rewind_done(self) -> bool:
        return self._read_again >= self._rewind_floor

    async def end_rewind(self) -> None:
        self._rewinding = False

    async def has_committed(self) -> bool:
        return await asyncio.to_thread(self._committed) > 0

    async def last_committed(self, count: int) -> list[bytes]:
        """The values of the group's last ``count`` committed records, the last first, but those
        the projector dead-lettered (for a store to tell whether it holds what the group's
        position says was projected)."""
        from gateway.eventlog.deadletter import dead_letter_id  # it imports this module

        def read() -> list[bytes]:
            position = self._committed()
            with self._lock:
                db = self._db()
                rows = db.execute(
                    "SELECT seq, value FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT ?", (position, count)
                ).fetchall()
                ids = {dead_letter_id(bytes(value), str(seq)): bytes(value) for seq, value in rows}
                if ids and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'").fetchone():
                    marks = ",".join("?" * len(ids))
                    for (dead,) in db.execute(f"SELECT id FROM dead_letters WHERE id IN ({marks})", list(ids)):
                        del ids[dead]
            return list(ids.values())

        return await asyncio.to_thread(read)

    async def lag(self) -> int:
        def compute() -> int:
            with self._lock:
                (last,) = self._db().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            return int(last) - self._committed()

        return await asyncio.to_thread(compute)
