"""Function calling through the gateway with the openai SDK: tools offered, the model's calls
(whole and streamed), the results sent back; each provider that carries ``tools``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from gateway import errors
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.azure import AzureProvider
from gateway.providers.google import GoogleProvider
from gateway.providers.ollama import OllamaProvider
from gateway.providers.openai import OpenAIProvider
from tests.support.gateway import RunningGateway

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
#: a model each provider serves natively
MODELS = {
    "openai": "gpt-4o",
    "azure": "gpt-4o",
    "anthropic": "claude-3-haiku",
    "google": "gemini-pro",
    "ollama": "llama3",
}
_ADAPTERS = {
    "openai": OpenAIProvider,
    "azure": AzureProvider,
    "anthropic": AnthropicProvider,
    "google": GoogleProvider,
    "ollama": OllamaProvider,
}
#: the providers whose adapters carry tools
CARRIERS = [(name, MODELS[name]) for name, adapter in _ADAPTERS.items() if "tools" in adapter.options]
#: those that can also force a call (``tool_choice`` required or one function)
FORCERS = [(name, MODELS[name]) for name, adapter in _ADAPTERS.items() if {"tools", "tool_choice"} <= adapter.options]


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


async def create(gw: RunningGateway, provider: str, model: str, **fields: Any) -> Any:
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, extra_body={"provider": provider}, **({"messages": ASK} | fields)
        )
    assert raw.headers["x-llm-provider"] == provider
    return raw.parse()


@pytest.mark.parametrize(("provider", "model"), CARRIERS)
async def test_the_model_calls_a_tool(gw: RunningGateway, provider: str, model: str) -> None:
    completion = await create(gw, provider, model, tools=[WEATHER, TIME])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "sim", "days": 1}
    [event] = gw.event_log.events
    assert event.outcome == "success" and event.billable and event.cost_usd is not None


@pytest.mark.parametrize(("provider", "model"), FORCERS)
async def test_a_forced_function_is_the_one_called(gw: RunningGateway, provider: str, model: str) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    completion = await create(gw, provider, model, tools=[WEATHER, TIME], tool_choice=choice)
    assert [c.function.name for c in completion.choices[0].message.tool_calls] == ["get_time"]


@pytest.mark.parametrize(("provider", "model"), CARRIERS)
async def test_a_streamed_call_arrives_in_pieces_that_join(gw: RunningGateway, provider: str, model: str) -> None:
    async with client(gw) as c:
        stream = await c.chat.completions.create(
            model=model,
            messages=ASK,
            tools=[WEATHER],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"provider": provider},
        )
        chunks = [chunk async for chunk in stream]
    pieces = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert pieces[0].id and pieces[0].function.name == "get_weather" and all(p.index == 0 for p in pieces)
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert json.loads(arguments) == {"city": "sim", "days": 1}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    [event] = gw.event_log.events
    assert event.billable and event.cost_usd is not None and not event.incomplete


@pytest.mark.parametrize(("provider", "model"), CARRIERS)
async def test_the_results_go_back_and_the_model_answers(gw: RunningGateway, provider: str, model: str) -> None:
    first = await create(gw, provider, model, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    second = await create(gw, provider, model, tools=[WEATHER], messages=history)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert len(gw.sims[provider].requests) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_3_tool_loop_goes_on_past_its_first_call(gw: RunningGateway, stream: bool) -> None:
    """Gemini 3 refuses a history whose calls lack their thought signature, which the OpenAI
    shape cannot carry back: every tool loop on it failed at its second turn with that 400 (a
    review). The calls go back with the validator's documented skip value."""
    from gateway.simulators.google import THOUGHT_SIGNATURE

    model = "gemini-3-pro-preview"
    first = await create(gw, "google", model, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert THOUGHT_SIGNATURE not in call.id  # the signature stays with Gemini
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    async with client(gw) as c:
        answer = await c.chat.completions.create(
            model=model, messages=history, tools=[WEATHER], stream=stream, extra_body={"provider": "google"}
        )
        text = (
            "".join([ch.choices[0].delta.content or "" async for ch in answer if ch.choices])
            if stream
            else answer.choices[0].message.content
        )
    assert text
    sent = gw.sims["google"].requests[-1].body["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    # the models before Gemini 3 get the calls as before
    await create(gw, "google", "gemini-2.5-flash", tools=[WEATHER], messages=history)
    assert "thoughtSignature" not in gw.sims["google"].requests[-1].body["contents"][1]["parts"][0]


async def test_openai_gets_the_calls_and_results_as_sent(gw: RunningGateway) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history.append({"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'})
    await create(gw, "openai", "gpt-4o", tools=[WEATHER], messages=history)
    sent = gw.sims["openai"].requests[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}


def test_every_adapter_carries_function_calling() -> None:
    """All five map tools; only the ones that can force a call carry tool_choice, and only
    OpenAI, Azure and Anthropic can keep a model to one call (a provider that cannot carry what
    a request needs is skipped: tests/unit/test_router.py)."""
    assert [name for name, _ in CARRIERS] == list(MODELS)
    assert [name for name, _ in FORCERS] == ["openai", "azure", "anthropic", "google"]
    assert [name for name, adapter in _ADAPTERS.items() if "parallel_tool_calls" in adapter.options] == [
        "openai",
        "azure",
        "anthropic",
    ]


ONE = {"model": "gpt-4o", "messages": ASK}


def _calls(*ids: str, arguments: str = '{"city": "Paris", "days": 1}') -> dict[str, Any]:
    """An assistant message calling get_weather once per id."""
    calls = [{"id": i, "type": "function", "function": {"name": "get_weather", "arguments": arguments}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _nested(levels: int) -> dict[str, Any]:
    """An object schema ``levels`` deep (two JSON levels a schema level)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _result(call_id: str, content: str = "42") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({**ONE, "tool_choice": "auto"}, "tool_choice", "only allowed when 'tools' are specified"),
        ({**ONE, "parallel_tool_calls": True}, "parallel_tool_calls", "only allowed when 'tools'"),
        ({**ONE, "tools": {"type": "function"}}, "tools", "must be an array"),
        ({**ONE, "tools": [{"type": "web_search"}]}, "tools[0].type", "must be 'function'"),
        ({**ONE, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "1 to 64"),
        ({**ONE, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "Missing required"),
        ({**ONE, "tools": [WEATHER, WEATHER]}, "tools", "must not name a function twice"),
        ({**ONE, "tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "must be one of"),
        (
            {**ONE, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
            "not in 'tools'",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, {"role": "tool", "content": "42"}]},
            "messages[1].tool_call_id",
            "Missing required parameter",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
            "messages[1].tool_calls[0].id",
            "non-empty string",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}],
                    },
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
            "must be a string holding a JSON object",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    },
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, {"role": "tool", "tool_call_id": "c9", "content": "42"}]},
            "messages[1].tool_call_id",
            "a call no earlier assistant message made",
        ),
        (
            {**ONE, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
            "must be a JSON Schema of 'type: \"object\"', got 'type: 'string''",
        ),
        # nested past Python's encoder: every adapter failed (RecursionError), counted as each
        # provider's failure, and five such requests opened every circuit (review)
        (
            {**ONE, "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(100)}}]},
            "tools[0].function.parameters",
            "nests deeper than 64 levels",
        ),
        (
            {
                **ONE,
                "response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": _nested(40)}},
            },
            "response_format.json_schema.schema",
            "nests deeper than 64 levels",
        ),
        # Python's parser takes these, and the vendors' bodies then carried them as null (review)
        *(
            (
                {"model": "gpt-4o", "messages": [*ASK, _calls("c1", arguments=arguments), _result("c1")]},
                "messages[1].tool_calls[0].function.arguments",
                "must be a string holding a JSON object",
            )
            # a lone surrogate: the adapters could not encode the body, which counted as the
            # provider's connection error (five such calls opened its circuit: re-test)
            for arguments in ('{"a": NaN}', '{"a": -Infinity}', '{"a": 1e400}', '{"city": "\\udfff"}')
        ),
        # OpenAI's (and Anthropic's) rule: each call answered once, by the tool messages right after it
        (
            {"model": "gpt-4o", "messages": [*ASK, _calls("c1", "c2"), _result("c1")]},
            "messages[1].tool_calls",
            "did not have response messages: c2",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, _calls("c1"), {"role": "user", "content": "?"}, _result("c1")]},
            "messages[1].tool_calls",
            "did not have response messages: c1",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, _calls("c1"), _result("c1"), _result("c1")]},
            "messages[3].tool_call_id",
            "not an unanswered call",
        ),
        (
            {"model": "gpt-4o", "messages": [*ASK, _calls("c1", "c1"), _result("c1")]},
            "messages[1].tool_calls[1].id",
            "has id 'c1' twice",
        ),
        ({**ONE, "functions": [WEATHER["function"]]}, "functions", "not supported"),
        # arguments the adapters' parser gives up on (about 1,000 levels) failed there, counted as
        # the provider's failure: five such requests opened its circuit for every tenant; past
        # 1,024 levels the check itself raised (a 500)
        *(
            (
                {
                    "model": "claude-3-haiku",
                    "messages": [
                        *ASK,
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "c",
                                    "type": "function",
                                    "function": {"name": "f", "arguments": '{"a":' + "[" * depth + "]" * depth + "}"},
                                }
                            ],
                        },
                        {"role": "tool", "tool_call_id": "c", "content": "42"},
                    ],
                },
                "messages[1].tool_calls[0].function.arguments",
                "nests deeper than 64 levels" if depth < 1100 else "JSON object",
            )
            for depth in (64, 1010, 1100)
        ),
    ],
)
async def test_bad_tool_input_is_a_400_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], param: str, fragment: str
) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.post("/chat/completions", body=body, cast_to=object)
    assert info.value.param == param and fragment in info.value.message
    assert gw.event_log.events == []


@pytest.mark.parametrize(("provider", "model"), CARRIERS)
async def test_a_history_with_calls_needs_no_tools_offered(gw: RunningGateway, provider: str, model: str) -> None:
    """OpenAI answers a conversation holding calls and results without ``tools``; so does every
    provider through the gateway (Anthropic refuses tool blocks without tools defined: the
    adapter declares the history's functions, uncallable)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history.append({"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'})
    completion = await create(gw, provider, model, messages=history)
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.content


async def test_parallel_false_with_no_call_allowed_needs_nothing(gw: RunningGateway) -> None:
    """``tool_choice: "none"`` forbids calls: ``parallel_tool_calls: false`` then asks nothing
    of the provider (it was a 400 on a model only Gemini serves)."""
    completion = await create(
        gw, "google", "gemini-pro", tools=[WEATHER], tool_choice="none", parallel_tool_calls=False
    )
    assert completion.choices[0].finish_reason == "stop"


async def test_a_required_call_on_a_model_only_ollama_serves_is_a_400_saying_so(gw: RunningGateway) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="llama3", messages=ASK, tools=[WEATHER], tool_choice="required")
    assert info.value.param == "tool_choice"
    assert "'tool_choice' required (or a forced function) is not supported" in info.value.message


async def test_a_function_name_gemini_refuses_is_not_sent_to_gemini(gw: RunningGateway) -> None:
    """OpenAI takes a function name starting with a digit, Gemini does not (its 400 would not
    fall back): Gemini is skipped like any need it cannot carry, with no attempt; a model only
    Gemini serves is a 400 naming ``tools``."""
    tool = {"type": "function", "function": {"name": "1st_tool", "parameters": {"type": "object"}}}
    completion = await create(gw, "openai", "gpt-4o", tools=[tool])
    assert completion.choices[0].message.tool_calls
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=ASK, tools=[tool], extra_body={"provider": "google"}
        )
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gemini-1.5-pro", messages=ASK, tools=[tool])
    assert raw.headers["x-llm-provider"] != "google" and raw.headers["x-llm-attempts"] == "1"
    assert gw.sims["google"].requests == [] and all(e.provider != "google" for e in gw.event_log.events)
    assert info.value.param == "tools" and "starting with a digit" in info.value.message


async def test_a_call_in_the_history_named_as_gemini_refuses_is_not_sent_to_gemini(gw: RunningGateway) -> None:
    """The check looked at the tools offered only: a conversation holding a call to ``1lookup``
    went to Gemini, whose 400 does not fall back (a review)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "1lookup", "arguments": "{}"}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history.append({"role": "tool", "tool_call_id": "call_1", "content": "done"})
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=history, extra_body={"provider": "google"}
        )
    assert raw.headers["x-llm-provider"] != "google" and gw.sims["google"].requests == []


async def test_tools_with_a_json_format_are_not_sent_to_a_gemini_before_3(gw: RunningGateway) -> None:
    """Gemini before 3 refuses tools with ``responseMimeType: application/json`` ("Tool use with a
    response mime type: 'application/json' is unsupported"), a 400 that does not fall back: the
    pair went to it, and a group's Ollama, which takes it, was never tried (a review)."""
    pair = {"tools": [WEATHER], "response_format": {"type": "json_object"}}
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=ASK, extra_body={"provider": "google"}, **pair
        )
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gemini-2.5-flash", messages=ASK, **pair)
    assert raw.headers["x-llm-provider"] != "google" and raw.headers["x-llm-attempts"] == "1"
    assert gw.sims["google"].requests == []
    assert info.value.param == "response_format" and info.value.code == "unsupported_parameter"
    assert "A JSON 'response_format' together with 'tools'" in info.value.message
    completion = await create(gw, "google", "gemini-3-pro-preview", **pair)  # Gemini 3 takes the pair
    assert completion.choices[0].finish_reason in ("stop", "tool_calls")
    body = gw.sims["google"].requests[-1].body
    assert body["tools"] and body["generationConfig"]["responseMimeType"] == "application/json"


@pytest.mark.parametrize("model", ["o3-mini", "o1", "o4-mini", "o3"])
async def test_openais_o_series_is_never_sent_parallel_tool_calls(gw: RunningGateway, model: str) -> None:
    """o1, o3 and o4 (and their mini) refuse ``parallel_tool_calls`` whatever its value
    ("Unsupported parameter: 'parallel_tool_calls' is not supported with this model."), a 400
    that does not fall back (a review): ``false`` (one call at most) cannot be carried to them,
    ``true`` (the model's own choice) goes out without the field; other models keep it."""
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], parallel_tool_calls=False)
    assert info.value.param == "parallel_tool_calls" and gw.sims["openai"].requests == []
    await create(gw, "openai", model, tools=[WEATHER], parallel_tool_calls=True)
    assert "parallel_tool_calls" not in gw.sims["openai"].requests[-1].body
    await create(gw, "openai", "gpt-4o", tools=[WEATHER], parallel_tool_calls=True)
    assert gw.sims["openai"].requests[-1].body["parallel_tool_calls"] is True


@pytest.mark.parametrize(("provider", "model"), [("google", "gemini-pro"), ("ollama", "llama3")])
async def test_results_sent_back_in_another_order_reach_each_call(
    gw: RunningGateway, provider: str, model: str
) -> None:
    """OpenAI pairs results with calls by id, so a client may send them in any order; Gemini and
    Ollama pair them by position and name: Rome's result went back first and the model read it
    as Paris's (review). They are sent in the order of the calls."""
    paris = {"id": "c_paris", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    rome = {"id": "c_rome", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [paris, rome]},
        _result("c_rome", '{"temp": "31C"}'),
        _result("c_paris", '{"temp": "12C"}'),
    ]
    await create(gw, provider, model, tools=[WEATHER], messages=history)
    body = gw.sims[provider].requests[-1].body
    if provider == "google":
        parts = [part for turn in body["contents"] for part in turn["parts"]]
        calls = [p["functionCall"]["args"]["city"] for p in parts if "functionCall" in p]
        results = [p["functionResponse"]["response"]["temp"] for p in parts if "functionResponse" in p]
    else:
        calls = [c["function"]["arguments"]["city"] for m in body["messages"] for c in m.get("tool_calls", [])]
        results = [json.loads(m["content"])["temp"] for m in body["messages"] if m["role"] == "tool"]
    assert (calls, results) == (["Paris", "Rome"], ["12C", "31C"])


@pytest.mark.parametrize(("provider", "model"), [("anthropic", "claude-3-haiku"), ("google", "gemini-pro")])
async def test_text_no_vendor_can_take_is_the_clients_error_not_the_providers(
    gw: RunningGateway, provider: str, model: str
) -> None:
    """A tool result holding a lone surrogate escape goes to Gemini as its text; a body that
    cannot be encoded at all (defence in depth) is a 400, and the provider's health never
    counts it (it was a connection error, and five such calls opened the circuit)."""
    from gateway.providers.http import encode_json

    with pytest.raises(errors.InvalidRequest, match="not valid Unicode"):
        encode_json({"messages": [{"content": "\udfff"}]})
    with pytest.raises(errors.InvalidRequest, match="nests too deep"):
        encode_json({"tools": [{"parameters": _nested(600)}]})
    history = [*ASK, _calls("c1"), _result("c1", '{"t": "\\udc00"}')]
    for _ in range(6):
        await create(gw, provider, model, tools=[WEATHER], messages=history)
    assert all(e.outcome == "success" for e in gw.event_log.events)
