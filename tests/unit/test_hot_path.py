"""The request path's fast paths give the same answers as the slow ones they replace."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from gateway import errors
from gateway.events import UsageEvent
from gateway.ids import request_id, uuid7, uuid7_str
from gateway.providers import openai_wire as wire
from gateway.providers.sse import SseEvent, iter_sse, iter_sse_batches
from gateway.routing.catalog import ModelCatalog
from gateway.types import ChatRequest, StreamChunk, Usage
from gateway.usage import CallContext
from tests.support.fakes import ScriptedProvider
from tests.unit.test_router import TEMPLATE, make_router


def _event(**changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "event_id": uuid7_str(),
        "request_id": request_id(),
        "attempt": 1,
        "created_at": datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "tenant_id": "tenant_1",
        "provider": "openai",
        "requested_model": "gpt-4o",
        "provider_model": "gpt-4o",
        "served_model": "gpt-4o-2024-08-06",
        "outcome": "success",
        "http_status": 200,
        "latency_ms": 12.345,
        "ttft_ms": 3.5,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "cost_usd": Decimal("0.000150"),
        "price_version": "v1",
        "billable": True,
    }
    return UsageEvent(**(fields | changes))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cost_usd": None, "billable": True, "incomplete": True, "outcome": "stream_cut"},
        {"cost_usd": Decimal("1E-9")},
        {"cost_usd": Decimal("12.50000")},
        {"created_at": datetime(2024, 1, 1, tzinfo=UTC)},  # no microseconds
        {"created_at": datetime(2024, 1, 1, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2)))},
        {"latency_ms": 1e-05, "ttft_ms": None, "error_message": 'é\u2028"quoted"\nline', "api_key_id": "key_x"},
        {"endpoint": "completions", "stream": True, "gateway_instance": "gw-1", "error_code": "rate_limit"},
    ],
)
def test_event_encoding_is_byte_identical_to_pydantic(changes: dict[str, Any]) -> None:
    event = _event(**changes)
    assert event.to_json() == event.model_dump_json().encode()
    assert UsageEvent.from_json(event.to_json()) == event


def test_the_duckdb_sinks_batch_file_is_pydantics_list_dump() -> None:
    from pydantic import TypeAdapter

    from consumers.sinks.duckdb import batch_json

    events = [_event(cost_usd=None, billable=True, incomplete=True, outcome="stream_cut"), _event(), _event()]
    assert batch_json(events) == TypeAdapter(list[UsageEvent]).dump_json(events)
    assert batch_json([]) == b"[]"


def test_uuid7_str_and_request_id_are_ordered_v7_uuids() -> None:
    ids = [uuid7_str() for _ in range(3000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for text in ids[:10]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    rid = request_id()
    assert rid.startswith("req_") and uuid.UUID(rid[4:]).version == 7
    assert uuid7().version == 7


def _random_bits(ids: list[str]) -> set[int]:
    return {uuid.UUID(text).int & 0x3FFFFFFFFFFFFFFF for text in ids}


def test_uuid7_random_bits_are_fresh_across_the_os_pool_refill() -> None:
    ids = [uuid7_str() for _ in range(2500)]  # several refills of the 400-id pool
    assert len(_random_bits(ids)) == len(ids)


def test_a_forked_child_never_repeats_its_parents_random_bits() -> None:
    uuid7_str()  # the parent's pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        os.close(read)
        os.write(write, "\n".join(uuid7_str() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = [uuid7_str() for _ in range(50)]
    assert len(child) == 50
    assert not _random_bits(child) & _random_bits(parent)


async def test_candidate_cache_follows_priority_and_native_first() -> None:
    router, _, _ = make_router()
    router.providers = {"openai": object(), "anthropic": object()}  # type: ignore[dict-item]
    first = router.candidates("claude-3-haiku", None)
    assert [c.provider for c in first] == ["anthropic", "openai"]
    first.clear()  # callers get their own list
    assert [c.provider for c in router.candidates("claude-3-haiku", None)] == ["anthropic", "openai"]
    router.native_first = False
    assert [c.provider for c in router.candidates("claude-3-haiku", None)] == ["openai", "anthropic"]
    router.priority = ["anthropic", "openai"]
    assert [c.provider for c in router.candidates("gpt-4", None)] == ["anthropic", "openai"]
    expected = ModelCatalog().candidates(
        "gpt-4", priority=["anthropic", "openai"], configured=router.providers, native_first=False
    )
    assert router.candidates("gpt-4", None) == expected


# --- streams: one write per upstream read ---------------------------------------------------


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_sse_batches_group_the_events_of_one_read() -> None:
    reads = (b"data: a\n\ndata: b\n\nda", b"ta: c\r\n\r\n: comment\n\n", b"data: d")
    batches = [[e.data for e in batch] async for batch in iter_sse_batches(_pieces(*reads))]  # type: ignore[arg-type]
    assert batches == [["a", "b"], ["c"], ["d"]]
    flat = [e.data async for e in iter_sse(_pieces(*reads))]  # type: ignore[arg-type]
    assert flat == ["a", "b", "c", "d"]


def _chunk(text: str) -> str:
    return orjson.dumps({"model": "m", "choices": [{"delta": {"content": text}}]}).decode()


async def _batches_of(*batches: list[str]) -> AsyncIterator[list[SseEvent]]:
    for batch in batches:
        yield [SseEvent(None, data) for data in batch]


async def test_parse_stream_batches_yields_what_came_before_a_bad_event_or_done() -> None:
    got: list[list[str]] = []
    with pytest.raises(errors.MalformedResponse):
        async for batch in wire.parse_stream_batches(
            _batches_of([_chunk("a")], [_chunk("b"), _chunk("c"), "{bad"]), provider="openai"
        ):
            got.append([c.text for c in batch])
    assert got == [["a"], ["b", "c"]]  # the client still gets b and c, as one chunk at a time would
    done = wire.parse_stream_batches(_batches_of([_chunk("a"), "[DONE]", _chunk("x")]), provider="openai")
    assert [[c.text for c in b] async for b in done] == [["a"]]
    with pytest.raises(errors.StreamCut):
        _ = [b async for b in wire.parse_stream_batches(_batches_of([_chunk("a")]), provider="openai")]


class BatchingProvider(ScriptedProvider):
    """Streams in the batches given (``stream`` is never used when ``stream_batches`` exists)."""

    def __init__(self, name: str, batches: list[list[StreamChunk]]) -> None:
        super().__init__(name)
        self.batches = batches

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        raise AssertionError("the router should use stream_batches")

    async def stream_batches(self, request: ChatRequest) -> AsyncIterator[list[StreamChunk]]:
        for batch in self.batches:
            yield batch


async def test_router_keeps_a_providers_batches_and_holds_back_empty_heads() -> None:
    batches = [
        [StreamChunk(model="m")],  # role-only head: held back with the first content
        [StreamChunk("Hel"), StreamChunk("lo")],
        [StreamChunk(finish_reason="stop"), StreamChunk(usage=Usage(3, 2))],
    ]
    router, log, _ = make_router(BatchingProvider("openai", batches))
    session = await router.open_stream(CallContext("req_1", "t", None, "chat.completions", True, "gpt-4"), TEMPLATE)
    got = [[c.text for c in batch] async for batch in session.batches()]
    assert got == [["", "Hel", "lo"], ["", ""]]
    event = session.finish("success")
    assert session.usage == Usage(3, 2) and event.completion_tokens == 2 and log.events == [event]
