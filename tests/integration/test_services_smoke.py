"""The real services work: Kafka round-trips with a committed consumer group, PostgreSQL
answers queries, and both survive being stopped and started mid-test (an outage)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tests.conftest import PostgresControl
from tests.services.kafka import Broker

RECEIVE_TIMEOUT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def produce(bootstrap: str, topic: str, *values: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, group: str | None = None) -> list[bytes]:
    """``count`` values from the group's committed position (or from the start), committed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values = []
        for _ in range(count):
            record = await asyncio.wait_for(consumer.getone(), RECEIVE_TIMEOUT)
            values.append(record.value)
        if group is not None:
            await consumer.commit()
        return values
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, topic: str, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_kafka_produce_consume_commit(kafka_bootstrap: str) -> None:
    topic, group = unique("smoke"), unique("smoke-group")
    await produce(kafka_bootstrap, topic, b"first")

    assert await consume(kafka_bootstrap, topic, 1, group) == [b"first"]
    assert await committed_offset(kafka_bootstrap, topic, group) == 1

    # A new member of the group resumes after the committed offset.
    await produce(kafka_bootstrap, topic, b"second")
    assert await consume(kafka_bootstrap, topic, 1, group) == [b"second"]
    assert await committed_offset(kafka_bootstrap, topic, group) == 2


@pytest.mark.kafka
async def test_kafka_broker_outage_and_restart(kafka_broker_control: Broker) -> None:
    broker = kafka_broker_control
    topic = unique("outage")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")

        await broker.astop()
        assert not broker.is_running()
        with pytest.raises(KafkaError):
            await producer.send_and_wait(topic, b"lost")

        await broker.astart()
        assert broker.is_running()
        # The producer that saw the outage reconnects on its own.
        await producer.send_and_wait(topic, b"after")
    finally:
        await producer.stop()

    # Same data dir: what was written before the outage is still there.
    assert await consume(broker.bootstrap, topic, 2) == [b"before", b"after"]


@pytest.mark.postgres
async def test_postgres_select_one(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_create_insert_select(database_url: str) -> None:
    table = unique("smoke").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"create table {table} (id bigint primary key, body jsonb not null)")
        await conn.executemany(
            f"insert into {table} (id, body) values ($1, $2::jsonb)",
            [(1, '{"a": 1}'), (2, '{"a": 2}')],
        )
        rows = await conn.fetch(f"select id, body->>'a' as a from {table} order by id")
        assert [(row["id"], row["a"]) for row in rows] == [(1, "1"), (2, "2")]
    finally:
        await conn.execute(f"drop table if exists {table}")
        await conn.close()


@pytest.mark.postgres
async def test_postgres_outage_and_restart(database_url: str, postgres_control: PostgresControl) -> None:
    table = unique("outage").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"create table {table} (v text)")
    await conn.execute(f"insert into {table} values ('kept')")

    await postgres_control.astop()
    assert not postgres_control.is_running()
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("select 1")
    await conn.close()
    with pytest.raises(OSError):
        await asyncpg.connect(database_url, timeout=5)

    await postgres_control.astart()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f"select v from {table}") == "kept"
    finally:
        await conn.execute(f"drop table {table}")
        await conn.close()
