"""Anthropic function calling: tools and tool_choice in the body, calls and results in the
history as tool_use / tool_result blocks, tool_use blocks in answers and streams; the adapter
against its simulator over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway import errors
from gateway.providers import anthropic_wire as wire
from gateway.providers.anthropic import AnthropicProvider
from gateway.simulators.anthropic import AnthropicSimulator
from gateway.tool_calls import Tool, ToolCall, ToolCallPart, ToolSpec
from gateway.types import ChatRequest, Message, StreamChunk, Usage
from tests.unit.providers import test_anthropic as adapter_tests

#: the adapter's fixtures (its simulator, and the adapter pointed at it)
sim = adapter_tests.sim
provider = adapter_tests.provider

KEY = "sk-ant-test"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
MODEL = "claude-haiku-4-5-20251001"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
WEATHER = Tool("get_weather", "The weather in a city", WEATHER_SCHEMA)
TIME = Tool("get_time")
ASK = Message("user", "Weather in Paris?")
ROME = {"city": "Rome", "days": 1}


def req(*messages: Message, tools: ToolSpec | None = None) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=list(messages) or [ASK], tools=tools)


def body(*messages: Message, tools: ToolSpec | None = None) -> dict[str, Any]:
    return wire.build_body(req(*messages, tools=tools), stream=False)


def feed(parser: wire.StreamParser, event: str, **fields: Any) -> StreamChunk | None:
    return parser.feed(event, json.dumps({"type": event, **fields}))


# --- request mapping ------------------------------------------------------------------------------


def test_tools_map_to_input_schema() -> None:
    sent = body(tools=ToolSpec((WEATHER, TIME)))
    assert sent["tools"] == [
        {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in sent
    assert list(sent) == ["model", "max_tokens", "messages", "tools"]


@pytest.mark.parametrize(
    ("spec", "choice"),
    [
        (ToolSpec((WEATHER,), mode="auto"), {"type": "auto"}),
        (ToolSpec((WEATHER,), mode="required"), {"type": "any"}),
        (ToolSpec((WEATHER,), mode="none"), {"type": "none"}),
        (ToolSpec((WEATHER, TIME), mode="required", function="get_time"), {"type": "tool", "name": "get_time"}),
        (ToolSpec((WEATHER,), parallel=False), {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolSpec((WEATHER,), mode="required", parallel=False), {"type": "any", "disable_parallel_tool_use": True}),
        (
            ToolSpec((WEATHER,), mode="required", function="get_weather", parallel=False),
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        (ToolSpec((WEATHER,), mode="none", parallel=False), {"type": "none"}),  # no calls: nothing to limit
        (ToolSpec((WEATHER,), parallel=True), None),  # Anthropic's default
    ],
)
def test_tool_choice(spec: ToolSpec, choice: dict[str, Any] | None) -> None:
    assert body(tools=spec).get("tool_choice") == choice


def test_history_with_calls_and_results() -> None:
    calls = (
        ToolCall("toolu_1", "get_weather", '{"city": "Paris", "days": 2}'),
        ToolCall("toolu_2", "get_time", ""),
    )
    sent = body(
        Message("system", "Be brief."),
        ASK,
        Message("assistant", "Let me look.", tool_calls=calls),
        Message("tool", '{"sky": "clear"}', tool_call_id="toolu_1"),
        Message("tool", "12:00", tool_call_id="toolu_2"),
        Message("user", "And in Rome?"),
        Message("assistant", "", tool_calls=(ToolCall("toolu_3", "get_weather", json.dumps(ROME)),)),
        Message("tool", "", tool_call_id="toolu_3"),
        tools=ToolSpec((WEATHER, TIME)),
    )
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"sky": "clear"}'},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                {"type": "text", "text": "And in Rome?"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": ROME}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]


def test_whitespace_before_a_call_makes_no_text_block() -> None:
    """Models often write "\n\n" before a call (Ollama's and Gemini's answers through this
    gateway too): sent back as a text block of whitespace, it was Anthropic's 400 "text content
    blocks must contain non-whitespace text", which ends the call (a review)."""
    call = ToolCall("toolu_1", "get_time", "{}")
    sent = body(ASK, Message("assistant", "\n\n", tool_calls=(call,)), Message("tool", "12:00", tool_call_id="toolu_1"))
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}],
    }


