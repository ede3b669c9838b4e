"""``llm-gateway export-log``: the embedded log's events onto the Kafka topic, for a data dir moving
to Kafka mode.

The embedded log (``events.sqlite3``) is the history's source of truth until the gateway moves to
Kafka; after that, a replay reads the topic alone, so the history made before the move could not
be re-costed, and ``replay --full`` refused to rebuild stores holding it (a review of mode
switches). This command forwards every record of the embedded log, as it is (key, value, time),
through the gateway's own Kafka path (a spool of its own, ``export-spool.sqlite3``, acks=all, in
order, waiting out a broker outage), and notes in the embedded log how far it got for that
topic, so running it again (after the embedded gateway took more calls, or after a Ctrl-C) sends
only what follows. A record may go twice only when the command is stopped between a batch's
sending and its note: every projection keeps an event once, by its id.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from gateway.settings import Settings

log = logging.getLogger(__name__)

EXPORT_SPOOL = "export-spool.sqlite3"
BATCH = 10_000
MARKS = "exports"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export-log",
        help="put the embedded log's events on the Kafka topic (a data dir moving to Kafka mode)",
        description="Forward the embedded log's events (events.sqlite3 in the data dir) to the Kafka topic "
        "(KAFKA_BOOTSTRAP_SERVERS, LLM_GATEWAY_TOPIC); run again, it sends only what came after.",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the broker (600)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.eventlog.factory import embedded_log_path

    if not settings.kafka_bootstrap_servers:
        print("export-log: set KAFKA_BOOTSTRAP_SERVERS (the topic's brokers)", file=sys.stderr)
        return 2
    path = embedded_log_path(settings)
    if not path.is_file():
        print(f"export-log: no embedded log at {path}: is LLM_GATEWAY_DATA_DIR its data dir?", file=sys.stderr)
        return 1
    try:
        sent, total = asyncio.run(export(settings, path, args.timeout))
    except (TimeoutError, OSError, sqlite3.Error) as exc:
        print(f"export-log: {exc} (what was sent is noted: run it again to go on)", file=sys.stderr)
        return 1
    print(f"exported {sent} events of {total} on the embedded log to {settings.topic}")
    return 0


async def export(settings: Settings, path: Path, timeout: float) -> tuple[int, int]:
    """Forward the records after this topic's mark; returns (sent now, records on the log)."""
    from gateway.eventlog.kafka_producer import KafkaEventLog

    assert settings.kafka_bootstrap_servers is not None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKS} (topic TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)")
    row = conn.execute(f"SELECT last_seq FROM {MARKS} WHERE topic = ?", (settings.topic,)).fetchone()
    after = int(row[0]) if row else 0
    (total,) = conn.execute("SELECT count(*) FROM events").fetchone()
    target = KafkaEventLog(
        settings.kafka_bootstrap_servers,
        settings.topic,
        Path(settings.data_dir) / EXPORT_SPOOL,
        partitions=settings.topic_partitions,
        client_id="llm-gateway-export",
    )
    sent = 0
    await target.start()
    try:
        while rows := conn.execute(
            "SELECT seq, key, value, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, BATCH)
        ).fetchall():
            target.spool_records([(key, bytes(value), ts) for _, key, value, ts in rows])
            deadline = time.monotonic() + timeout
            while target.pending():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Kafka at {settings.kafka_bootstrap_servers} took no events for {timeout:g} s")
                await asyncio.sleep(0.05)
            after = rows[-1][0]
            conn.execute(
                f"INSERT INTO {MARKS} (topic, last_seq) VALUES (?, ?) "
                "ON CONFLICT (topic) DO UPDATE SET last_seq = excluded.last_seq",
                (settings.topic, after),
            )
            sent += len(rows)
            print(f"export-log: {sent} sent, up to record {after}", file=sys.stderr)
    finally:
        await target.close()
        conn.close()
    return sent, int(total)
