"""``llm-gateway export-log``: the embedded log's events onto the Kafka topic, for a data dir moving
to Kafka mode.

The embedded log (``events.sqlite3``) is the history's source of truth until the gateway moves to
Kafka; after that, a replay reads the topic alone, so the history made before the move could not
be re-costed, and ``replay --full`` refused to rebuild stores holding it (a review of mode
switches). This command sends every record of the embedded log as it is (key, value, time) to
the topic, batch by batch, with the gateway's producer settings (acks=all, idempotent, the
gateway's partitioner), and after each batch Kafka acknowledged it notes in the embedded log how
far it got for that cluster and topic: run again (after the embedded gateway took more calls,
after a failure or a stop), it sends only what came after. A batch goes twice only when the
process dies between Kafka's acknowledgement and the note (SIGKILL): the projections keep an
event once, by its id. It refuses a topic that would delete the history (a ``retention.ms`` or
``retention.bytes`` of its own: records keep their times, so old ones went at once while the
command said it had exported them; a review), and one run at a time per data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.eventlog.kafka_connection import KafkaConnection
from gateway.eventlog.log_errors import describe, refuses_user
from gateway.settings import Settings

log = logging.getLogger(__name__)

BATCH = 5_000
MARKS = "kafka_exports"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export-log",
        help="put the embedded log's events on the Kafka topic (a data dir moving to Kafka mode)",
        description="Send the embedded log's events (events.sqlite3 in the data dir) to the Kafka topic "
        "(KAFKA_BOOTSTRAP_SERVERS, LLM_GATEWAY_TOPIC); run again, it sends only what came after.",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the broker (600)")
    parser.add_argument(
        "--from-start", action="store_true", help="send the whole log again (a topic emptied or made again)"
    )
    parser.set_defaults(run=run)


class ExportError(Exception):
    """Nothing more can be sent now; what was sent is noted. ``resumable``: running the command
    again goes on (else the message says what to change first)."""

    def __init__(self, message: str, *, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


@dataclass
class Progress:
    sent: int = 0
    last: int = 0
    before: int = 0  # the note when the run began
    stopped: bool = False
    #: stopped while a batch was in flight: it may have gone in part, and goes again
    unsure: bool = False


def run(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.eventlog.factory import embedded_log_path

    if not settings.kafka_bootstrap_servers:
        print("export-log: set KAFKA_BOOTSTRAP_SERVERS (the topic's brokers)", file=sys.stderr)
        return 2
    path = embedded_log_path(settings)
    problem = _log_problem(path)
    if problem is not None:
        print(f"export-log: {problem}", file=sys.stderr)
        return 1
    progress = Progress()
    try:
        asyncio.run(_main(settings, path, args.timeout, args.from_start, progress))
    except ExportError as exc:
        print(f"export-log: {exc}" + (f"; {_so_far(progress)}" if exc.resumable else ""), file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # the embedded log (locked past 30 s, a full disk): not Kafka's
        print(f"export-log: the embedded log {path}: {exc}; {_so_far(progress)}", file=sys.stderr)
        return 1
    if progress.stopped:
        part = " (the batch in flight may have gone in part: it goes again)" if progress.unsure else ""
        print(f"export-log: stopped{part}; {_so_far(progress)}", file=sys.stderr)
        return 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (total,) = conn.execute("SELECT count(*) FROM events").fetchone()
    again = f" (up to record {progress.before} sent before; --from-start sends them again)" if progress.before else ""
    print(f"exported {progress.sent} events to {settings.topic}{again}; the log holds {total}")
    return 0


def _so_far(progress: Progress) -> str:
    last = progress.last or progress.before
    return f"{progress.sent} events sent and noted, up to record {last}: run it again to go on"


def _log_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"no embedded log at {path}: is LLM_GATEWAY_DATA_DIR its data dir?"
    if not os.access(path, os.W_OK):
        return f"{path} is read-only: export-log notes its progress in it (export from a writable copy)"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone() is None:
                return f"{path} holds no event log (no events table)"
    except sqlite3.Error as exc:
        return f"{path} cannot be read: {exc}"
    return None


async def _main(settings: Settings, path: Path, timeout: float, from_start: bool, progress: Progress) -> None:
    from gateway.eventlog.spool_lock import lock_file

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        lock = lock_file(Path(settings.data_dir) / "export-log.lock", "another export-log runs on this data dir")
    except OSError as exc:
        raise ExportError(str(exc), resumable=False) from None
    try:
        await _export(settings, path, from_start, progress, stop, timeout)
    finally:
        if lock is not None:
            os.close(lock)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if stop.is_set():
        progress.stopped = True


async def _export(
    settings: Settings, path: Path, from_start: bool, progress: Progress, stop: asyncio.Event, timeout: float
) -> None:
    from aiokafka import AIOKafkaProducer

    from gateway.eventlog.kafka_admin import ensure_topic, stop_producer

    kafka = settings.kafka
    bootstrap = kafka.bootstrap_servers
    deadline = time.monotonic() + timeout
    while True:  # a broker down at the start is waited for, up to --timeout
        try:
            await asyncio.wait_for(ensure_topic(kafka, settings.topic, settings.topic_partitions), 30)
            cluster, limits, records = await asyncio.wait_for(_topic_facts(kafka, settings.topic), 30)
            break
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - any broker failure is one line
            if refuses_user(exc):  # no wait and no run again mends an ACL
                raise ExportError(f"the Kafka cluster refuses this user ({describe(exc)})", resumable=False) from None
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise ExportError(f"Kafka at {bootstrap} cannot be reached ({describe(exc)})") from None
            log.debug("export-log: Kafka not reachable yet: %s", exc)
            await asyncio.sleep(1.0)
    target = f"{cluster}/{settings.topic}"
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)  # the gateway's busy timeout
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKS} (target TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)")
        row = conn.execute(f"SELECT last_seq FROM {MARKS} WHERE target = ?", (target,)).fetchone()
        progress.before = 0 if from_start or row is None else int(row[0])
        (oldest,) = conn.execute("SELECT min(ts) FROM events WHERE seq > ?", (progress.before,)).fetchone()
        if oldest is not None and limits:
            since = datetime.fromtimestamp(oldest / 1000, UTC).date().isoformat()
            raise ExportError(
                f"topic {settings.topic} deletes records ({', '.join(limits)}), and the log's events go back to "
                f"{since}: they would be deleted from it; set retention.ms=-1 and retention.bytes=-1 on it, and "
                "cleanup.policy=delete (the gateway makes its topics so)",
                resumable=False,
            )
        (noted,) = conn.execute("SELECT count(*) FROM events WHERE seq <= ?", (progress.before,)).fetchone()
        if records < noted:  # emptied, or deleted and made again, since this data dir's note
            raise ExportError(
                f"topic {settings.topic} holds {records} records, fewer than the {noted} this data dir noted as sent "
                "to it: it was emptied or made again; run export-log --from-start",
                resumable=False,
            )
        producer = AIOKafkaProducer(
            **kafka.client_options(),
            client_id="llm-gateway-export",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            compression_type=settings.kafka_compression_type,
        )
        await producer.start()
        try:
            after = progress.before
            while not stop.is_set() and (
                rows := conn.execute(
                    "SELECT seq, key, value, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, BATCH)
                ).fetchall()
            ):
                sends = [
                    await producer.send(
                        settings.topic, bytes(value), key=None if key is None else key.encode(), timestamp_ms=ts
                    )
                    for _, key, value, ts in rows
                ]
                if not await _acknowledged(sends, stop, timeout):
                    if stop.is_set():
                        progress.unsure = True
                        return
                    raise ExportError(
                        f"Kafka at {bootstrap} acknowledged no batch for {timeout:g} s; the batch in flight may have "
                        "gone in part and go again"
                    )
                after = rows[-1][0]
                conn.execute(
                    f"INSERT INTO {MARKS} (target, last_seq) VALUES (?, ?) "
                    "ON CONFLICT (target) DO UPDATE SET last_seq = excluded.last_seq",
                    (target, after),
                )
                progress.sent, progress.last = progress.sent + len(rows), after
                print(f"export-log: {progress.sent} sent, up to record {after}", file=sys.stderr)
        except (ExportError, sqlite3.Error):
            raise
        except Exception as exc:  # noqa: BLE001 - a broker gone mid-way: one line, what was sent is noted
            raise ExportError(f"Kafka at {bootstrap} failed ({describe(exc)})") from None
        finally:
            await stop_producer(producer, 10.0)
    finally:
        conn.close()


async def _acknowledged(sends: list[asyncio.Future[Any]], stop: asyncio.Event, timeout: float) -> bool:
    """Whether Kafka acknowledged every record of a batch before ``timeout`` and before ``stop``
    (a broker gone mid-batch: the idempotent producer retries for good). Raises a send's error."""
    acked = asyncio.ensure_future(asyncio.gather(*sends))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acked, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if acked.done():
        acked.result()
        return True
    acked.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await acked
    return False


