"""Follow the usage topic from a point in time, without a consumer group: what the health view
and the budget ledger of every gateway replica do to see the other replicas' events.

:class:`TopicFollower` runs a group-less consumer (no group, no commits, every partition
assigned by hand) from the first record at or after :meth:`TopicFollower.since` on each
partition, and hands each record's bytes to :meth:`TopicFollower.apply`. ``start()`` returns at
once: connecting (and reconnecting) happens in the background, so a broker outage never stops
a gateway from starting. ``ready`` is set while the partitions are assigned and being read;
``caught_up`` once every record that was on the topic at the (first) assignment was read. A broker lost
after that is retried by the same consumer, which goes on from its position: no record is
applied twice (the budget ledger's counting relies on it; a broker restart is tested).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from gateway.event_json import event_id_of
from gateway.eventlog.kafka_admin import ensure_topic, topic_partitions
from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.eventlog.log_errors import Repeats, describe


class TopicFollower:
    #: the follower's name in its log lines ("health sync")
    name = "topic follower"
    log = logging.getLogger("gateway")

    def __init__(
        self,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        *,
        partitions: int = 3,
        replication_factor: int | None = None,
        client_id: str = "llm-gateway-follower",
        fetch_max_wait_ms: int = 100,
        retry_seconds: float = 2.0,
    ) -> None:
        self._kafka = kafka_connection(bootstrap_servers)
        self.bootstrap_servers = self._kafka.bootstrap_servers
        self.topic = topic
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._client_id = client_id
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.caught_up = asyncio.Event()
        #: partition -> the offset to read up to for ``caught_up``
        self._ends: dict[TopicPartition, int] = {}
        #: records read from the topic (applied, or skipped as duplicates / unreadable)
        self.received = 0
        #: partition -> the offset of the next record to read, and the event id of the record
        #: before it when known (read, or resumed from)
        self.positions: dict[int, int] = {}
        self.checks: dict[int, str] = {}

    def since(self) -> datetime:
        """Where (in record time) to start reading, at each (re)connection."""
        raise NotImplementedError

    def apply(self, raw: bytes | None) -> None:
        """One record's value."""
        raise NotImplementedError

    def resume_at(self) -> dict[int, tuple[int, str | None]]:
        """Partition -> the offset to go on from, at the first assignment, in place of
        ``since()`` (a snapshot's), with the event id of the record just before it; {}: none.
        A partition not given is read from ``since()``."""
        return {}

    def resumed(self, accepted: bool) -> None:
        """Whether ``resume_at()``'s offsets were taken: all are, or none (the record before an
        offset is not the event it names: another topic of that name, or records retention
        deleted)."""

    #: what the process does without the topic, for the warning ("the view is in-process only")
    without_topic = "this process sees its own events only"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-{self.topic}")
            self._task.add_done_callback(self._log_crash)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _run(self) -> None:
        repeats = Repeats()
        while True:
            try:
                consumer = await self._connect()
            except (KafkaError, OSError, TimeoutError) as exc:
                # once per reason and minute: a WARNING every 2 s for as long as a broker was
                # down (1,800 lines an hour of the same reason)
                why = describe(exc)
                if repeats.due(why):
                    self.log.warning(
                        "%s cannot read %s yet (%s); %s, retrying every %gs",
                        self.name,
                        self.topic,
                        why,
                        self.without_topic,
                        self._retry_seconds,
                    )
                await asyncio.sleep(self._retry_seconds)
                continue
            repeats.reset()
            try:
                self.ready.set()
                await self._follow(consumer)
            finally:
                self.ready.clear()
                await consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        await ensure_topic(
            self._kafka,
            self.topic,
            self._partitions,
            replication_factor=self._replication_factor,
            client_id=self._client_id,
        )
        consumer = AIOKafkaConsumer(
            **self._kafka.client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id=self._client_id,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        try:
            await consumer.start()
            await self._assign_since(consumer)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _assign_since(self, consumer: AIOKafkaConsumer) -> None:
        """Every partition, from its first record at or after ``since()`` (or its end)."""
        partitions = await topic_partitions(self._kafka, self.topic, client_id=self._client_id)
        if not partitions:
            raise KafkaError(f"no partitions known for {self.topic} yet")
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        since = self.since()
        # the ends first: a record written between the two look-ups is then read, not skipped
        # (with the other order, a partition with no record in the window yet would be sought to
        # an end that already lies past the records written meanwhile)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        first = not self.caught_up.is_set() and not self.positions
        resume = self.resume_at() if first else {}
        if resume:
            accepted = await _records_match(consumer, [(tp, ends[tp], resume.get(tp.partition)) for tp in tps])
            self.resumed(accepted)
            if not accepted:
                resume = {}
        for tp in tps:
            hit = found.get(tp)
            offset = hit.offset if hit is not None else ends[tp]
            if tp.partition in resume and resume[tp.partition][0] >= offset:
                offset, check = resume[tp.partition]
                if check is not None:
                    self.checks[tp.partition] = check
            self.positions[tp.partition] = offset
            consumer.seek(tp, offset)
        if not self.caught_up.is_set():
            self._ends = {tp: end for tp, end in ends.items() if self.positions[tp.partition] < end}
            if not self._ends:
                self.caught_up.set()
        self.log.info("%s follows %s (%d partitions) from %s on", self.name, self.topic, len(tps), since.isoformat())

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            except KafkaError as exc:
                self.log.warning("%s from %s: %s; retrying in %gs", self.name, self.topic, exc, self._retry_seconds)
                await asyncio.sleep(self._retry_seconds)
                continue
            for tp, messages in batches.items():
                for message in messages:
                    self.received += 1
                    self.apply(message.value)
                if messages:
                    self.positions[tp.partition] = messages[-1].offset + 1
                    if (check := event_id_of(messages[-1].value or b"")) is not None:
                        self.checks[tp.partition] = check
                if self._ends and messages:
                    end = self._ends.get(tp)
                    if end is not None and messages[-1].offset + 1 >= end:
                        del self._ends[tp]
                        if not self._ends:
                            self.caught_up.set()

    def _log_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("%s stopped: %s", self.name, self.without_topic, exc_info=exc)


#: how long the check of a snapshot's record waits for it
_CHECK_TIMEOUT_MS = 10_000


async def _records_match(
    consumer: AIOKafkaConsumer, expected: list[tuple[TopicPartition, int, tuple[int, str | None] | None]]
) -> bool:
    """Whether each partition's record before the offset to resume from holds the event named
    (an offset of 0: nothing was read there; no offset given: the partition is new)."""
    for tp, end, resume in expected:
        if resume is None or resume[0] == 0:
            continue
        offset, event_id = resume
        if offset > end or event_id is None:
            return False
        consumer.seek(tp, offset - 1)
        fetched = await consumer.getmany(tp, timeout_ms=_CHECK_TIMEOUT_MS, max_records=1)
        records = fetched.get(tp, [])
        if not records or records[0].offset != offset - 1 or event_id_of(records[0].value or b"") != event_id:
            return False
    return True
