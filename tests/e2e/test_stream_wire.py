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

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.pricing.base import format_usd
from gateway.simulators.base import Fault, Simulator
from tests.support.gateway import RunningGateway, running_gateway

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
        Expect(tokens=None),  # no usage: recorded as zero tokens
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
        assert f": x-llm-cost-usd={format_usd(event.cost_usd)}\n\ndata: [DONE]\n\n" in got
