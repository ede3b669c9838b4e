"""The official openai SDK as a real client of the gateway, over the provider simulators."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal

import aiohttp
import openai
import pytest

from gateway.settings import ApiKey
from gateway.simulators.base import Fault
from tests.support.gateway import RunningGateway, running_gateway


def client(gw: RunningGateway, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, **kwargs)  # type: ignore[arg-type]


async def test_chat_completion_with_headers_and_exact_cost(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.cost")
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
            extra_body={"tenantId": "tenant_123"},
        )
    completion = raw.parse()
    sim = gw.sims["openai"]
    assert completion.choices[0].message.content == sim.reply
    assert completion.object == "chat.completion"
    prompt = 4  # "Be brief." + "Say hello" -> 4 words in the simulator's tokenizer
    completion_tokens = len(sim.reply.split())
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, completion_tokens)
    expected = (Decimal(prompt) * Decimal("0.03") + Decimal(completion_tokens) * Decimal("0.06")) / 1000
    assert raw.headers["x-llm-provider"] == "openai"
    assert raw.headers["x-llm-model"] == "gpt-4"
    assert raw.headers["x-llm-attempts"] == "1"
    assert Decimal(raw.headers["x-llm-cost-usd"]) == expected
    assert raw.headers["x-request-id"].startswith("req_")
    [event] = gw.event_log.events
    assert (
        event.cost_usd == expected
        and event.tenant_id == "tenant_123"
        and event.request_id == raw.headers["x-request-id"]
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
    assert lines == [f"Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=${expected:.6f}"]


async def test_streaming_with_usage_chunk(gw: RunningGateway) -> None:
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Tell me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == gw.sims["openai"].reply
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(gw.sims["openai"].reply.split())
    extension = last.model_extra["x_llm_gateway"]  # type: ignore[index]
    assert Decimal(extension["cost_usd"]) == gw.event_log.events[-1].cost_usd
    assert extension["provider"] == "openai"


async def test_streaming_without_usage_option_has_no_usage(gw: RunningGateway) -> None:
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(ch.usage is None for ch in chunks)
    # the gateway still accounts the call from upstream usage
    assert gw.event_log.events[-1].completion_tokens == len(gw.sims["openai"].reply.split())


async def test_legacy_completion_with_chat_model(gw: RunningGateway) -> None:
    async with client(gw) as c:
        completion = await c.completions.create(model="gpt-3.5-turbo", prompt="Once upon a time")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == gw.sims["openai"].reply
    request = gw.sims["openai"].requests[-1]
    assert request.path.endswith("/chat/completions")
    assert request.body["messages"] == [{"role": "user", "content": "Once upon a time"}]


async def test_legacy_completion_with_instruct_model_uses_completions_endpoint(gw: RunningGateway) -> None:
    async with client(gw) as c:
        completion = await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", max_tokens=5)
    # the simulator honours the length cap (in words) and says so
    assert completion.choices[0].text == " ".join(gw.sims["openai"].reply.split()[:5])
    assert completion.choices[0].finish_reason == "length"
    request = gw.sims["openai"].requests[-1]
    assert request.path.endswith("/v1/completions") and request.body["prompt"] == "Say"


async def test_legacy_completion_stream(gw: RunningGateway) -> None:
    async with client(gw) as c:
        stream = await c.completions.create(model="gpt-3.5-turbo", prompt="Go", stream=True)
        parts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(parts) == gw.sims["openai"].reply


async def test_fallback_to_anthropic_is_visible_in_headers(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.always(Fault("server_error"))
    gw.sims["azure"].faults.always(Fault("server_error"))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert raw.headers["x-llm-model"] == "claude-3-opus-20240229"
    assert raw.headers["x-llm-attempts"] == "3"
    assert [e.provider for e in gw.event_log.events] == ["openai", "azure", "anthropic"]


async def test_rate_limit_is_retried_honouring_retry_after(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.push(Fault("rate_limit", retry_after=3), times=2)
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-llm-provider"] == "openai" and raw.headers["x-llm-attempts"] == "3"
    assert gw.sleep.waits == [3.0, 3.0]


@pytest.mark.parametrize(
    ("fault", "status", "code", "error_class"),
    [
        # Gemini's quota fault is a model's daily quota, a rate limit (the others' are credit
        # gone): a 429 the client may wait out, not insufficient_quota (see the next test)
        ("quota", 429, "rate_limit_exceeded", openai.RateLimitError),
        ("auth", 502, "all_providers_failed", openai.InternalServerError),
        ("not_found", 404, "model_not_found", openai.NotFoundError),
        ("rate_limit", 429, "rate_limit_exceeded", openai.RateLimitError),
        ("overloaded", 503, "all_providers_failed", openai.InternalServerError),
        ("server_error", 502, "all_providers_failed", openai.InternalServerError),
        ("malformed", 502, "all_providers_failed", openai.InternalServerError),
    ],
)
async def test_every_provider_failing_the_same_way_answers_as_that_failure(
    gw: RunningGateway, fault: str, status: int, code: str, error_class: type
) -> None:
    """One failure everywhere is answered with OpenAI's status and code for it, so the SDK
    raises its class. The gateway has retried and fallen back already, so the answer says
    ``x-should-retry: false``: the SDK's own retries (max_retries=2) make no new attempt. They
    retried every 429, 502 and 504 twice: a review counted 45 upstream calls, each vendor's rate
    limit hit three times as often, for one create() with every provider rate limited, and 15
    billed malformed answers instead of 5."""
    for sim in gw.sims.values():
        sim.faults.always(Fault(fault, retry_after=0.01))  # type: ignore[arg-type]
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
        with pytest.raises(error_class) as info:
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert (info.value.status_code, info.value.code) == (status, code)
    headers = info.value.response.headers
    assert headers.get("x-should-retry") == "false"
    sent = sum(len(sim.requests) for sim in gw.sims.values())
    assert sent == int(headers["x-llm-attempts"]) >= 5  # the gateway's attempts, and no SDK retry


async def test_every_provider_out_of_credit_answers_insufficient_quota() -> None:
    async with running_gateway(providers=("openai", "azure", "anthropic", "ollama")) as gw:
        for sim in gw.sims.values():
            sim.faults.always(Fault("quota"))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
            with pytest.raises(openai.RateLimitError) as info:
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert (info.value.code, info.value.response.headers.get("x-should-retry")) == ("insufficient_quota", "false")


async def test_providers_that_cannot_be_reached_leave_the_sdk_its_retries(gw: RunningGateway) -> None:
    """Nothing was sent (every connection refused) and nothing billed: the client may come back
    and find a provider up, so the answer does not stop the SDK's retries."""
    for sim in gw.sims.values():
        await sim.stop()  # nothing listens on their ports any more
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert "connection_error" in info.value.message
    assert info.value.response.headers.get("x-should-retry") is None


