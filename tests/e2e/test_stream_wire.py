"""The bytes of a stream as a client receives them, pinned per scenario, and the usage event it
records.

Each case runs a real stream through the gateway (real adapters, provider simulators, a fixed
clock) and compares the body byte for byte with ``stream_wire/<case>.sse``: chunk ids, the
``model`` field, ``created``, the role delta, ``usage: null`` on content chunks, the usage chunk
with ``x_llm_gateway``, the cost comment, ``[DONE]``, and the error event of a broken stream.
The request id (random) is written as ``REQ``. Any faster stream path must keep these bytes.

To re-record after an intended change of the wire format::

    LLM_GATEWAY_RECORD_STREAM_WIRE=1 python -m pytest tests/e2e/test_stream_wire.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.pricing.base import format_usd
from gateway.routing.catalog import KNOWN_PROVIDERS
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault, Simulator
from tests.bench.upstream import Upstream
from tests.support.gateway import RunningGateway, running_gateway, start_app

GOLDEN = Path(__file__).parent / "stream_wire"
RECORD = os.environ.get("LLM_GATEWAY_RECORD_STREAM_WIRE") == "1"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
#: JSON-hostile text: quotes, backslash, control characters, non-ASCII, U+2028, an emoji
AWKWARD = 'Héllo "wörld" \\ back\tslash\nnew line \u2028 \U0001f600 end'


@dataclass
class Expect:
    outcome: str = "success"
    #: (prompt, completion) tokens of the event; None: no usage recorded
    tokens: tuple[int, int] | None = None
    served_model: str | None = None
    priced: bool = True


@dataclass
class Case:
    path: str
    body: dict[str, Any]
    expect: Expect
    setup: Callable[[dict[str, Simulator]], None] = field(default=lambda sims: None)


def _chat(model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me now"}], "stream": True, **extra}


USAGE = {"stream_options": {"include_usage": True}}


def _set(name: str, **values: Any) -> Callable[[dict[str, Simulator]], None]:
    def setup(sims: dict[str, Simulator]) -> None:
        for key, value in values.items():
            setattr(sims[name], key, value)

    return setup


def _fault(name: str, fault: Fault) -> Callable[[dict[str, Simulator]], None]:
    def setup(sims: dict[str, Simulator]) -> None:
        sims[name].faults.push(fault)

    return setup


def _both(*setups: Callable[[dict[str, Simulator]], None]) -> Callable[[dict[str, Simulator]], None]:
    def setup(sims: dict[str, Simulator]) -> None:
        for one in setups:
            one(sims)

    return setup


CASES: dict[str, Case] = {
    "openai_usage": Case("/v1/chat/completions", _chat(**USAGE), Expect(tokens=(3, 8))),
    "openai_no_usage": Case("/v1/chat/completions", _chat(), Expect(tokens=(3, 8))),
    "openai_served_model_details_awkward_text": Case(
        "/v1/chat/completions",
        _chat(**USAGE),
        Expect(tokens=(3, 14), served_model="gpt-4o-2024-08-06"),
        _set("openai", served_model="gpt-4o-2024-08-06", cached_tokens=2, reasoning_tokens=5, reply=AWKWARD),
    ),
    "openai_crlf": Case("/v1/chat/completions", _chat(**USAGE), Expect(tokens=(3, 8)), _set("openai", crlf=True)),
    "openai_length": Case("/v1/chat/completions", _chat(max_tokens=3, **USAGE), Expect(tokens=(3, 3))),
    "openai_content_filter": Case(
        "/v1/chat/completions", _chat(**USAGE), Expect(tokens=(3, 0)), _fault("openai", Fault("content_filter"))
    ),
    "openai_cut": Case(
        "/v1/chat/completions",
        _chat(**USAGE),
        Expect(outcome="stream_cut", priced=False),
        _fault("openai", Fault("cut", after_chunks=2)),
    ),
    "openai_inband_error": Case(
        "/v1/chat/completions",
        _chat(**USAGE),
        Expect(outcome="stream_cut", priced=False),
        _fault("openai", Fault("stream_error", after_chunks=3)),
    ),
    "openai_legacy_text": Case(
        "/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon", "stream": True, **USAGE},
        Expect(tokens=(2, 8)),
    ),
    "openai_legacy_text_awkward": Case(
        "/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon", "stream": True},
        Expect(tokens=(2, 9)),
        _set("openai", reply=AWKWARD),
    ),
    "openai_legacy_via_chat": Case(
        "/v1/completions", {"model": "gpt-3.5-turbo", "prompt": "Go", "stream": True, **USAGE}, Expect(tokens=(1, 8))
    ),
    "azure_usage": Case("/v1/chat/completions", _chat(provider="azure", **USAGE), Expect(tokens=(3, 8))),
    "azure_without_stream_usage": Case(
        "/v1/chat/completions",
        _chat(provider="azure", **USAGE),
        Expect(tokens=None, priced=False),  # served without usage: billable, its cost unknown (not free)
        _set("azure", stream_usage_supported=False),
    ),
    "azure_cut": Case(
        "/v1/chat/completions",
        _chat(provider="azure", **USAGE),
        Expect(outcome="stream_cut", priced=False),
        _both(_fault("azure", Fault("cut", after_chunks=4)), _set("azure", reply=AWKWARD)),
    ),
    "anthropic_usage": Case("/v1/chat/completions", _chat(provider="anthropic", **USAGE), Expect(tokens=(3, 8))),
    "google_usage": Case("/v1/chat/completions", _chat(provider="google", **USAGE), Expect(tokens=(3, 8))),
    "ollama_no_usage": Case("/v1/chat/completions", _chat(provider="ollama"), Expect(tokens=(3, 8))),
}


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway(clock=lambda: NOW) as running:
        yield running


def _normalised(body: bytes, request_id: str) -> str:
    return body.decode().replace(request_id.removeprefix("req_"), "REQ").replace("req_REQ", "REQ")


@pytest.mark.parametrize("name", sorted(CASES))
async def test_stream_bytes_and_event(gw: RunningGateway, name: str) -> None:
    case = CASES[name]
    case.setup(gw.sims)
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.url + case.path, json=case.body, headers={"authorization": "Bearer x"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"] == "text/event-stream"
        body = await resp.read()
        request_id = resp.headers["x-request-id"]
    got = _normalised(body, request_id)
    golden = GOLDEN / f"{name}.sse"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_bytes(got.encode())
    assert got == golden.read_bytes().decode()

    *_, event = gw.event_log.events
    expect = case.expect
    assert (event.request_id, event.outcome, event.incomplete) == (
        request_id,
        expect.outcome,
        expect.outcome != "success",
    )
    assert (event.prompt_tokens, event.completion_tokens) == (expect.tokens or (0, 0))
    if expect.served_model is not None:
        assert event.served_model == expect.served_model
    assert (event.cost_usd is not None) == expect.priced
    assert event.ttft_ms is not None and 0 <= event.ttft_ms <= event.latency_ms
    if expect.outcome == "success":
        cost = format_usd(event.cost_usd) if event.cost_usd is not None else "unpriced"
        assert f": x-llm-cost-usd={cost}\n\ndata: [DONE]\n\n" in got
        assert event.billable == (expect.tokens != (0, 0))


# --- a stream whose end comes in the same read as its content ----------------------------------


@pytest.fixture
async def burst_upstream() -> AsyncIterator[str]:
    """The benchmark's upstream: the whole SSE body (role chunk, 9 words, finish, usage chunk,
    ``[DONE]``) in one write, so the gateway reads it in one piece."""
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


def _openai_at(url: str) -> dict[str, ProviderSettings]:
    providers = {name: ProviderSettings(enabled=False) for name in KNOWN_PROVIDERS}
    providers["openai"] = ProviderSettings(api_key="sk-test", base_url=url)
    return providers


async def test_a_stream_read_in_one_piece_is_answered_in_one_write(
    burst_upstream: str, gateway_heads: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One handler write (``write_eof``), and one socket write with the head: aiohttp's
    StreamResponse sends the head alone, one more packet and one more client read."""
    writes: list[bytes] = []
    write = web.StreamResponse.write

    async def counted(self: web.StreamResponse, data: bytes) -> None:
        writes.append(bytes(data))
        await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", counted)
    async with (
        running_gateway(providers=(), settings={"providers": _openai_at(burst_upstream)}, clock=lambda: NOW) as gw,
        aiohttp.ClientSession() as http,
        http.post(gw.url + "/v1/chat/completions", json=_chat(**USAGE)) as resp,
    ):
        body = await resp.read()
        request_id = resp.headers["x-request-id"]
    got = _normalised(body, request_id)
    golden = GOLDEN / "one_read.sse"
    if RECORD:
        golden.write_bytes(got.encode())
    assert got == golden.read_bytes().decode()
    assert writes == []  # content, usage chunk, cost comment and [DONE]: all in write_eof
    [head] = gateway_heads
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ntransfer-encoding: chunked\r\n" in head.lower()
    assert head.endswith(body[-50:] + b"\r\n0\r\n\r\n")  # all of it: [DONE] and the last chunk
    [event] = gw.event_log.events
    assert (event.outcome, event.prompt_tokens, event.completion_tokens) == ("success", 5, 9)
    assert event.served_model == "gpt-4o-2024-08-06" and event.cost_usd is not None
    assert f": x-llm-cost-usd={format_usd(event.cost_usd)}\n\ndata: [DONE]\n\n" in got


