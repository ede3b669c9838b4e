"""``Expect: 100-continue``: the gateway asks for a body only once the request could be taken.
A wrong key or a declared body over the limit is the final answer at once (no ``100 Continue``,
no upload of the body), in the OpenAI error format, and the connection is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.settings import ApiKey
from tests.e2e.test_parquet_export import embedded
from tests.e2e.test_request_body_faults import fetch_metrics
from tests.support.gateway import RunningGateway, running_gateway

KEYS = [ApiKey(key="sk-tenant", tenant="acme"), ApiKey(key="sk-admin", tenant="ops", admin=True)]
BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
LIMIT = 4096


@pytest.fixture
async def keyed() -> AsyncIterator[RunningGateway]:
    async with running_gateway(providers=("openai",), settings={"api_keys": KEYS, "max_body_bytes": LIMIT}) as gw:
        yield gw


async def ask(
    gw: RunningGateway,
    *,
    key: str,
    length: int = len(BODY),
    expect: str = "100-continue",
    path: str = "chat/completions",
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the head alone and read what the gateway says before any body is sent."""
    url = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"POST /v1/{path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {length}\r\nexpect: {expect}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head, reader, writer


async def refusal(gw: RunningGateway, **kwargs: object) -> tuple[int, dict[str, object], bytes]:
    """The final answer to a head the gateway refuses; the connection then closes."""
    head, reader, writer = await ask(gw, **kwargs)  # type: ignore[arg-type]
    try:
        assert not head.startswith(b"HTTP/1.1 100"), head
        rest = await asyncio.wait_for(reader.read(), 2)  # to EOF: the gateway closes at once
        error = orjson.loads(rest)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return int(head.split(b" ", 2)[1]), error, head.lower()
    finally:
        writer.close()


async def test_a_wrong_key_is_refused_before_the_body_is_asked_for(keyed: RunningGateway) -> None:
    status, error, head = await refusal(keyed, key="sk-wrong")
    assert (status, error["code"]) == (401, "invalid_api_key")
    assert b"connection: close" in head and b"x-request-id" in head
    assert keyed.sims["openai"].requests == [] and keyed.event_log.events == []


async def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(keyed: RunningGateway) -> None:
    status, error, _ = await refusal(keyed, key="sk-tenant", length=LIMIT + 1)
    assert (status, error["code"]) == (413, "request_too_large")
    assert str(LIMIT) in str(error["message"])
    assert keyed.sims["openai"].requests == []


async def test_an_expectation_other_than_100_continue_is_a_417(keyed: RunningGateway) -> None:
    status, error, _ = await refusal(keyed, key="sk-tenant", expect="something-else")
    assert (status, error["code"]) == (417, "expectation_failed")


async def test_a_request_that_may_be_taken_gets_100_continue_then_its_answer(keyed: RunningGateway) -> None:
    head, reader, writer = await ask(keyed, key="sk-tenant")
    try:
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        writer.close()
    assert len(keyed.sims["openai"].requests) == 1


async def test_refusals_before_the_body_are_counted_in_the_metrics(keyed: RunningGateway) -> None:
    await refusal(keyed, key="sk-wrong")
    await refusal(keyed, key="sk-tenant", length=LIMIT + 1)
    metrics = await fetch_metrics(keyed)
    assert 'llm_gateway_requests_total{route="/v1/chat/completions",status="401"} 1.0' in metrics
    assert 'llm_gateway_requests_total{route="/v1/chat/completions",status="413"} 1.0' in metrics
    assert 'llm_gateway_error_answers_total{code="invalid_api_key"} 1.0' in metrics


async def test_the_admin_endpoints_refuse_a_wrong_key_before_the_body_too(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        for path in ("analytics/sql", "analytics/export", "admin/replay"):
            status, error, _ = await refusal(gw, key="sk-wrong", path=path)
            assert (status, error["code"]) == (401, "invalid_api_key"), path