async def test_one_failed_attempt_leaves_the_sdk_its_retry() -> None:
    """A 5xx blip of the one provider serving a model is not retried there by the gateway:
    its answer must not stop the SDK's retry too (a re-test saw such calls fail for good)."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("openai",)) as gw:
        gw.sims["openai"].faults.push(Fault("server_error"))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
            raw = await c.chat.completions.with_raw_response.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}]
            )
        assert raw.parse().choices[0].message.content
        assert len(gw.sims["openai"].requests) == 2  # the blip, then the SDK's retry


@pytest.mark.parametrize("fault", [Fault("timeout", delay=4), Fault("malformed")], ids=["timeout", "malformed"])
async def test_a_failed_attempt_its_provider_bills_stops_the_sdks_retry(fault: Fault) -> None:
    """A timeout after the provider had the whole request, or an answer that could not be read,
    is billed (at a cost nobody told us, or its price): the SDK's two retries of one such 504
    billed three calls (a review, with the Node SDK). The answer says ``x-should-retry: false``."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("openai",)) as gw:  # request timeout 2 s
        gw.sims["openai"].faults.always(fault)
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        assert info.value.response.headers.get("x-should-retry") == "false"
        assert len(gw.sims["openai"].requests) == 1
        [event] = gw.event_log.events
        assert event.billable