def _paced_upstream(texts: list[str], pause: Callable[[], Awaitable[object]]) -> web.Application:
    """An OpenAI upstream that streams one content event per text, awaiting ``pause()`` after
    each, then ``[DONE]``."""

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for text in texts:
            chunk = {"model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": {"content": text}}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await pause()
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture
def gateway_heads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every socket write of the process that carries the gateway's answer head (the upstream's
    have no ``x-request-id``), as written: what the client gets in one packet. A ``writelines``
    call is one write (aiohttp uses it for larger payloads on Python 3.12+, one ``sendmsg``)."""
    heads: list[bytes] = []
    transport = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    write = transport.write

    def recorded(self: asyncio.Transport, data: bytes) -> None:
        if b"\r\nx-request-id: " in data:
            heads.append(bytes(data))
        write(self, data)

    def recorded_lines(self: asyncio.Transport, chunks: Iterable[bytes]) -> None:
        recorded(self, b"".join(chunks))

    monkeypatch.setattr(transport, "write", recorded)
    monkeypatch.setattr(transport, "writelines", recorded_lines)
    return heads


async def test_the_head_of_a_stream_goes_out_with_its_first_read_not_later(gateway_heads: list[bytes]) -> None:
    """The upstream sends one event, then holds the rest back: the client has the head and that
    event while it waits, in one write."""
    rest = asyncio.Event()
    runner, url = await start_app(_paced_upstream(["early", "late"], rest.wait))
    try:
        async with (
            running_gateway(providers=(), settings={"providers": _openai_at(url + "/v1")}, clock=lambda: NOW) as gw,
            aiohttp.ClientSession() as http,
        ):
            async with asyncio.timeout(10):  # the head and the first event come while the rest waits
                resp = await http.post(gw.url + "/v1/chat/completions", json=_chat())
                first = await resp.content.readuntil(b"\n\n")
            assert not rest.is_set() and b'"content":"early"' in first
            assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
            [head] = gateway_heads
            assert b'"content":"early"' in head and b"late" not in head
            rest.set()
            body = first + await resp.read()
    finally:
        rest.set()  # a failed assertion must not leave the upstream's handler waiting
        await runner.cleanup()
    assert b'"content":"late"' in body and body.endswith(b"data: [DONE]\n\n")
    [event] = gw.event_log.events
    assert event.outcome == "success"


async def test_a_client_gone_mid_stream_is_recorded_as_cancelled_with_what_was_seen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The upstream sends a chunk every 50 ms; the client reads the first and hangs up: the next
    write fails and the attempt is recorded as cancelled (incomplete), served model included,
    with its cost line (unknown: the provider may bill what it generated)."""
    caplog.set_level(logging.INFO, logger="gateway.cost")
    runner, url = await start_app(_paced_upstream([f"w{i} " for i in range(40)], lambda: asyncio.sleep(0.05)))
    try:
        settings = {"providers": _openai_at(url + "/v1")}
        async with running_gateway(providers=(), settings=settings, clock=lambda: NOW) as gw:
            async with aiohttp.ClientSession() as http:
                resp = await http.post(gw.url + "/v1/chat/completions", json=_chat())
                first = await resp.content.readuntil(b"\n\n")
                assert b'"content":"w0 "' in first
                resp.close()  # the client goes away
            for _ in range(100):
                if gw.event_log.events:
                    break
                await asyncio.sleep(0.05)
            [event] = gw.event_log.events
    finally:
        await runner.cleanup()
    assert (event.outcome, event.incomplete, event.served_model) == ("cancelled", True, "gpt-4o-2024-08-06")
    assert event.ttft_ms is not None and event.ttft_ms <= event.latency_ms
    assert (event.billable, event.cost_usd) == (True, None)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
    assert lines == ["Cost | tenant=default provider=openai model=gpt-4o-2024-08-06 cost=unpriced"]
