"""A restarted embedded gateway remembers its providers' health: before it takes calls, the live
view reads the attempts of its last window (``health.window_seconds``) from the embedded log.

Before, a restart forgot every circuit: a gateway restarted (a deploy, a crash loop) during a
provider's outage sent its first calls to the provider again, five failures each time before
the circuit opened. Kafka mode did not forget: its health sync reads the topic from the window's
start (``gateway/health/kafka_sync.py``). The attempts count at the time they happened: a
circuit they opened has the cool-down left that it had.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

from gateway.event_json import UNDECODABLE, decode_event
from gateway.eventlog.base import epoch_ms
from gateway.eventlog.sqlite import connect, ensure_log_table, first_seq_since
from gateway.health.view import HealthView

log = logging.getLogger("gateway.health")

#: how much earlier than the window's start the read begins (records a little out of time order)
SKEW = timedelta(seconds=60)
_CHUNK = 5000


def _first(path: Path, since_ms: int) -> int | None:
    conn = connect(path)
    try:
        ensure_log_table(conn, "events")
        first = first_seq_since(conn, since_ms)
        return None if first is None else first - 1
    finally:
        conn.close()


def _chunk(path: Path, after: int) -> list[tuple[int, object]]:
    """The records after ``after``, at most :data:`_CHUNK` (one read, its own connection: nothing
    is left open in a thread the start's cancellation cannot stop)."""
    conn = connect(path)
    try:
        return conn.execute(
            "SELECT seq, value FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, _CHUNK)
        ).fetchall()
    finally:
        conn.close()


async def recall(view: HealthView, path: Path) -> int:
    """Apply the log's attempts of ``view``'s window to it; how many it counted."""
    began = time.perf_counter()
    since = view.now() - timedelta(seconds=view.config.window_seconds) - SKEW
    counted = unreadable = 0
    try:
        position = await asyncio.to_thread(_first, path, epoch_ms(since))
        while position is not None and (rows := await asyncio.to_thread(_chunk, path, position)):
            position = rows[-1][0]
            for _seq, raw in rows:
                if not isinstance(raw, bytes | str):  # a foreign row (a number): no event
                    unreadable += 1
                    continue
                try:
                    event = decode_event(raw)
                except UNDECODABLE:  # foreign or corrupted: the projector dead-letters it
                    unreadable += 1
                    continue
                counted += view.apply(event)
    except sqlite3.Error as exc:  # the log cannot be read: health starts empty, as before
        log.warning("provider health: cannot read the embedded log (%s): it starts from nothing", exc)
        return counted
    if counted or unreadable:
        log.info(
            "provider health: %d attempts of the last %.0f s read from the log in %.1f s%s",
            counted,
            view.config.window_seconds,
            time.perf_counter() - began,
            f" ({unreadable} unreadable)" if unreadable else "",
        )
    return counted
