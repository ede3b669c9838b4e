"""The consumers' side of the Kafka event log: a consumer-group member with explicit commits.

Positions are ``"partition:offset"``. ``commit(records)`` commits, per partition, the offset
just after the last of ``records`` in it; nothing is committed automatically, so records
fetched but not committed are delivered again after a restart or a rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from gateway.eventlog import kafka_offsets
from gateway.eventlog.base import LogRecord
from gateway.eventlog.kafka_admin import ensure_topic, stop_consumer, topic_partitions
from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection

log = logging.getLogger(__name__)


class _Rewinder(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps a rewind (a catch-up) going through rebalances (aiokafka's are eager: every
    partition is revoked, then the new assignment given)."""

    def __init__(self, reader: KafkaLogReader) -> None:
        self._reader = reader

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._reader._rebalancing = True

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._reader._rewind(assigned)


class KafkaLogReader:
    #: aiokafka fetches ahead but holds one response a partition, and asks for more only once it
    #: is taken: a batch lingering for company takes it every 20 ms, so that what comes during
    #: the linger joins the batch (read once at the end, the batch held only what had come by its
    #: start, and the live lag was 850 ms at p50 against the embedded log's 390)
    read_while_lingering: float | None = 0.02

    def __init__(
        self,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        group_id: str,
        *,
        partitions: int = 3,
        replication_factor: int | None = None,
        client_id: str = "llm-gateway-consumer",
        request_timeout_ms: int = 30_000,
        fetch_max_wait_ms: int = 100,
    ) -> None:
        self._kafka = kafka_connection(bootstrap_servers)
        self.bootstrap_servers = self._kafka.bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        #: partitions rewound by the replay in progress (None: no replay)
        self._rewound: set[TopicPartition] | None = None
        #: per rewound partition, the group's committed offset when this reader took it: what it
        #: reads again below that is not committed (the group's offset never moves back)
        self._floors: dict[TopicPartition, int] = {}
        #: per rewound partition, the offset after the last record applied since the rewind
        self._read_again: dict[TopicPartition, int] = {}
        #: between a rebalance's revocation and its new assignment (no rewind is done then)
        self._rebalancing = False

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await ensure_topic(
            self._kafka,
            self.topic,
            self._partitions,
            replication_factor=self._replication_factor,
            client_id=self._client_id,
        )
        kafka_offsets.install()  # a coordinator still loading is no "nothing committed"
        consumer = AIOKafkaConsumer(
            **self._kafka.client_options(),
            group_id=self.group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=self._request_timeout_ms,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        try:
            await consumer.start()
            consumer.subscribe([self.topic], listener=_Rewinder(self))
        except BaseException:
            await stop_consumer(consumer)
            raise
        self._consumer = consumer

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await stop_consumer(consumer)

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaLogReader is not started")
        return self._consumer

    async def fetch(self, max_records: int, timeout: float) -> list[LogRecord]:
        batches = await self._started().getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        return [
            LogRecord(
                f"{msg.partition}:{msg.offset}",
                # a tombstone (null value) is no event: an empty one, dead-lettered as such (None
                # reached the dead-letter store, which could not hash it: the batch never passed)
                b"" if msg.value is None else msg.value,
                # a key only says where the producer put the record: none is read, and one that is
                # not UTF-8 (another producer's) raised here, holding its batch from the projector
                None if msg.key is None else msg.key.decode(errors="replace"),
                msg.timestamp,
            )
            for tp in sorted(batches, key=lambda tp: tp.partition)
            for msg in batches[tp]
        ]

    async def commit(self, records: Sequence[LogRecord]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            partition, offset = (int(part) for part in record.position.split(":"))
            tp = TopicPartition(self.topic, partition)
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        if self._rewound is not None:
            offsets = await self._above_floors(offsets)
        if not offsets:
            return
        try:
            await self._started().commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # the partitions moved to another member, which will deliver them again
            log.warning(
                "commit of %s for group %s not accepted (%s); records will be redelivered",
                offsets,
                self.group_id,
                exc,
            )

    async def seek_to_beginning(self) -> None:
        # what an earlier rewind of this reader knew is stale (a projector restarted after a bug
        # rewinds again: a floor kept from before let it commit below the group's offset)
        self._rewound, self._floors, self._read_again = set(), {}, {}
        self._rewind(self._started().assignment())

    async def end_rewind(self) -> None:
        self._rewound = None
        self._floors, self._read_again = {}, {}

    async def rewind_done(self) -> bool:
        if self._rebalancing:  # the assignment is changing: nothing is known of the next one
            return False
        consumer = self._started()
        for tp in consumer.assignment() & (self._rewound or set()):
            if self._read_again.get(tp, 0) < await self._floor(tp):
                return False
        return True

    async def _floor(self, tp: TopicPartition) -> int:
        """The group's committed offset of ``tp`` when this reader was given it during the rewind
        (asked once per assignment, before this reader commits anything there); 0 when retention
        removed every record below it (nothing to read again: such a partition without traffic
        kept the catch-up going for good)."""
        floor = self._floors.get(tp)
        if floor is None:
            consumer = self._started()
            floor = await consumer.committed(tp) or 0
            if floor and (await consumer.beginning_offsets([tp]))[tp] >= floor:
                floor = 0
            self._floors[tp] = floor
        return floor

    async def _above_floors(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The offsets of a rewound reader that move the group on. Committed as read, a new
        member's catch-up set its partitions back to offset 0, and whoever got them next (a
        rebalance) projected them again and dead-lettered their poison records again (a
        review: 43,635 events of one member leaving)."""
        kept = {}
        for tp, offset in offsets.items():
            if self._rewound is not None and tp in self._rewound:
                self._read_again[tp] = max(self._read_again.get(tp, 0), offset)
                if offset <= await self._floor(tp):
                    continue
            kept[tp] = offset
        return kept

    async def has_committed(self) -> bool:
        consumer = self._started()
        for tp in await self._topic_partitions():
            if await consumer.committed(tp):
                return True
        return False

    async def _topic_partitions(self) -> list[TopicPartition]:
        """The topic's partitions, in order."""
        partitions = self._started().partitions_for_topic(self.topic)
        if not partitions:
            # aiokafka's topics() fills a throwaway metadata object, so ask the cluster directly
            partitions = set(await topic_partitions(self._kafka, self.topic, client_id=f"{self._client_id}-lag"))
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]

    def _rewind(self, partitions: set[TopicPartition]) -> None:
        """During a rewind, each partition this reader is given is read from where the rewind had
        got to in it (0 the first time), up to the group's offset of now (another member may
        have moved it on meanwhile). A rebalance gives every partition again: each was read
        from 0 again, and N members joining one by one read the log N times (a diff review)."""
        self._rebalancing = False
        if self._rewound is None or self._consumer is None:
            return
        for tp in partitions:
            # where it had got to, else offset 0 (or, once retention removed it, the earliest
            # offset via auto_offset_reset="earliest"): the first record still on the log
            self._consumer.seek(tp, self._read_again.get(tp, 0))
            self._floors.pop(tp, None)
            self._rewound.add(tp)

    async def lag(self) -> int:
        consumer = self._started()
        tps = await self._topic_partitions()
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        total = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            total += ends[tp] - (starts[tp] if committed is None else max(committed, starts[tp]))
        return total
