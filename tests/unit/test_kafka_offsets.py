"""Committed offsets when the group's coordinator cannot answer yet (gateway/eventlog/kafka_offsets).

A CI run restarted its broker and asked a projector its lag at once: the coordinator, still
loading the group's offsets, answered OffsetFetch v3 with a group-level error and no partitions,
aiokafka read that as "nothing committed", and the lag was the whole topic. A consumer joining
at that moment would have read its partitions from the start again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import GroupAuthorizationFailedError, for_code
from aiokafka.protocol.commit import OffsetFetchResponse_v3
from aiokafka.structs import OffsetAndMetadata

from gateway.eventlog import kafka_offsets

TP = TopicPartition("usage", 0)
LOADING, NOT_AVAILABLE, NOT_COORDINATOR, UNAUTHORIZED = 14, 15, 16, 30


def group_error(code: int) -> Any:
    """What Kafka (OffsetFetchResponse.groupError, v2+) answers: the code, no partitions."""
    return OffsetFetchResponse_v3(0, [], code)


def committed(offset: int, partition_error: int = 0) -> Any:
    return OffsetFetchResponse_v3(0, [("usage", [(0, offset, "", partition_error)])], 0)


class FakeCoordinator(SimpleNamespace):
    """What GroupCoordinator.fetch_committed_offsets uses of its coordinator, answering with
    ``responses`` in turn."""

    def __init__(self, responses: list[Any]) -> None:
        super().__init__(group_id="projector", _retry_backoff_ms=1, sent=0, dead=0)
        self.responses = responses

    async def ensure_coordinator_known(self) -> None:
        return None

    async def _send_req(self, request: Any) -> Any:
        self.sent += 1
        return self.responses.pop(0)

    def coordinator_dead(self) -> None:
        self.dead += 1

    async def _do_fetch_commit_offsets(self, partitions: list[TopicPartition]) -> Any:
        return await GroupCoordinator._do_fetch_commit_offsets(self, partitions)  # type: ignore[arg-type]


async def fetch(responses: list[Any]) -> tuple[Any, FakeCoordinator]:
    kafka_offsets.install()
    coordinator = FakeCoordinator(responses)
    return await GroupCoordinator.fetch_committed_offsets(coordinator, [TP]), coordinator  # type: ignore[arg-type]


async def test_a_coordinator_still_loading_is_asked_again_not_taken_for_nothing_committed() -> None:
    offsets, coordinator = await fetch([group_error(LOADING), committed(20)])
    assert offsets == {TP: OffsetAndMetadata(20, "")}
    assert (coordinator.sent, coordinator.dead) == (2, 0)


@pytest.mark.parametrize("code", [NOT_AVAILABLE, NOT_COORDINATOR])
async def test_a_coordinator_gone_is_looked_up_again(code: int) -> None:
    offsets, coordinator = await fetch([group_error(code), committed(7)])
    assert offsets == {TP: OffsetAndMetadata(7, "")}
    assert (coordinator.sent, coordinator.dead) == (2, 1)


async def test_a_partition_without_a_commit_is_left_out_as_before() -> None:
    offsets, _ = await fetch([committed(-1)])
    assert offsets == {}


async def test_a_refusal_is_raised_not_taken_for_nothing_committed() -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        await fetch([group_error(UNAUTHORIZED)])


class FakeAdmin:
    def __init__(self, responses: list[Any]) -> None:
        self.responses = responses
        self.sent: list[tuple[Any, int]] = []

    async def find_coordinator(self, group_id: str) -> int:
        return 1

    async def _send_request(self, request: Any, node_id: int) -> Any:
        self.sent.append((request, node_id))
        return self.responses.pop(0)


async def test_the_admin_read_asks_again_while_the_coordinator_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_offsets, "ADMIN_BACKOFF", 0.0)
    admin = FakeAdmin([group_error(LOADING), group_error(NOT_AVAILABLE), committed(42)])
    assert await kafka_offsets.admin_committed(admin, "projector", [TP]) == {TP: 42}
    assert len(admin.sent) == 3


async def test_the_admin_read_gives_up_with_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_offsets, "ADMIN_BACKOFF", 0.0)
    admin = FakeAdmin([group_error(LOADING)] * kafka_offsets.ADMIN_ATTEMPTS)
    with pytest.raises(for_code(LOADING)):
        await kafka_offsets.admin_committed(admin, "projector", [TP])
    with pytest.raises(GroupAuthorizationFailedError):
        await kafka_offsets.admin_committed(FakeAdmin([group_error(UNAUTHORIZED)]), "projector", [TP])


def test_aiokafka_still_reads_committed_offsets_through_the_method_replaced() -> None:
    """An aiokafka that renamed the method would leave the fix a dead attribute: its readers of
    committed offsets must still call it (``pyproject.toml`` pins the versions checked)."""
    import inspect

    source = inspect.getsource(GroupCoordinator)
    for caller in kafka_offsets.CALLERS:
        body = inspect.getsource(getattr(GroupCoordinator, caller))
        assert "self._do_fetch_commit_offsets(" in body, caller
    assert "def _do_fetch_commit_offsets" in source  # aiokafka's own, which install() replaces
    kafka_offsets.install()
    assert GroupCoordinator._do_fetch_commit_offsets is kafka_offsets._coordinator_fetch