def test_merging_around_tool_blocks() -> None:
    """Texts of the same role join the block list; results go ahead of a text already there."""
    call = ToolCall("toolu_1", "get_time", "{}")
    sent = body(
        ASK,
        Message("assistant", "Thinking."),
        Message("assistant", "", tool_calls=(call,)),
        Message("assistant", "More."),
        Message("user", "quick"),
        Message("tool", "12:00", tool_call_id="toolu_1"),
        Message("user", ""),
    )
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Thinking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}},
                {"type": "text", "text": "More."},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"},
                {"type": "text", "text": "quick"},
            ],
        },
    ]


def test_without_tools_the_body_is_unchanged() -> None:
    sent = body(ASK, Message("assistant", "ok"), Message("tool", "42"), Message("user", "again"))
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "42\n\nagain"},
    ]
    assert "tools" not in sent and "tool_choice" not in sent


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"text"', "null"])
def test_arguments_that_are_not_an_object_are_invalid(arguments: str) -> None:
    calls = (ToolCall("toolu_ok", "get_time", "{}"), ToolCall("toolu_bad", "get_weather", arguments))
    with pytest.raises(errors.InvalidRequest) as exc:
        body(ASK, Message("assistant", "", tool_calls=calls), tools=ToolSpec((WEATHER, TIME)))
    assert "'toolu_bad'" in exc.value.message and "JSON object" in exc.value.message
    assert exc.value.param == "messages[1].tool_calls[1].function.arguments"


# --- response parsing -----------------------------------------------------------------------------


def _message(*content: dict[str, Any], stop_reason: str = "tool_use") -> dict[str, Any]:
    return {
        "type": "message",
        "model": MODEL,
        "content": list(content),
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def test_parse_tool_use_only() -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Zürich", "days": 2}}
    result = wire.parse_message(_message(use), MODEL)
    assert result.text == "" and result.finish_reason == "tool_calls"
    assert result.tool_calls == (ToolCall("toolu_1", "get_weather", '{"city":"Zürich","days":2}'),)


def test_parse_text_then_tool_uses() -> None:
    result = wire.parse_message(
        _message(
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 1}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ),
        MODEL,
    )
    assert result.text == "Checking."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris", "days": 1}),
        ("toolu_2", "get_time", {}),
    ]


def test_parse_text_only_has_no_calls() -> None:
    result = wire.parse_message(_message({"type": "text", "text": "Hi"}, stop_reason="end_turn"), MODEL)
    assert (result.text, result.finish_reason, result.tool_calls) == ("Hi", "stop", ())


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_use", "name": "f", "input": {}},
        {"type": "tool_use", "id": "toolu_1", "input": {}},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": "{}"},
    ],
)
def test_parse_broken_tool_use_is_malformed(block: dict[str, Any]) -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.parse_message(_message(block), MODEL)


# --- stream parsing -------------------------------------------------------------------------------


