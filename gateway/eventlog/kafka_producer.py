"""The gateway's Kafka event log: a local SQLite spool in front of an idempotent producer.

``publish`` appends the event to the spool (durable against a process crash when it returns)
and wakes the forwarder; it never waits on the broker. ``stage`` does the same for all the
events of one loop turn in one spool transaction (``group_commit.py``; durable when
``settled`` returns). The forwarder sends spooled events in
spool order (so per tenant, the message key, in publish order) with ``acks=all`` and
idempotence, and deletes them from the spool only once Kafka has acknowledged them. While the
broker is down or slow, events pile up in the spool and the forwarder keeps retrying with
backoff; ``close(timeout)`` leaves whatever is not acknowledged by then in the spool, and the
next start forwards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTimestampError
from aiokafka.partitioner import DefaultPartitioner

from gateway.eventlog.base import LogOutage
from gateway.eventlog.group_commit import GroupCommit
from gateway.eventlog.kafka_admin import ensure_topic, stop_producer
from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.eventlog.log_errors import Repeats, describe, latest_refusal, refuses_user
from gateway.eventlog.spool_lock import lock_spool
from gateway.eventlog.sqlite import Row, SqliteOutbox, append_event, append_events, refused_after_close
from gateway.events import UsageEvent
from gateway.ids import utcnow

log = logging.getLogger(__name__)

#: seconds between two warnings that the spool cannot delete what Kafka acknowledged
UNDELETED_LOG_EVERY = 30.0


class KafkaEventLog:
    def __init__(
        self,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        spool_path: Path,
        *,
        partitions: int = 3,
        replication_factor: int | None = None,
        linger_ms: int = 5,
        compression_type: str | None = None,
        max_batch_bytes: int = 256 * 1024,
        forward_batch: int = 5000,
        client_id: str = "llm-gateway",
        request_timeout_ms: int = 10_000,
        backoff: tuple[float, float] = (0.2, 5.0),
        warn_interval: float = 5.0,
        checkpoint_interval: float = 0.5,
    ) -> None:
        self._kafka = kafka_connection(bootstrap_servers)
        self.bootstrap_servers = self._kafka.bootstrap_servers
        self.topic = topic
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._producer_options: dict[str, Any] = {
            **self._kafka.client_options(),
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "compression_type": compression_type,
            "max_batch_size": max_batch_bytes,
            "request_timeout_ms": request_timeout_ms,
        }
        self._client_id = client_id
        self._forward_batch = forward_batch
        self._backoff = backoff
        self._warn_interval = warn_interval
        self._checkpoint_interval = checkpoint_interval
        self._lock = lock_spool(spool_path)
        self._spool = SqliteOutbox(spool_path, table="spool")
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()  # ends the forwarder's backoff: a stop waited it out
        self._repeats = Repeats()  # the same reason is a warning once a minute
        self._staged = GroupCommit(self._write)
        self._closing = False
        self._producer: AIOKafkaProducer | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        #: why the forwarder cannot put events on the topic, since when (``outage``): not
        #: connected yet counts as nothing wrong, a failed connection or send as an outage (the
        #: "acknowledging again after" line counts from its start)
        self._outage: LogOutage | None = None
        self._catching_up = False  # forwarding a backlog (after an outage or a restart)
        self._partitioner = DefaultPartitioner()
        self._partition_cache: dict[tuple[bytes | None, int], int] = {}
        self._last_warning = 0.0
        #: the broker refused the spooled records' times (InvalidTimestampError: stamped more
        #: than an hour ahead of its clock): the next sends carry this process's current time
        #: instead, which the broker takes unless the clock itself is ahead (then the warning
        #: says so). A gateway whose clock ran 2 h ahead, then corrected, left its spool stuck
        #: behind such records for good.
        self._stamp_now = False
        #: (first seq, last seq, rows) that Kafka acknowledged, deleted from the spool in the same
        #: worker-thread call as the next read: one thread hop per forward instead of two (at
        #: concurrency 1 every call is forwarded alone, on the loop the next call waits for)
        self._acked: tuple[int, int, int] | None = None
        self._undeleted_logged = -UNDELETED_LOG_EVERY

    # --- EventLog --------------------------------------------------------------------------------
    def publish(self, event: UsageEvent) -> None:
        if not refused_after_close(self._spool, event) and append_event(self._spool, event):
            self._wakeup.set()

    def stage(self, event: UsageEvent) -> None:
        if not refused_after_close(self._spool, event):
            self._staged.stage(event)

    async def settled(self, callers: int = 1) -> None:
        await self._staged.settled(callers)

    def _write(self, events: list[UsageEvent]) -> None:
        if not refused_after_close(self._spool, *events) and append_events(self._spool, events):
            self._wakeup.set()

    def spool_records(self, rows: Sequence[tuple[str | None, bytes, int]]) -> None:
        """Spool records as they are (``(key, value, timestamp ms)``, another log's) to forward in
        order: ``llm-gateway export-log`` puts the embedded log on the topic this way."""
        self._spool.append_many(rows)
        self._wakeup.set()

    def pending(self) -> int:
        """Events not yet acknowledged by Kafka: in the spool, staged for it, or held in memory
        while the spool's file refuses them (a full disk)."""
        acked = self._acked[2] if self._acked is not None else 0
        return max(self._spool.count() - acked, 0) + self._staged.staged() + self._spool.held()

    def lost(self) -> int:
        return self._spool.lost

    def outage(self) -> LogOutage | None:
        """The spool's file refusing writes first (nothing reaches even the spool), else the
        broker's last failure, until a forward succeeds."""
        return self._spool.refusal or self._outage

    async def start(self) -> None:
        if self._forwarder is not None:
            return
        self._closing = False
        self._stopping.clear()
        self._outage = None  # known again once the forwarder has tried
        if backlog := self.pending():
            self._catching_up = True
            log.info(
                "%d usage events spooled in %s from an earlier run; forwarding them",
                backlog,
                self._spool.path,
            )
        self._checkpoints = asyncio.create_task(
            self._spool.run_checkpoints(self._checkpoint_interval, on_written=self._wakeup.set),
            name="kafka-spool-checkpoints",
        )
        self._forwarder = asyncio.create_task(self._forward(), name="kafka-spool-forwarder")

    async def close(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._staged.flush()
        self._closing = True
        self._stopping.set()
        self._wakeup.set()
        if self._forwarder is not None:
            _, running = await asyncio.wait({self._forwarder}, timeout=timeout)
            if running:
                self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder
            self._forwarder = None
        if self._acked is not None:
            await asyncio.to_thread(self._delete_acked)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await stop_producer(producer, max(deadline - loop.time(), 0.5))
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        left = self.pending()
        await asyncio.to_thread(self._spool.close, max(deadline - loop.time(), 1.0))
        if self._lock is not None:
            os.close(self._lock)  # releases it
            self._lock = None
        left -= self._spool.lost  # those its file refused to the end: logged at ERROR, not in it
        if left > 0:
            log.warning(
                "Kafka event log closed with %d usage events left in the spool %s; "
                "they are forwarded at the next start",
                left,
                self._spool.path,
            )

    # --- forwarder -------------------------------------------------------------------------------
    async def _forward(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                producer = self._producer or await self._connect()
                forwarded = await self._forward_once(producer)
                self._outage = None
                if not forwarded:
                    if self._catching_up:
                        self._catching_up = False
                        log.info("Kafka spool %s drained", self._spool.path)
                    if self._closing:
                        return
                    self._wakeup.clear()
                    if self._spool.count() == 0:  # staged events wake it once spooled
                        await self._wakeup.wait()
                delay = self._backoff[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the forwarder must outlive any failure
                self._note_down(exc, delay)
                if self._producer is not None:
                    producer, self._producer = self._producer, None
                    await stop_producer(producer, 1.0)
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._closing and self.pending() == 0:  # else one more try, within close's timeout
                    return
                delay = min(delay * 2, self._backoff[1])

    async def _connect(self) -> AIOKafkaProducer:
        await ensure_topic(
            self._kafka,
            self.topic,
            self._partitions,
            replication_factor=self._replication_factor,
            client_id=self._client_id,
            request_timeout_ms=self._producer_options["request_timeout_ms"],
        )
        producer = AIOKafkaProducer(**self._producer_options)
        try:
            await producer.start()
        except BaseException:
            await stop_producer(producer, 1.0)
            raise
        self._producer = producer
        return producer

    async def _forward_once(self, producer: AIOKafkaProducer) -> bool:
        """Send the oldest spooled events, wait for the acknowledgements, delete what Kafka
        acknowledged. False if the spool was empty."""
        rows = await asyncio.to_thread(self._delete_acked_then_read)
        if not rows:
            return False
        batches = self._batches(producer, rows, sorted(await producer.partitions_for(self.topic)))
        futures: list[asyncio.Future[Any]] = []
        send_error: Exception | None = None
        try:
            for partition, builder, _seqs in batches:
                futures.append(await producer.send_batch(builder, self.topic, partition=partition))
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the bookkeeping
            send_error = exc
        # what was handed to the producer is waited for even if a later send failed
        results = await self._acknowledgements(futures)
        failure = send_error or next((r for r in results if isinstance(r, Exception)), None)
        if failure is None:
            earlier = self._acked  # still there when the spool could not delete it (a full disk)
            first, count = (earlier[0], earlier[2]) if earlier is not None else (rows[0][0], 0)
            self._acked = (first, rows[-1][0], count + len(rows))  # deleted with the next read
        else:
            acked = sorted(
                seq
                for (_partition, _builder, seqs), result in zip(batches, results, strict=False)
                if not isinstance(result, BaseException)
                for seq in seqs
            )
            if acked:
                try:
                    await asyncio.to_thread(self._spool.delete, acked)
                except sqlite3.Error as exc:  # a full disk: they go again (the failure is the news)
                    log.warning("the Kafka spool %s cannot delete acknowledged events (%s)", self._spool.path, exc)
            raise failure
        self._note_up()
        return True

    def _delete_acked(self) -> None:
        """Delete what Kafka acknowledged from the spool (a worker thread). A spool that cannot
        delete (its disk full) keeps the range, to delete later; it is not sent again: read from
        past it (the same events went again 5 times a second, 196,770 applied for 9,341, while a
        review's disk stayed full, and the log blamed Kafka)."""
        if (acked := self._acked) is None:
            return
        try:
            self._spool.delete_range(acked[0], acked[1])
        except sqlite3.Error as exc:
            now = time.monotonic()
            if now - self._undeleted_logged >= UNDELETED_LOG_EVERY:
                self._undeleted_logged = now
                log.warning(
                    "the Kafka spool %s cannot delete the %d events Kafka acknowledged (%s): they are "
                    "not sent again, and deleted once its disk takes writes",
                    self._spool.path,
                    acked[2],
                    exc,
                )
            return
        self._acked = None

    def _delete_acked_then_read(self) -> list[Row]:
        self._delete_acked()
        after = self._acked[1] if self._acked is not None else 0
        return self._spool.read_after(after, self._forward_batch)

    def _batches(
        self, producer: AIOKafkaProducer, rows: Sequence[Row], partitions: list[int]
    ) -> list[tuple[int, Any, list[int]]]:
        """Record batches (partition, builder, spool seqs) in spool order. The partition is the
        Java client's murmur2 of the key (the tenant), so each tenant's events stay in order."""
        batches: list[tuple[int, Any, list[int]]] = []
        open_batches: dict[int, tuple[int, Any, list[int]]] = {}
        for seq, key, value, ts in rows:
            key_bytes = None if key is None else key.encode()
            partition = self._partition_of(key_bytes, partitions)
            batch = open_batches.get(partition)
            stamp = None if self._stamp_now else ts
            if batch is None or batch[1].append(timestamp=stamp, key=key_bytes, value=value) is None:
                builder = producer.create_batch()
                builder.append(timestamp=stamp, key=key_bytes, value=value)  # a first record always fits
                batch = open_batches[partition] = (partition, builder, [])
                batches.append(batch)
            batch[2].append(seq)
        return batches

    def _partition_of(self, key: bytes | None, partitions: list[int]) -> int:
        cache_key = (key, len(partitions))
        partition = self._partition_cache.get(cache_key)
        if partition is None:
            if len(self._partition_cache) > 100_000:
                self._partition_cache.clear()
            partition = self._partitioner(key, partitions, partitions)
            if key is not None:
                self._partition_cache[cache_key] = partition
        return partition

    async def _acknowledgements(self, futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
        if not futures:
            return []
        waiter = asyncio.gather(*futures, return_exceptions=True)
        started, sent_at = time.monotonic(), utcnow()
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=self._warn_interval)
            if done:
                return list(waiter.result())
            waited = time.monotonic() - started
            # the reason without the seconds, so the same one is logged once a minute, and with the
            # refusal aiokafka logged meanwhile (a broker gone or a password rotated under a
            # connected producer: "not acknowledged for 5s/10s/..." every 5 s, naming nothing: a
            # re-test)
            refused = latest_refusal()
            why = f"Kafka at {self.bootstrap_servers} does not acknowledge" + (f" ({refused})" if refused else "")
            self._warn(
                "%s: nothing acknowledged for %.0fs; %d usage events spooled",
                why,
                waited,
                self.pending(),
                problem=why,
                since=sent_at,
            )

    # --- reporting -------------------------------------------------------------------------------
    def _warn(self, message: str, *args: object, problem: str, since: datetime | None = None) -> None:
        """Note ``problem`` as the outage (``since``: when it began; default: now, or the
        outage's start) and log ``message`` if a warning of it is due."""
        if self._outage is None or self._outage.error != problem:
            self._outage = LogOutage(problem, self._outage.since if self._outage else since or utcnow())
        now = time.monotonic()
        if now - self._last_warning >= self._warn_interval and self._repeats.due(problem):
            self._last_warning = now
            log.warning(message, *args)

    def _note_down(self, exc: BaseException, retry_in: float) -> None:
        if isinstance(exc, InvalidTimestampError):
            if not self._stamp_now:
                self._stamp_now = True  # resend with the current time at once
                return
            self._warn(
                "Kafka at %s refuses the usage events' times (%s): this gateway's clock is probably more "
                "than an hour ahead of the broker's; %d usage events spooled until the clock is fixed",
                self.bootstrap_servers,
                exc,
                self.pending(),
                problem=f"Kafka at {self.bootstrap_servers} refuses the usage events' times ({describe(exc)}): "
                "is this gateway's clock ahead of the broker's?",
            )
            return
        why = describe(exc)
        # the cluster's ACLs refusing the user is no outage: said "unavailable" (a review)
        state = "refuses this user" if refuses_user(exc) else "unavailable"
        self._warn(
            "Kafka at %s %s (%s); %d usage events spooled, retrying in %.1fs",
            self.bootstrap_servers,
            state,
            why,
            self.pending(),
            retry_in,
            problem=f"Kafka at {self.bootstrap_servers} {state}: {why}",
        )

    def _note_up(self) -> None:
        if self._outage is not None:
            log.info(
                "Kafka at %s acknowledging again after %.0fs; %d usage events still spooled",
                self.bootstrap_servers,
                (utcnow() - self._outage.since).total_seconds(),
                self.pending(),
            )
            self._outage = None
            self._last_warning = 0.0
            self._repeats.reset()
            self._catching_up = True
