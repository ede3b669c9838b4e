"""Kafka helpers shared by the producer, the reader and the dead-letter adapter."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.eventlog.log_errors import describe

log = logging.getLogger(__name__)

#: replicate to at most this many brokers when the replication factor is left to us
MAX_AUTO_REPLICATION = 3


#: configs of the topics this project creates: keep every record (replay needs all history).
#: Records keep the producer's time (CreateTime: the event's ``created_at``), which ``replay
#: --since`` seeks by; LogAppendTime was tried and lost the events stamped after their append
#: time. A record the broker refuses for its time is sent again with the current time (the
#: forwarder's ``_stamp_now``).
TOPIC_CONFIGS: dict[str, str] = {"retention.ms": "-1", "retention.bytes": "-1"}


async def topic_partitions(
    bootstrap_servers: str | KafkaConnection, topic: str, *, client_id: str = "llm-gateway"
) -> list[int]:
    """The partition ids of ``topic`` as the cluster describes them ([] if it does not exist).
    A group-less consumer has no metadata of its own for a topic, and aiokafka's ``topics()``
    fills a throwaway metadata object, so ask the cluster directly."""
    admin = AIOKafkaAdminClient(**kafka_connection(bootstrap_servers).client_options(), client_id=client_id)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            return sorted(int(p["partition"]) for p in entry.get("partitions") or [])
    return []


async def ensure_topic(
    bootstrap_servers: str | KafkaConnection,
    topic: str,
    partitions: int,
    *,
    replication_factor: int | None = None,
    client_id: str = "llm-gateway",
    request_timeout_ms: int = 10_000,
) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists (an existing topic is
    left as it is). ``replication_factor=None`` means min(3, brokers in the cluster).

    Topics are created with unlimited retention (:data:`TOPIC_CONFIGS`): the usage log is the
    source of truth that replay re-costs history from, so Kafka must not age it out."""
    admin = AIOKafkaAdminClient(
        **kafka_connection(bootstrap_servers).client_options(),
        client_id=client_id,
        request_timeout_ms=request_timeout_ms,
    )
    try:
        await admin.start()
        if topic in set(await admin.list_topics()):
            await _warn_if_deleting(admin, topic)
            return
        if replication_factor is None:
            brokers = (await admin.describe_cluster()).get("brokers") or [None]
            replication_factor = min(MAX_AUTO_REPLICATION, len(brokers))
        try:
            response = await admin.create_topics(
                [
                    NewTopic(
                        topic,
                        num_partitions=partitions,
                        replication_factor=replication_factor,
                        topic_configs=dict(TOPIC_CONFIGS),
                    )
                ]
            )
        except TopicAlreadyExistsError:
            await _wait_for_leaders(admin, topic)  # another client's, maybe not ready yet
            return
        if not _created(response):  # another client made it meanwhile ("created" was logged twice)
            await _wait_for_leaders(admin, topic)  # ... and its partitions may have no leader yet
            return
        log.info(
            "created Kafka topic %s (%d partitions, replication %d)",
            topic,
            partitions,
            replication_factor,
        )
        await _wait_for_leaders(admin, topic)
    finally:
        await admin.close()


def _created(response: Any) -> bool:
    """Whether CreateTopics made the topic: False when it existed already; raises its other
    errors."""
    created = True
    for entry in getattr(response, "topic_errors", ()):
        code = entry[1]
        if code and for_code(code) is TopicAlreadyExistsError:
            created = False
        elif code:
            raise for_code(code)(f"creating topic {entry[0]}: {entry[2] if len(entry) > 2 else ''}")
    return created


def topic_limits(resources: Any) -> tuple[list[str], str | None]:
    """DescribeConfigs' resources (``(error_code, error_message, type, name, entries)``) as the
    topic configs that delete records (a ``retention.ms`` or ``retention.bytes`` other than
    -1, a compacting ``cleanup.policy``: the key is the tenant, so compaction keeps one event a
    tenant), and why they could not be read (None: they were; a user without
    DESCRIBE_CONFIGS gets an error code and no entries, which read as no limits)."""
    limits: list[str] = []
    for error_code, error_message, _type, _name, entries in resources:
        if error_code:
            return limits, f"{for_code(error_code).__name__}{f': {error_message}' if error_message else ''}"
        for entry in entries:
            config, value = entry[0], entry[1]
            if config in ("retention.ms", "retention.bytes") and value not in (None, "-1"):
                limits.append(f"{config}={value}")
            elif config == "cleanup.policy" and value and "compact" in value:
                limits.append(f"{config}={value}")
    return limits, None


