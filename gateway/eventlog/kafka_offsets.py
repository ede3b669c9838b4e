"""A group's committed offsets, read so that a coordinator that cannot answer yet is no "none".

From OffsetFetch v2 a coordinator that cannot answer for a group (it is still loading the
offsets after a broker restart, has moved, or is unavailable) says so once, in the response's
group-level error code, and lists no partitions. aiokafka 0.14 reads only the per-partition
codes, so it took such an answer for "this group has committed nothing": ``committed()`` was
None, a consumer joining then started its partitions over from ``auto_offset_reset`` (the whole
usage log read and projected again), and a lag was the whole topic (a CI run, right after a
broker restart). Kafka's own client and pykafka#958 treat the group-level code as the error it
is; so does this module, for aiokafka's group coordinator (its ``committed()`` and its positions
on assignment) and for the admin client's read (replay's "behind").
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaError,
    NoError,
    NotCoordinatorForGroupError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.structs import OffsetAndMetadata

#: errors after which the group's coordinator is looked up again
_COORDINATOR_MOVED = (GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError)
#: attempts of :func:`admin_committed` while the coordinator cannot answer
ADMIN_ATTEMPTS = 20
ADMIN_BACKOFF = 0.3


def _request(group_id: str, partitions: Iterable[TopicPartition]) -> Any:
    topics: dict[str, list[int]] = defaultdict(list)
    for tp in partitions:
        topics[tp.topic].append(tp.partition)
    return OffsetFetchRequest(group_id, list(topics.items()))


def offsets_of(response: Any) -> dict[TopicPartition, OffsetAndMetadata]:
    """The committed offsets an OffsetFetch response gives (a partition without one is left out).
    Raises the group-level error, then the first partition-level one."""
    group_error = for_code(getattr(response, "error_code", 0))
    if group_error is not NoError:
        raise group_error()
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, partitions in response.topics:
        for partition, offset, metadata, error_code in partitions:
            error = for_code(error_code)
            if error is UnknownTopicOrPartitionError:
                continue  # as aiokafka: the topic is gone, so is its offset
            if error is not NoError:
                raise error(f"committed offset of {topic}[{partition}]")
            if offset >= 0:
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, metadata)
    return offsets


async def _coordinator_fetch(self: Any, partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
    """``GroupCoordinator._do_fetch_commit_offsets`` that heeds the group-level error: a
    retriable one is raised for ``fetch_committed_offsets`` to wait and ask again."""
    response = await self._send_req(_request(self.group_id, partitions))
    try:
        return offsets_of(response)
    except _COORDINATOR_MOVED:
        self.coordinator_dead()
        raise


async def admin_committed(admin: Any, group_id: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The committed offsets of ``group_id`` on ``partitions`` through an aiokafka admin client
    (a partition without one is left out), asking again while the coordinator cannot answer."""
    for attempt in range(1, ADMIN_ATTEMPTS + 1):
        try:
            coordinator = await admin.find_coordinator(group_id)
            response = await admin._send_request(_request(group_id, partitions), coordinator)
            return {tp: meta.offset for tp, meta in offsets_of(response).items()}
        except KafkaError as e:
            if not e.retriable or attempt == ADMIN_ATTEMPTS:
                raise
        await asyncio.sleep(ADMIN_BACKOFF)
    raise AssertionError("unreachable")


#: the aiokafka methods that read committed offsets through the one this module replaces
#: (checked by the tests against the installed aiokafka: a renamed method is no silent no-op)
CALLERS = ("fetch_committed_offsets", "_maybe_refresh_commit_offsets")


def install() -> None:
    """Make aiokafka's group coordinator read committed offsets with :func:`_coordinator_fetch`."""
    if GroupCoordinator.__dict__.get("_do_fetch_commit_offsets") is _coordinator_fetch:
        return
    if not callable(getattr(GroupCoordinator, "_do_fetch_commit_offsets", None)):
        raise RuntimeError(
            "aiokafka's GroupCoordinator has no _do_fetch_commit_offsets: this aiokafka is not one "
            "gateway/eventlog/kafka_offsets.py knows (pyproject.toml pins the versions it does)"
        )
    GroupCoordinator._do_fetch_commit_offsets = _coordinator_fetch