def deleting_configs(resources: Sequence[Sequence[Any]]) -> list[str]:
    """:func:`~gateway.eventlog.kafka_admin.topic_limits`; raises :class:`ExportError` for a
    topic the broker did not describe. A user without DESCRIBE_CONFIGS got an error code and no
    entries, read as no limits: the export was let into a topic that deleted it within minutes
    (a review)."""
    from gateway.eventlog.kafka_admin import topic_limits

    limits, unreadable = topic_limits(resources)
    if unreadable is not None:
        name = resources[0][3] if resources else "?"
        raise ExportError(
            f"the retention of topic {name} cannot be read ({unreadable}), so it cannot be checked that the topic "
            "keeps the exported events for good: give this Kafka user DESCRIBE_CONFIGS on the topic",
            resumable=False,
        )
    return limits


async def _topic_facts(kafka: KafkaConnection, topic: str) -> tuple[str, list[str], int]:
    """The cluster's id, the topic's configs that delete records (a ``retention.ms`` or
    ``retention.bytes`` other than -1, a compacting ``cleanup.policy``: the key is the tenant, so
    compaction kept one event a tenant; a review) and the records it holds."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from gateway.eventlog.kafka_admin import retention_configs, topic_partitions

    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="llm-gateway-export")
    await admin.start()
    try:
        cluster = str((await admin.describe_cluster()).get("cluster_id") or "kafka")
        resources = await retention_configs(admin, topic)
    finally:
        await admin.close()
    limits = deleting_configs(resources)
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
    consumer = AIOKafkaConsumer(**kafka.client_options(), client_id="llm-gateway-export", enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions) if partitions else {}
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
    return cluster, limits, sum(ends[tp] - starts[tp] for tp in partitions)
