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
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path

from gateway.event_json import decode_event
from gateway.eventlog.sqlite import connect, ensure_log_table, epoch_ms, first_seq_since
from gateway.health.view import HealthView

log = logging.getLogger("gateway.health")

#: how much earlier than the window's start the read begins (records a little out of time order)
SKEW = timedelta(seconds=60)
_CHUNK = 5000


def _chunks(path: Path, since_ms: int) -> Generator[list[bytes], None, None]:
    conn = connect(path)
    try:
        ensure_log_table(conn, "events")
        first = first_seq_since(conn, since_ms)
        if first is None:
            return
        position = first - 1
        while rows := conn.execute(
            "SELECT seq, value FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (position, _CHUNK)
        ).fetchall():
            position = rows[-1][0]
            yield [bytes(value) for _seq, value in rows]
    finally:
        conn.close()


async def recall(view: HealthView, path: Path) -> int:
    """Apply the log's attempts of ``view``'s window to it; how many it counted."""
    began = time.perf_counter()
    since = view.now() - timedelta(seconds=view.config.window_seconds) - SKEW
    chunks = _chunks(path, epoch_ms(since))
    counted = unreadable = 0
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            for raw in chunk:
                try:
                    event = decode_event(raw)
                except ValueError:  # a foreign or corrupted record: the projector dead-letters it
                    unreadable += 1
                    continue
                counted += view.apply(event)
    except sqlite3.Error as exc:  # the log cannot be read: health starts empty, as before
        log.warning("provider health: cannot read the embedded log (%s): it starts from nothing", exc)
        return counted
    finally:
        chunks.close()
    if counted or unreadable:
        log.info(
            "provider health: %d attempts of the last %.0f s read from the log in %.1f s%s",
            counted,
            view.config.window_seconds,
            time.perf_counter() - began,
            f" ({unreadable} unreadable)" if unreadable else "",
        )
    return counted
