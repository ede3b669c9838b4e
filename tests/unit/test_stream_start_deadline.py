"""A stream start cut short by the request timeout (the router's first-content deadline): what
the attempt was depends on how far its request got. Sent whole, the provider bills it, at a cost
nobody told us; still waiting for a free connection, nothing was sent and it is no attempt (a
diff review found both recorded as free provider timeouts)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from gateway import errors
from gateway.eventlog.memory import MemoryEventLog
from gateway.providers.base import Timeouts
from gateway.providers.ollama import OllamaProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.upstream_http import UpstreamClient
from gateway.routing.catalog import ModelCatalog
from gateway.routing.retry import RetryPolicy
from gateway.routing.router import Router, StreamSession
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.ollama import OllamaSimulator
from gateway.simulators.openai import OpenAISimulator
from gateway.types import ChatRequest, Message
from gateway.usage import CallContext, UsageRecorder
from tests.support.fakes import FixedPriceBook, ManualClock, RecordingSleep

KEY = "sk-test"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_key=KEY) as s:
        yield s


def stream_request() -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=[Message("user", "hi")], stream=True)


def router_for(
    provider: OpenAIProvider | OllamaProvider,
    log: MemoryEventLog,
    first_content: float,
    *more: OpenAIProvider | OllamaProvider,
    groups: dict[str, dict[str, str]] | None = None,
) -> Router:
    providers = [provider, *more]
    return Router(
        {p.name: p for p in providers},
        ModelCatalog(groups),
        UsageRecorder(log, FixedPriceBook(), clock=ManualClock()),
        priority=[p.name for p in providers],
        policy=RetryPolicy(attempts=1, initial_wait=0, max_wait=0, max_server_wait=0, budget_seconds=10),
        sleep=RecordingSleep(),
        rng=random.Random(1),
        first_content_timeout=first_content,
    )


async def test_a_stream_sent_whole_without_content_by_the_deadline_is_billed_unseen(sim: OpenAISimulator) -> None:
    log = MemoryEventLog()
    async with UpstreamClient() as session:
        timeouts = Timeouts(request=0.5, connect=0.5, stream_idle=5)  # the deadline comes first
        provider = OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts)
        sim.faults.push(Fault("timeout", delay=3))
        with pytest.raises(errors.AllProvidersFailed):
            await router_for(provider, log, 0.5).open_stream(
                CallContext("r1", "acme", None, "chat.completions", True, "gpt-4o"), stream_request()
            )
    [event] = log.events
    assert (event.outcome, event.billable, event.cost_usd) == ("timeout", True, None)


async def test_a_stream_still_waiting_for_a_connection_at_the_deadline_is_no_attempt(sim: OpenAISimulator) -> None:
    log = MemoryEventLog()
    async with UpstreamClient(limit_per_host=1) as session:
        timeouts = Timeouts(request=1.0, connect=5.0, stream_idle=30)
        provider = OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts)
        sim.faults.push(Fault("timeout", delay=4))
        # its own request timeout: a stream's wait for its headers is bounded by it
        holder = OpenAIProvider(
            ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, Timeouts(request=10, connect=5)
        )

        async def hold() -> None:  # a stream holds the only connection for 4 s
            async for _ in holder.stream(stream_request()):
                pass

        hog = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(errors.AllProvidersFailed) as info:
                await router_for(provider, log, 1.0).open_stream(
                    CallContext("r2", "acme", None, "chat.completions", True, "gpt-4o"), stream_request()
                )
        finally:
            hog.cancel()
    assert info.value.code == errors.ConnectionsBusy.code
    assert log.events == []  # no attempt: nothing was sent, the provider's health is not told
    assert len(sim.requests) == 1  # the held stream's alone


@pytest.fixture
async def refusing_port() -> AsyncIterator[int]:
    """A server that answers 500 with a body it never finishes."""
    held: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        )
        await writer.drain()
        held.append(writer)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_answer_whose_body_stalls_is_not_billed(refusing_port: int, stream: bool) -> None:
    """A 500 whose body never finished: a refusal, not an answer to bill (a diff review: the
    deadline took it for a request sent and unanswered, billable at an unknown cost)."""
    log = MemoryEventLog()
    async with UpstreamClient() as session:
        timeouts = Timeouts(request=0.5, connect=0.5, stream_idle=5)
        settings = ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{refusing_port}/v1")
        router = router_for(OpenAIProvider(settings, session, timeouts), log, 0.5)
        ctx = CallContext("r3", "acme", None, "chat.completions", stream, "gpt-4o")
        request = stream_request() if stream else ChatRequest(model="gpt-4o", messages=[Message("user", "hi")])
        with pytest.raises(errors.AllProvidersFailed):
            if stream:
                await router.open_stream(ctx, request)
            else:
                await router.complete(ctx, request)
    [event] = log.events
    assert (event.billable, event.cost_usd) == (False, 0)


async def read_stream(router: Router, model: str) -> tuple[StreamSession, str]:
    """Open a stream of ``model`` and read it to its end: the session and its text."""
    stream = await router.open_stream(
        CallContext("r1", "acme", None, "chat.completions", True, model),
        ChatRequest(model=model, messages=[Message("user", "hi")], stream=True),
    )
    text = "".join([chunk.text async for chunk in stream.chunks()])
    stream.finish()
    return stream, text


async def test_a_model_thinking_past_the_deadline_is_not_failed_for_it() -> None:
    """Ollama's thinking models (qwen3, deepseek-r1) stream their thinking in ``message.thinking``
    with empty content before the answer. That stream had "no content" until the answer began:
    a model thinking past the request timeout was failed as a provider timeout, at an unknown
    cost, while it wrote all along (a review). Its thinking ends the first-content deadline;
    the thinking never reaches the answer, and its tokens are billed output."""
    log = MemoryEventLog()
    thinker = OllamaSimulator(thinking="let me think this through one careful step at a time", think_seconds=1.2)
    async with thinker as sim, UpstreamClient() as session:
        timeouts = Timeouts(request=0.4, connect=0.5, stream_idle=5)
        provider = OllamaProvider(ProviderSettings(base_url=sim.base_url), session, timeouts)
        _, text = await read_stream(router_for(provider, log, 0.4), "llama3")
    assert text == sim.reply_text(sim.requests[-1].body) and "careful" not in text
    [event] = log.events
    assert event.outcome == "success" and not event.incomplete
    assert event.completion_tokens == sim.count_tokens(text) + sim.count_tokens(sim.thinking or "")


async def test_a_stream_cut_while_its_model_thinks_falls_back(sim: OpenAISimulator) -> None:
    """The thinking is not content: the client has nothing yet, so a cut then goes to the next
    provider (a re-test: the first version took thinking for the stream's start, and such a cut
    was the client's error)."""
    log = MemoryEventLog()
    async with OllamaSimulator(thinking="one two three four five six", think_seconds=0.3) as thinker:
        thinker.faults.push(Fault("cut", after_chunks=3))  # three thinking lines, then the cut
        async with UpstreamClient() as session:
            timeouts = Timeouts(request=5, connect=0.5, stream_idle=5)
            router = router_for(
                OllamaProvider(ProviderSettings(base_url=thinker.base_url), session, timeouts),
                log,
                5,
                OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts),
                groups={"thinky": {"ollama": "qwen3", "openai": "gpt-4o"}},
            )
            stream, text = await read_stream(router, "thinky")
    assert stream.provider == "openai" and text
    assert [(e.provider, e.outcome) for e in log.events] == [("ollama", "stream_cut"), ("openai", "success")]


async def test_a_stream_whose_headers_come_after_the_idle_timeout_is_waited_for(sim: OpenAISimulator) -> None:
    """The wait for the answer's headers is part of the first content's (the request timeout),
    not a silence inside the stream: an upstream that sent them after the idle timeout (Ollama
    loading its model) was failed over as a billed timeout, then billed again elsewhere (a
    review), where the same call not streamed was served."""
    log = MemoryEventLog()
    async with UpstreamClient() as session:
        timeouts = Timeouts(request=5, connect=0.5, stream_idle=0.3)
        provider = OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts)
        sim.faults.push(Fault("delay", delay=0.8))
        session_ = await router_for(provider, log, 5).open_stream(
            CallContext("r1", "acme", None, "chat.completions", True, "gpt-4o"), stream_request()
        )
        text = "".join(chunk.text for batch in [b async for b in session_.batches()] for chunk in batch if chunk.text)
        session_.finish("success")
    assert text
    assert [(e.outcome, e.provider) for e in log.events] == [("success", "openai")]