async def retention_configs(admin: AIOKafkaAdminClient, topic: str) -> list[Any]:
    """DescribeConfigs' resources of ``topic``'s configs that may delete records (for
    :func:`topic_limits`)."""
    wanted = {"retention.ms": None, "retention.bytes": None, "cleanup.policy": None}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, wanted)])
    return [resource for response in responses for resource in response.resources]


#: topics this process has checked for a retention that deletes records
_RETENTION_CHECKED: set[str] = set()


async def _warn_if_deleting(admin: AIOKafkaAdminClient, topic: str) -> None:
    """A WARNING, once a process, for an existing topic that deletes records (a managed
    cluster's default: Confluent Cloud keeps 7 days): its events were taken silently, and went
    with the retention, out of the reach of replay and of a store's rebuild (a review)."""
    if topic in _RETENTION_CHECKED:
        return
    _RETENTION_CHECKED.add(topic)  # before the wait: the forwarder and the syncs check at once
    try:
        limits, unreadable = topic_limits(await retention_configs(admin, topic))
    except Exception as exc:  # noqa: BLE001 - a check, never a reason not to start; tried again next time
        _RETENTION_CHECKED.discard(topic)
        log.debug("the configs of Kafka topic %s cannot be read: %s", topic, describe(exc))
        return
    if limits:
        log.warning(
            "Kafka topic %s deletes records (%s): what it deletes is out of the reach of replay and of a "
            "store's rebuild; set retention.ms=-1, retention.bytes=-1 and cleanup.policy=delete on it (the "
            "gateway makes its topics so)",
            topic,
            ", ".join(limits),
        )
    elif unreadable:
        # a user without DESCRIBE_CONFIGS: said, not at DEBUG (a re-test's deleting topic went unsaid)
        log.info(
            "the retention of Kafka topic %s cannot be checked (%s): give this Kafka user DESCRIBE_CONFIGS on it "
            "to have a topic that deletes records said at start",
            topic,
            unreadable,
        )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, seconds: float = 10.0) -> None:
    """A new topic's partitions get leaders a moment after CreateTopics returns."""
    async with asyncio.timeout(seconds):
        while True:
            described = await admin.describe_topics([topic])
            parts = (described[0].get("partitions") or []) if described else []
            if parts and all(p.get("leader", -1) >= 0 for p in parts):
                return
            await asyncio.sleep(0.1)


async def stop_producer(producer: AIOKafkaProducer, seconds: float) -> None:
    """``producer.stop()`` within ``seconds``: it waits for every batch to be delivered, which
    never happens while the broker is down (an idempotent producer retries forever). At the
    deadline its sender is cancelled, so the producer closes and the undelivered batches are
    abandoned (the spool still holds their events)."""
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=max(seconds, 0.0))
    if not done:
        # aiokafka has no public "abort": stopping its sender lets stop() go on and close
        sender_task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender_task is not None:
            sender_task.cancel()
        done, _ = await asyncio.wait({stopping}, timeout=5.0)
        if not done:
            stopping.cancel()
    try:
        await stopping
    except asyncio.CancelledError:
        if not stopping.cancelled():
            raise
        log.warning("Kafka producer did not stop cleanly")
    except Exception:  # closing must not fail the shutdown
        log.warning("error while stopping the Kafka producer", exc_info=True)


async def stop_consumer(consumer: AIOKafkaConsumer, seconds: float = 10.0) -> None:
    """``consumer.stop()`` (it leaves the group) within ``seconds``; what fails inside it is
    logged, not raised, as closing must not fail the shutdown: with the broker gone, aiokafka's
    fetcher re-raised its cancelled fetch from ``stop()``, and a SIGTERM'd ``consume`` exited 1
    with a traceback and left its DuckDB file unclosed (a re-test). A cancellation of the caller
    itself still goes through."""
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        # the stop's own outcome is read from the task, never re-raised here: the only
        # CancelledError that leaves is the caller's (a Ctrl-C's cleanup runs in a task being
        # cancelled, so "is the caller cancelling?" could not tell the two apart: a review)
        done, _ = await asyncio.wait({stopping}, timeout=max(seconds, 0.0))
        if not done:
            log.warning("the Kafka consumer did not stop within %.0fs: left as it is", seconds)
            stopping.cancel()
            await asyncio.wait({stopping}, timeout=1.0)
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    if not stopping.done():
        return
    if stopping.cancelled():
        if done:
            log.warning("the Kafka consumer's stop was cut short inside aiokafka (a broker gone?)")
    elif (error := stopping.exception()) is not None:
        log.warning("error while stopping the Kafka consumer: %s", describe(error))