async def test_a_free_models_timeout_leaves_the_sdk_its_retry() -> None:
    """A diff review: a timeout of a model that costs nothing (a local Ollama's) is billable at
    $0, and stopped the SDK's retry as if it cost money."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("ollama",)) as gw:  # request timeout 2 s
        gw.sims["ollama"].faults.push(Fault("timeout", delay=4))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
            completion = await c.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        assert len(gw.sims["ollama"].requests) == 2  # the timeout, then the SDK's retry
        first = gw.event_log.events[0]
        assert (first.outcome, first.billable, first.cost_usd) == ("timeout", True, 0)


async def test_a_wait_longer_than_an_sdk_honours_stops_its_retry() -> None:
    """The Node SDK sleeps for any ``retry-after`` (a create() with a 5 s timeout slept 90 s; the
    Python SDK retries on its own schedule past 60 s): a wait past 60 s is the client's to
    schedule, with ``x-should-retry: false``; a shorter one still lets the SDK retry."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("openai",)) as gw:
        gw.sims["openai"].faults.push(Fault("server_error", retry_after=90))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            headers = info.value.response.headers
            assert (headers["retry-after"], headers.get("x-should-retry")) == ("90", "false")
            assert len(gw.sims["openai"].requests) == 1
            gw.sims["openai"].faults.push(Fault("server_error", retry_after=1))
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        assert len(gw.sims["openai"].requests) == 3  # the second 500, then the SDK's retry after 1 s


