"""A Kafka reader's catch-up (a new cost store read from the log's beginning) through rebalances,
against a fake consumer: aiokafka's rebalances are eager (every partition revoked, then the new
assignment given), which the broker-backed contract test does not provoke."""

from __future__ import annotations

from aiokafka import TopicPartition

from gateway.eventlog.base import LogRecord
from gateway.eventlog.kafka_reader import KafkaLogReader, _Rewinder

TOPIC = "llm.usage"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeConsumer:
    def __init__(self, committed: dict[TopicPartition, int], beginning: int = 0) -> None:
        self.offsets = dict(committed)
        self.history: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.assigned: set[TopicPartition] = set()
        self.beginning = beginning

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginning for tp in tps}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.history.append(dict(offsets))
        self.offsets.update(offsets)


def reader_on(consumer: FakeConsumer) -> tuple[KafkaLogReader, _Rewinder]:
    reader = KafkaLogReader("127.0.0.1:9", TOPIC, "group")
    reader._consumer = consumer  # type: ignore[assignment]
    return reader, _Rewinder(reader)


def applied(*through: tuple[int, int]) -> list[LogRecord]:
    """Records of a batch the projector applied: the last offset of each partition given."""
    return [LogRecord(f"{partition}:{offset}", b"{}") for partition, offset in through]


async def test_a_rebalance_mid_catch_up_neither_moves_the_group_back_nor_ends_it_early() -> None:
    """The revocation emptied the reader's rewound partitions before the new assignment came: the
    batch in flight then committed below the group's offsets (back to 400 from 1000), and the
    catch-up was taken as done, its store left without offsets 400 to 999 (a diff review)."""
    consumer = FakeConsumer({P0: 1000, P1: 1000})
    consumer.assigned = {P0, P1}
    reader, listener = reader_on(consumer)
    await reader.seek_to_beginning()
    assert sorted(consumer.seeks) == [(0, 0), (1, 0)]
    await reader.commit(applied((0, 299), (1, 299)))
    await listener.on_partitions_revoked({P0, P1})  # a member joins
    assert not await reader.rewind_done()
    await reader.commit(applied((0, 399), (1, 399)))  # the batch in flight ends meanwhile
    consumer.seeks.clear()
    consumer.assigned = {P0}
    await listener.on_partitions_assigned({P0})
    assert consumer.seeks == [(0, 400)]  # on from where it had got to, not from 0 again
    assert not await reader.rewind_done()
    await reader.commit(applied((0, 999)))
    assert await reader.rewind_done()
    await reader.commit(applied((0, 1004)))
    assert consumer.history == [{P0: 1005}]  # nothing below the group's offsets was committed


async def test_a_partition_back_from_another_member_is_read_up_to_where_that_member_got() -> None:
    consumer = FakeConsumer({P0: 1000})
    consumer.assigned = {P0}
    reader, listener = reader_on(consumer)
    await reader.seek_to_beginning()
    await reader.commit(applied((0, 499)))
    await listener.on_partitions_revoked({P0})
    consumer.assigned = set()
    await listener.on_partitions_assigned(set())
    consumer.offsets[P0] = 1500  # another member projected on meanwhile
    consumer.assigned = {P0}
    await listener.on_partitions_assigned({P0})
    await reader.commit(applied((0, 1099)))
    assert not await reader.rewind_done()  # its store still lacks 1100 to 1499
    await reader.commit(applied((0, 1499)))
    assert await reader.rewind_done() and consumer.history == []


async def test_a_rewind_again_after_a_restart_forgets_the_old_floors() -> None:
    """A projector restarted after a bug rewinds again: floors kept from before let it commit
    below the group's offset (1500 -> 1100; a diff review)."""
    consumer = FakeConsumer({P0: 1000})
    consumer.assigned = {P0}
    reader, _ = reader_on(consumer)
    await reader.seek_to_beginning()
    await reader.commit(applied((0, 1499)))  # read again past 1000, then on to 1500
    assert consumer.offsets[P0] == 1500
    await reader.seek_to_beginning()
    await reader.commit(applied((0, 1099)))
    assert consumer.offsets[P0] == 1500


async def test_a_partition_retention_emptied_below_the_groups_offset_has_nothing_to_read_again() -> None:
    consumer = FakeConsumer({P0: 1000}, beginning=1000)
    consumer.assigned = {P0}
    reader, _ = reader_on(consumer)
    await reader.seek_to_beginning()
    assert await reader.rewind_done()
