"""Events a Kafka-mode gateway left in its spool, taken into the embedded log when the data dir
runs embedded again.

A gateway in Kafka mode answers a call once its events are in its spool (``spool*.sqlite3``),
and forwards them when the broker takes them. Stopped while the broker was down, it leaves them
there; a gateway started on the embedded log in the same data dir never looked at the spool, so
those events, already answered and billed to the clients, were in no store and nothing said so
(a review: 10 calls). The embedded gateway now moves them into its log at start (the log first,
then the spool emptied: a crash between the two leaves an event twice on the log, which every
projection keeps once, by its id), and says so. A spool another process holds (a Kafka-mode
gateway on the same data dir) is left to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from gateway.eventlog.spool_lock import lock_spool
from gateway.eventlog.sqlite import SqliteOutbox, connect

log = logging.getLogger(__name__)

SPOOL_GLOB = "spool*.sqlite3"
SPOOL_TABLE = "spool"


def adopt_spools(log_outbox: SqliteOutbox, data_dir: Path) -> int:
    """Move every unforwarded event of the data dir's spools into ``log_outbox``; how many."""
    moved = 0
    for path in sorted(data_dir.glob(SPOOL_GLOB)):
        try:
            lock = lock_spool(path)
        except OSError:
            log.warning("the Kafka spool %s is in use by another gateway process: left to it", path)
            continue
        try:
            moved += _adopt(log_outbox, path)
        except (sqlite3.Error, OSError) as exc:
            log.error("the Kafka spool %s could not be moved into the embedded log (%s): its events stay", path, exc)
        finally:
            if lock is not None:
                os.close(lock)
    return moved


def _adopt(log_outbox: SqliteOutbox, path: Path) -> int:
    conn = connect(path)
    try:
        known = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SPOOL_TABLE,)).fetchone()
        if known is None:
            return 0
        rows = conn.execute(f"SELECT seq, key, value, ts FROM {SPOOL_TABLE} ORDER BY seq").fetchall()
        if not rows:
            return 0
        log_outbox.append_many([(key, bytes(value), ts) for _, key, value, ts in rows])
        conn.execute(f"DELETE FROM {SPOOL_TABLE} WHERE seq <= ?", (rows[-1][0],))
        log.warning(
            "moved %d usage events that a gateway in Kafka mode left in its spool %s into the embedded log "
            "(answered; not acknowledged by Kafka, or acknowledged just before that gateway stopped: the stores "
            "keep an event once, by its id)",
            len(rows),
            path,
        )
        return len(rows)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