def test_stream_text_then_two_tool_uses() -> None:
    parser = wire.StreamParser(MODEL)
    usage = {"input_tokens": 10, "output_tokens": 1}
    weather = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    clock = {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
    end = {"stop_reason": "tool_use", "stop_sequence": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": {"model": MODEL, "usage": usage}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": weather}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
        ("ping", {}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": clock}),
        ("content_block_stop", {"index": 2}),
        ("message_delta", {"delta": end, "usage": {"output_tokens": 30}}),
        ("message_stop", {}),
    ]  # fmt: skip
    chunks = [c for event, fields in events if (c := feed(parser, event, **fields)) is not None]
    assert parser.done
    assert chunks[0] == StreamChunk(text="Checking.", model=MODEL)
    parts = [p for c in chunks for p in c.tool_calls or ()]
    assert parts == [
        ToolCallPart(0, "toolu_1", "get_weather", ""),
        ToolCallPart(0, arguments='{"city": "Pa'),
        ToolCallPart(0, arguments='ris"}'),
        ToolCallPart(1, "toolu_2", "get_time", ""),
        ToolCallPart(1, arguments="{}"),  # no input deltas: the pieces still join to an object
    ]
    assert all(c.model == MODEL and not c.text for c in chunks[1:-1])
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage == Usage(prompt_tokens=10, completion_tokens=30)


def test_stream_input_of_other_blocks_is_ignored() -> None:
    parser = wire.StreamParser(MODEL)
    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    assert feed(parser, "content_block_start", index=0, content_block=block) is None
    delta = {"type": "input_json_delta", "partial_json": '{"q": 1}'}
    assert feed(parser, "content_block_delta", index=0, delta=delta) is None
    assert feed(parser, "content_block_stop", index=0) is None


# --- against the simulator ------------------------------------------------------------------------


async def test_complete_calls_a_tool(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    result = await provider.complete(req(tools=ToolSpec((WEATHER, TIME))))
    assert result.finish_reason == "tool_calls" and result.text == ""
    [call] = result.tool_calls
    assert call.id.startswith("toolu_sim") and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "sim", "days": 1}
    assert result.usage == Usage(prompt_tokens=3, completion_tokens=4)  # '{"city": "sim", "days": 1}'
    assert sim.requests[0].body["tools"][0]["input_schema"] == WEATHER_SCHEMA


async def test_complete_forced_tool(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    spec = ToolSpec((WEATHER, TIME), mode="required", function="get_time", parallel=False)
    result = await provider.complete(req(tools=spec))
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_time", "{}")]
    assert sim.requests[0].body["tool_choice"] == {
        "type": "tool",
        "name": "get_time",
        "disable_parallel_tool_use": True,
    }


async def test_complete_tool_choice_none_answers_text(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    result = await provider.complete(req(tools=ToolSpec((WEATHER,), mode="none")))
    assert (result.text, result.finish_reason, result.tool_calls) == (sim.reply, "stop", ())


async def test_stream_calls_a_tool(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    chunks = [c async for c in provider.stream(req(tools=ToolSpec((WEATHER,))))]
    parts = [p for c in chunks for p in c.tool_calls or ()]
    assert parts[0].index == 0 and parts[0].id and parts[0].id.startswith("toolu_sim")
    assert parts[0].name == "get_weather" and parts[0].arguments == ""
    assert len(parts) == 3 and all(p.index == 0 and p.id is None and p.name is None for p in parts[1:])
    assert json.loads("".join(p.arguments for p in parts)) == {"city": "sim", "days": 1}
    assert not any(c.text for c in chunks)
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage == Usage(prompt_tokens=3, completion_tokens=4)


@pytest.mark.parametrize("stream", [False, True])
async def test_results_go_back_and_the_model_answers(
    provider: AnthropicProvider, sim: AnthropicSimulator, stream: bool
) -> None:
    spec = ToolSpec((WEATHER,))
    first = await provider.complete(req(tools=spec))
    history = [
        ASK,
        Message("assistant", "", tool_calls=first.tool_calls),
        Message("tool", '{"sky": "clear"}', tool_call_id=first.tool_calls[0].id),
    ]
    if stream:
        chunks = [c async for c in provider.stream(req(*history, tools=spec))]
        text, finish = "".join(c.text for c in chunks), chunks[-1].finish_reason
        assert not any(c.tool_calls for c in chunks)
    else:
        second = await provider.complete(req(*history, tools=spec))
        text, finish = second.text, second.finish_reason
        assert second.tool_calls == ()
    assert (text, finish) == (sim.reply, "stop")
    sent = sim.requests[1].body["messages"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": first.tool_calls[0].id, "name": "get_weather", "input": {"city": "sim", "days": 1}}
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": first.tool_calls[0].id, "content": '{"sky": "clear"}'}],
    }


async def test_simulator_checks_results_answer_calls(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    """A result for a call the turn before did not make is Anthropic's 400."""
    history = [
        ASK,
        Message("assistant", "", tool_calls=(ToolCall("toolu_1", "get_weather", "{}"),)),
        Message("tool", "x", tool_call_id="toolu_other"),
    ]
    with pytest.raises(errors.UpstreamBadRequest) as exc:
        await provider.complete(req(*history, tools=ToolSpec((WEATHER,))))
    assert "toolu_other" in exc.value.message


def test_a_history_with_calls_but_no_tools_declares_them_uncallable() -> None:
    """OpenAI takes a conversation with calls and results and no ``tools``; Anthropic refuses
    tool_use / tool_result blocks unless tools are defined: the history's functions are
    declared, each once, without parameters, and ``tool_choice`` none keeps the model from them."""
    calls = (ToolCall("c1", "get_weather", '{"city":"Paris"}'), ToolCall("c2", "get_weather", "{}"))
    request = ChatRequest(
        model="claude-3-haiku",
        messages=[
            Message("user", "Weather?"),
            Message("assistant", "", calls),
            Message("tool", "sunny", tool_call_id="c1"),
            Message("tool", "rain", tool_call_id="c2"),
        ],
        tool_history=True,
    )
    out = wire.build_body(request, stream=False)
    assert out["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "none"}


def test_an_empty_assistant_turn_is_left_out() -> None:
    """``{"role": "assistant", "content": null, "tool_calls": []}`` is an empty turn at OpenAI;
    Anthropic refuses a message with empty content, so it is not sent."""
    out = body(Message("user", "a"), Message("assistant", ""), Message("user", "b"))
    assert out["messages"] == [{"role": "user", "content": "a\n\nb"}]


@pytest.mark.parametrize(
    "schema",
    [{}, {"properties": {"city": {"type": "string"}}}, {"anyOf": [{"required": ["city"]}, {"required": ["zip"]}]}],
)
async def test_a_schema_without_a_type_is_sent_as_an_object_schema(
    provider: AnthropicProvider, sim: AnthropicSimulator, schema: dict[str, Any]
) -> None:
    """OpenAI takes a parameters schema that does not say ``type: object``; Anthropic answers
    400 "tools.0.custom.input_schema.type: Field required", which does not fall back (review)."""
    result = await provider.complete(req(tools=ToolSpec((Tool("lookup", None, schema),))))
    assert result.finish_reason == "tool_calls"
    assert sim.requests[0].body["tools"][0]["input_schema"] == {"type": "object", **schema}


async def test_the_simulator_refuses_an_untyped_schema_as_anthropic_does(sim: AnthropicSimulator) -> None:
    body = {"model": "claude-3-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for schema, said in (({}, "Field required"), ({"type": "string"}, "Input should be 'object'")):
            tools = [{"name": "f", "input_schema": schema}]
            async with http.post(f"{sim.base_url}/v1/messages", json=body | {"tools": tools}, headers=HEADERS) as r:
                assert r.status == 400 and f"tools.0.custom.input_schema.type: {said}" in await r.text()
        tool_use = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
        last = [*body["messages"], {"role": "assistant", "content": [tool_use]}]
        tools = [{"name": "f", "input_schema": {"type": "object"}}]
        async with http.post(
            f"{sim.base_url}/v1/messages", json=body | {"tools": tools, "messages": last}, headers=HEADERS
        ) as r:
            assert r.status == 400 and "without `tool_result` blocks immediately after: t1" in await r.text()