async def test_a_refusal_beside_a_provider_skipped_for_its_circuit_leaves_the_sdk_its_retry() -> None:
    """Every provider tried refused for good (a 401), but one was only skipped for its open
    circuit, which lets a probe through within its cool-down: the client may come back."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("openai", "anthropic")) as gw:
        gw.sims["openai"].faults.always(Fault("server_error"))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
            for _ in range(5):  # openai fails, anthropic serves; openai's circuit opens
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            gw.sims["anthropic"].faults.always(Fault("auth"))
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert "openai: skipped (circuit open)" in info.value.message
    assert info.value.response.headers.get("x-should-retry") is None


async def test_all_providers_failing_is_one_clear_5xx(gw: RunningGateway) -> None:
    for sim in gw.sims.values():
        sim.faults.always(Fault("server_error"))
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    message = info.value.message
    for provider in ("openai", "azure", "anthropic", "google", "ollama"):
        assert f"{provider}: upstream_error" in message
    assert info.value.response.headers["x-llm-attempts"] == "5"


async def test_stream_cut_mid_way_ends_with_error_not_done(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.push(Fault("cut", after_chunks=2))
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    [event] = gw.event_log.events
    assert event.outcome == "stream_cut" and event.incomplete


async def test_stream_falls_back_before_first_byte(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.push(Fault("server_error"))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert raw.headers["x-llm-provider"] == "azure"
        text = "".join([ch.choices[0].delta.content or "" async for ch in raw.parse() if ch.choices])
    assert text == gw.sims["azure"].reply


ONE = {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "gpt-4"}, 400, "messages"),
        ({"model": "gpt-4", "messages": []}, 400, "at least one"),
        ({"model": "gpt-4", "messages": "hi"}, 400, "must be an array"),
        ({"model": "gpt-4", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n=1"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "no-such-model"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "provider": "bedrock"}, 400, "provider"),
        # a line break or NUL in the model or tenant would reach a response header and the cost line
        ({"model": "gpt-4\nX", "messages": [{"role": "user", "content": "x"}]}, 400, "control characters"),
        ({"model": "gpt-4\u0000", "messages": [{"role": "user", "content": "x"}]}, 400, "control characters"),
        ({"model": "gpt-4" + "x" * 300, "messages": [{"role": "user", "content": "x"}]}, 400, "longer than 256"),
        ({**ONE, "tenantId": "evil\nCost | tenant=victim"}, 400, "control characters"),
        ({**ONE, "tenantId": "a\u2028b"}, 400, "control characters"),
        # options the gateway cannot honour are refused, not dropped
        ({**ONE, "logit_bias": {"50256": -100}}, 400, "'logit_bias' is not supported"),
        ({**ONE, "store": True}, 400, "'store' is not supported"),
        ({**ONE, "service_tier": "priority"}, 400, "'service_tier' is not supported"),
        ({**ONE, "modalities": ["text", "audio"]}, 400, "'modalities' is not supported"),
        ({**ONE, "functions": [{"name": "f"}]}, 400, "'functions' is not supported"),  # the legacy form of tools
        # {} turns web search on with its defaults (leaving the field out is "off"): not a default
        ({**ONE, "web_search_options": {}}, 400, "'web_search_options' is not supported"),
        # metadata is the gateway's cost attribution (tests/e2e/test_cost_metadata.py): OpenAI's limits
        ({**ONE, "metadata": ["team"]}, 400, "'metadata' must be an object"),
        ({**ONE, "metadata": {"team": 7}}, 400, "'metadata.team' must be a string, got number"),
        ({**ONE, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "at most 16 pairs"),
        ({**ONE, "prompt_cache_key": "k"}, 400, "'prompt_cache_key' is not supported"),
        # a field the gateway does not read is refused, as OpenAI refuses it (it was dropped)
        ({**ONE, "unknown_param": 1}, 400, "Unrecognized request argument supplied: unknown_param"),
        ({**ONE, "top_k": 5}, 400, "Unrecognized request argument supplied: top_k"),
        ({**ONE, "max_tokens": 5, "max_completion_tokens": 7}, 400, "'max_tokens' and 'max_completion_tokens'"),
        # the generation options some providers carry (tests/e2e/test_generation_options.py)
        ({**ONE, "seed": "1"}, 400, "'seed' must be an integer"),
        ({**ONE, "seed": 2**64}, 400, "'seed' must be between"),
        ({**ONE, "presence_penalty": 2.5}, 400, "'presence_penalty' must be between -2 and 2"),
        ({**ONE, "frequency_penalty": "high"}, 400, "'frequency_penalty' must be a number"),
        ({**ONE, "response_format": "json"}, 400, "'response_format' must be an object"),
        ({**ONE, "response_format": {"type": "xml"}}, 400, "'response_format.type' must be one of"),
        ({**ONE, "response_format": {"type": "json_schema"}}, 400, "'response_format.json_schema'"),
        (
            {**ONE, "response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            400,
            "'response_format.json_schema.name' must be 1 to 64",
        ),
        (
            {**ONE, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": []}}},
            400,
            "'response_format.json_schema.schema' must be an object",
        ),
        ({**ONE, "stream_options": {"include_usage": True}}, 400, "only allowed when 'stream' is enabled"),
        ({"model": "gpt-4", "messages": [{"content": "x"}]}, 400, "Missing required parameter: 'messages[0].role'"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": [{"text": "x"}]}]}, 400, "content[0].type'"),
        ({**ONE, "max_tokens": 10**30}, 400, "'max_tokens' must be between"),
    ],
)
async def test_bad_input_gets_openai_errors(gw: RunningGateway, body: dict, status: int, fragment: str) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == status
    error = info.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert gw.event_log.events == []


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        # logprobs 0 asks for the sampled token's logprob (OpenAI: "up to logprobs+1 elements"): it
        # was taken for the default and dropped
        ({"logprobs": 0}, "logprobs", "unsupported_parameter"),
        ({"logprobs": 2}, "logprobs", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unknown_parameter"),
        ({"tools": []}, "tools", "unknown_parameter"),
        ({"max_completion_tokens": 5}, "max_completion_tokens", "unknown_parameter"),
    ],
)
async def test_legacy_completions_refuse_what_they_cannot_carry(
    gw: RunningGateway, body: dict, param: str, code: str
) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.post(
                "/completions", body={"model": "gpt-3.5-turbo-instruct", "prompt": "x", **body}, cast_to=object
            )
    error = info.value.body
    assert isinstance(error, dict) and (error["param"], error["code"]) == (param, code)
    assert gw.sims["openai"].requests == []
    assert gw.event_log.events == []


async def test_options_at_their_defaults_are_accepted(gw: RunningGateway) -> None:
    async with client(gw) as c:
        await c.post(
            "/chat/completions",
            body={
                **ONE,
                "seed": None,
                "presence_penalty": 0,
                "frequency_penalty": 0.0,
                "logit_bias": {},
                "modalities": ["text"],
                "store": False,
                "service_tier": "auto",
                "top_logprobs": 0,
                "logprobs": False,
                "metadata": None,
            },
            cast_to=object,
        )
        await c.post(
            "/completions", body={"model": "gpt-4", "prompt": "x", "best_of": 1, "echo": False}, cast_to=object
        )
    assert len(gw.event_log.events) == 2


async def test_models_endpoint_lists_groups(gw: RunningGateway) -> None:
    async with client(gw) as c:
        models = await c.models.list()
    ids = {m.id for m in models.data}
    assert {"gpt-4", "gpt-4o", "claude-3-haiku", "gemini-pro", "davinci-002", "babbage-002"} <= ids
    # the embedding models too (none was listed: a review)
    assert {"text-embedding-3-small", "gemini-embedding-001", "nomic-embed-text"} <= ids
    owners = {m.id: m.owned_by for m in models.data}
    assert (owners["claude-3-haiku"], owners["gemini-pro"], owners["gpt-4"]) == ("anthropic", "google", "openai")


async def test_a_model_is_retrieved_by_name(gw: RunningGateway) -> None:
    """``client.models.retrieve``: the model with who serves it, in the order calls try them;
    a dated snapshot too; an unknown model is a 404 (it was a 404 for every model: no route)."""
    async with client(gw) as c:
        model = await c.models.retrieve("claude-3-haiku")
        dated = await c.models.retrieve("claude-3-haiku-20240307")
        with pytest.raises(openai.NotFoundError) as info:
            await c.models.retrieve("no-such-model")
    assert (model.id, model.object, model.owned_by) == ("claude-3-haiku", "model", "anthropic")
    assert model.model_extra["providers"][0] == "anthropic" and len(model.model_extra["providers"]) == 5  # type: ignore[index]
    assert dated.id == "claude-3-haiku-20240307" and dated.owned_by == "anthropic"
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(("path", "fragment"), [("gpt-4o%00", "control characters"), ("g" * 300, "longer than 256")])
async def test_a_model_name_chat_would_refuse_is_a_400_here_too(gw: RunningGateway, path: str, fragment: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/models/{path}") as r:
        status, body = r.status, await r.json()
    assert status == 400 and fragment in body["error"]["message"] and body["error"]["param"] == "model"


async def test_retrieving_a_model_needs_a_key_when_keys_are_configured() -> None:
    async with running_gateway(settings={"api_keys": [ApiKey(key="sk-live-1", tenant="acme")]}) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.models.retrieve("gpt-4")
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-live-1", max_retries=0) as c:
            assert (await c.models.retrieve("gpt-4")).owned_by == "openai"


async def test_usage_details_are_there_when_zero(gw: RunningGateway) -> None:
    """OpenAI always sends the details; clients read them without a null check."""
    async with client(gw) as c:
        completion = await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 0


async def test_a_streams_model_header_names_the_model_that_serves_it(gw: RunningGateway) -> None:
    """As for a JSON answer: the served model (Azure's deployment runs a dated gpt-4o), the
    one the chunks name, not the deployment asked for."""
    async with client(gw) as c:
        async with c.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True, extra_body={"provider": "azure"}
        ) as response:
            header = response.headers["x-llm-model"]
            models = {chunk.model async for chunk in await response.parse()}
    assert models == {header} and header != "gpt-4o"


async def test_a_call_says_what_it_cost_when_it_fails_too(gw: RunningGateway) -> None:
    """A 200 answer the gateway cannot read is billed by its provider at an unknown cost: the
    failed call's answer says so (it said nothing, while the stores and the cost line billed the
    tenant), and a call served after it is unpriced, not what the fallback alone cost."""
    gw.sims["openai"].faults.push(Fault("malformed"))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    assert (raw.headers["x-llm-provider"], raw.headers["x-llm-attempts"]) == ("azure", "2")
    assert raw.headers["x-llm-cost-usd"] == "unpriced"
    bad, served = gw.event_log.events
    assert (bad.outcome, bad.billable, bad.cost_usd) == ("malformed_response", True, None)
    assert served.cost_usd is not None and served.cost_usd > 0

    gw.sims["openai"].faults.push(Fault("malformed"))
    for name in ("azure", "anthropic", "google", "ollama"):
        gw.sims[name].faults.push(Fault("server_error"))
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["x-llm-attempts"] == "5"
    assert info.value.response.headers["x-llm-cost-usd"] == "unpriced"
    refused = [e for e in gw.event_log.events[2:] if e.outcome == "upstream_error"]
    assert len(refused) == 4 and not any(e.billable for e in refused)

    for sim in gw.sims.values():
        sim.faults.push(Fault("server_error"))
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["x-llm-cost-usd"] == "0.000000"  # refused everywhere: nothing billed


async def test_a_providers_refusal_after_a_fallback_or_a_retry_says_how_many_attempts_it_took(
    gw: RunningGateway,
) -> None:
    """A vendor's own refusal (a 400) may end a call after a fallback or a retry: the answer
    named the refusing provider and the cost, not the attempts, so the headers summed over a
    review's 300 calls to 45 attempts where the metrics counted 87."""

    async def refused() -> Mapping[str, str]:
        async with client(gw) as c:
            with pytest.raises(openai.BadRequestError) as info:
                await c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        return info.value.response.headers

    gw.sims["openai"].faults.push(Fault("server_error"))
    gw.sims["azure"].faults.push(Fault("bad_request"))
    headers = await refused()
    assert (headers["x-llm-provider"], headers["x-llm-attempts"], headers["x-llm-cost-usd"]) == (
        "azure",
        "2",
        "0.000000",
    )
    gw.sims["openai"].faults.push(Fault("rate_limit", retry_after=0.01))
    gw.sims["openai"].faults.push(Fault("bad_request"))
    headers = await refused()
    assert (headers["x-llm-provider"], headers["x-llm-attempts"]) == ("openai", "2")
    assert len(gw.event_log.events) == 4


