"""The gateway's topics on a real broker: an existing topic that deletes records is said at
start (a managed cluster's 7-day default took events out of replay's reach silently), and a
topic two clients create at once is logged as created once (it was twice: a review)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.eventlog import kafka_admin
from gateway.eventlog.kafka_admin import ensure_topic, topic_partitions

pytestmark = pytest.mark.kafka


async def make_topic(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("configs", "named"),
    [
        ({"retention.ms": "604800000"}, "retention.ms=604800000"),
        ({"retention.bytes": "1073741824", "retention.ms": "-1"}, "retention.bytes=1073741824"),
        ({"cleanup.policy": "compact"}, "cleanup.policy=compact"),
    ],
)
async def test_an_existing_topic_that_deletes_records_is_said_once(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, configs: dict[str, str], named: str
) -> None:
    topic = f"deleting-{uuid.uuid4().hex[:12]}"
    await make_topic(kafka_bootstrap, topic, configs)
    with caplog.at_level(logging.WARNING, logger="gateway.eventlog.kafka_admin"):
        # the producer and the syncs at once (it was said twice), then later: once a process
        await asyncio.gather(ensure_topic(kafka_bootstrap, topic, 1), ensure_topic(kafka_bootstrap, topic, 1))
        await ensure_topic(kafka_bootstrap, topic, 1)
    warnings = [r.getMessage() for r in caplog.records if "deletes records" in r.getMessage()]
    assert len(warnings) == 1 and named in warnings[0] and topic in warnings[0], warnings
    assert "retention.ms=-1, retention.bytes=-1 and cleanup.policy=delete" in warnings[0]  # compaction too


async def test_a_retention_the_user_may_not_read_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A user without DESCRIBE_CONFIGS (the README's ACLs for serve): the check was skipped at
    DEBUG, and a topic that deleted records went unsaid (a re-test on a broker with ACLs)."""
    from types import SimpleNamespace

    class Refusing:
        async def describe_configs(self, resources: object) -> list[SimpleNamespace]:
            return [SimpleNamespace(resources=[(29, "Topic authorization failed.", 2, "llm.acl", [])])]

    with caplog.at_level(logging.INFO, logger="gateway.eventlog.kafka_admin"):
        await kafka_admin._warn_if_deleting(Refusing(), "llm.acl")  # type: ignore[arg-type]
    assert "the retention of Kafka topic llm.acl cannot be checked (TopicAuthorizationFailedError" in caplog.text
    assert "DESCRIBE_CONFIGS" in caplog.text


async def test_a_topic_that_keeps_everything_says_nothing(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"keeping-{uuid.uuid4().hex[:12]}"
    await make_topic(kafka_bootstrap, topic, dict(kafka_admin.TOPIC_CONFIGS))
    with caplog.at_level(logging.WARNING, logger="gateway.eventlog.kafka_admin"):
        await ensure_topic(kafka_bootstrap, topic, 1)
    assert "deletes records" not in caplog.text


async def test_a_topic_created_by_two_clients_at_once_is_created_once(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"raced-{uuid.uuid4().hex[:12]}"
    with caplog.at_level(logging.INFO, logger="gateway.eventlog.kafka_admin"):
        await asyncio.gather(*(ensure_topic(kafka_bootstrap, topic, 3) for _ in range(4)))
    created = [r for r in caplog.records if r.getMessage().startswith(f"created Kafka topic {topic}")]
    assert len(created) == 1
    assert "deletes records" not in caplog.text  # its own configs keep everything


async def test_every_client_of_a_raced_creation_returns_once_the_topic_has_its_partitions(
    kafka_bootstrap: str,
) -> None:
    """The clients that lost the creation returned before the topic had its partitions (a
    follower then found none: a diff read saw it in 2 of 15 rounds)."""

    async def ensure_then_describe(topic: str) -> list[int]:
        await ensure_topic(kafka_bootstrap, topic, 12)
        return await topic_partitions(kafka_bootstrap, topic)

    for _ in range(4):
        topic = f"raced-{uuid.uuid4().hex[:12]}"
        seen = await asyncio.gather(*(ensure_then_describe(topic) for _ in range(4)))
        assert seen == [list(range(12))] * 4
