"""A starting gateway's budget ledger, from the embedded log: the events of the current periods.

The log is in ``seq`` order, which is time order but for clocks stepped back, so the first
record to read is found by bisecting ``seq`` on the record time, an hour early (:data:`SKEW`);
the ledger itself judges each event by its own time. Read in a thread, before the gateway takes
calls: the ledger then has every event of the periods, and the recorder's observer adds each
new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path

from gateway.budgets.ledger import SpendLedger
from gateway.event_json import decode_event
from gateway.eventlog.sqlite import connect, ensure_log_table, epoch_ms

log = logging.getLogger("gateway.budgets")

#: how much earlier than a period's start the read begins (records out of time order)
SKEW = timedelta(hours=1)
_CHUNK = 5000


def first_seq_since(conn: object, since_ms: int) -> int | None:
    """The smallest ``seq`` from which on every record is stamped ``since_ms`` or later, were the
    log in time order (None: an empty log)."""
    execute = conn.execute  # type: ignore[attr-defined]
    low, high = execute("SELECT min(seq), max(seq) FROM events").fetchone()
    if low is None:
        return None
    while low < high:
        middle = (low + high) // 2
        row = execute("SELECT ts FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)).fetchone()
        if row[0] < since_ms:
            low = middle + 1
        else:
            high = middle
    return int(low)


def _read_into(path: Path, since: datetime, ledger: SpendLedger) -> tuple[int, int]:
    if not path.exists():  # no log yet: no call made
        return 0, 0
    conn = connect(path)
    try:
        ensure_log_table(conn, "events")
        seq = first_seq_since(conn, epoch_ms(since - SKEW))
        read = unreadable = 0
        while seq is not None:
            rows = conn.execute(
                "SELECT seq, value FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (seq, _CHUNK)
            ).fetchall()
            if not rows:
                break
            for _seq, value in rows:
                try:
                    event = decode_event(value)
                except ValueError:  # the projector dead-letters it; it counts for nothing here
                    unreadable += 1
                    continue
                ledger.observe_shared(event)
            read += len(rows)
            seq = rows[-1][0] + 1
        return read, unreadable
    finally:
        conn.close()


async def seed_from_log(path: Path, ledger: SpendLedger) -> None:
    """Count the events of every budget's current period that ``path``'s log holds."""
    began = time.perf_counter()
    read, unreadable = await asyncio.to_thread(_read_into, path, ledger.earliest_start(), ledger)
    log.info(
        "budgets: read %d events of the current periods from %s in %.1f s%s",
        read,
        path,
        time.perf_counter() - began,
        f" ({unreadable} unreadable, not counted)" if unreadable else "",
    )