async def test_a_cut_stream_says_what_it_cost_before_its_error(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.push(Fault("cut", after_chunks=2))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as r:
            text = (await r.read()).decode()
    [event] = gw.event_log.events
    assert (event.outcome, event.billable, event.cost_usd) == ("stream_cut", True, None)
    head, _, error = text.rpartition(": x-llm-cost-usd=unpriced\n\n")
    assert head.startswith("data: ") and error.startswith('data: {"error"') and "[DONE]" not in text


async def test_a_stream_cut_before_its_first_content_is_recorded_incomplete(gw: RunningGateway) -> None:
    """It ended before the provider finished, as a stream cut later does: the event said
    otherwise, and v_cost_daily's incomplete_calls missed it."""
    gw.sims["openai"].faults.push(Fault("cut", after_chunks=0))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        _ = [chunk async for chunk in raw.parse()]
    assert raw.headers["x-llm-provider"] == "azure"
    cut, served = gw.event_log.events
    assert (cut.outcome, cut.billable, cut.incomplete, cut.cost_usd) == ("stream_cut", True, True, None)
    assert (served.outcome, served.incomplete) == ("success", False)


async def test_azures_content_filter_refusal_says_which_category_fired(gw: RunningGateway) -> None:
    """Azure's 400 names the category and severity that fired under ``innererror``; the client
    got the message alone and could not tell a violence block from a self-harm one (review)."""
    gw.sims["azure"].faults.push(Fault("content_filter"))
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body={"provider": "azure"}
            )
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "content_filter"
    inner = error["innererror"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}


async def test_models_keep_their_created_time_and_healthz_names_the_providers_calls_reach() -> None:
    """``created`` was each request's clock (every listing differed); ``/healthz`` listed a
    configured provider the priority leaves out, which no call reaches (a review)."""
    from datetime import UTC, datetime, timedelta

    now = [datetime(2026, 11, 30, tzinfo=UTC)]
    async with running_gateway(settings={"priority": ["anthropic", "openai"]}, clock=lambda: now[0]) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
            first = {m.id: m.created for m in (await c.models.list()).data}
            now[0] += timedelta(hours=5)
            again = {m.id: m.created for m in (await c.models.list()).data}
            retrieved = await c.models.retrieve("gpt-4")
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/healthz") as r:
            health = await r.json()
    assert first == again and retrieved.created == first["gpt-4"] == int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    assert health["providers"] == ["anthropic", "openai"]
