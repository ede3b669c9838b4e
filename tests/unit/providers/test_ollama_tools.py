"""Ollama function calling: tools and the conversation's calls and results mapped to /api/chat,
the model's calls (argument objects, no ids) parsed back whole and streamed, and the adapter
against its simulator over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway import errors
from gateway.providers import ollama
from gateway.providers.base import Timeouts
from gateway.providers.ollama import OllamaProvider, build_body, parse_object
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.ollama import REFUSAL, OllamaSimulator
from gateway.tool_calls import Tool, ToolCall, ToolCallPart, ToolSpec
from gateway.types import CAPABILITIES, ChatRequest, Message, StreamChunk, Usage
from tests.unit.providers import test_ollama as adapter_tests

#: the adapter's fixtures (its simulator, and the adapter pointed at it)
sim = adapter_tests.sim
provider = adapter_tests.provider

WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
    strict=True,
)
TIME = Tool("get_time")
ASK = Message("user", "Weather in Paris?")
CALL = ToolCall("call_a", "get_weather", '{"city":"Paris","days":2}')
ID = re.compile(r"call_[0-9a-f]{24}")


def request(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="llama3.2", messages=list(messages or [ASK]), **kw)


# --- capabilities --------------------------------------------------------------------------


def test_tools_are_carried_but_not_a_forced_choice_nor_parallel_false() -> None:
    assert "tools" in OllamaProvider.options
    assert OllamaProvider.options == frozenset(CAPABILITIES) - {
        "tool_choice",
        "parallel_tool_calls",
        "image_urls",
        "reasoning_effort",
        "reasoning_effort_level",
    } | {"embeddings"}
    assert request(tools=ToolSpec((WEATHER,), mode="auto")).needs() == ["tools"]
    assert not set(request(tools=ToolSpec((WEATHER,), mode="required")).needs()) <= OllamaProvider.options


# --- request mapping -----------------------------------------------------------------------


def test_tools_in_openai_shape() -> None:
    body = build_body(request(tools=ToolSpec((WEATHER, TIME))), stream=False)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER.parameters,
            },
        },
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert "tool_choice" not in body and "parallel_tool_calls" not in body
    assert build_body(request(tools=ToolSpec((WEATHER,), mode="auto")), stream=True)["tools"][0]["function"][
        "name"
    ] == ("get_weather")


def test_tool_choice_none_sends_no_tools() -> None:
    body = build_body(request(tools=ToolSpec((WEATHER,), mode="none")), stream=False)
    assert "tools" not in body
    assert body["messages"] == [{"role": "user", "content": "Weather in Paris?"}]


def test_history_with_calls_and_results() -> None:
    other = ToolCall("call_b", "get_time", "")
    messages = [
        Message("system", "Be brief."),
        ASK,
        Message("assistant", "", tool_calls=(CALL, other)),
        Message("tool", '{"sky": "clear"}', tool_call_id="call_a"),
        Message("tool", "12:00", tool_call_id="call_b"),
        Message("assistant", "Clear skies."),
        Message("user", "Thanks"),
    ]
    body = build_body(request(*messages, tool_history=True), stream=False)
    assert "tools" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}},
                {"function": {"name": "get_time", "arguments": {}}},  # blank arguments: none
            ],
        },
        {"role": "tool", "content": '{"sky": "clear"}', "tool_name": "get_weather"},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "assistant", "content": "Clear skies."},
        {"role": "user", "content": "Thanks"},
    ]


def test_a_result_for_an_unknown_call_is_invalid() -> None:
    for messages in (
        [ASK, Message("tool", "42", tool_call_id="call_x")],
        # the call must come before its result
        [ASK, Message("tool", "42", tool_call_id="call_a"), Message("assistant", "", tool_calls=(CALL,))],
    ):
        with pytest.raises(errors.InvalidRequest) as info:
            build_body(request(*messages, tool_history=True), stream=False)
        assert info.value.param == "messages[1].tool_call_id"
        assert repr(messages[1].tool_call_id) in info.value.message


@pytest.mark.parametrize("arguments", ["[1, 2]", '"city"', "null", "{not json", '{"a": 1'])
def test_arguments_that_are_not_a_json_object_are_invalid(arguments: str) -> None:
    call = ToolCall("call_bad", "get_weather", arguments)
    with pytest.raises(errors.InvalidRequest) as info:
        build_body(request(ASK, Message("assistant", "", tool_calls=(CALL, call)), tool_history=True), stream=False)
    assert "'call_bad'" in info.value.message
    assert info.value.param == "messages[1].tool_calls[1].function.arguments"


# --- response parsing ----------------------------------------------------------------------


def answer(*calls: dict[str, Any], done: bool = True, content: str = "") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content, "tool_calls": list(calls)},
        "done": done,
    }
    if done:
        obj |= {"done_reason": "stop", "prompt_eval_count": 10, "eval_count": 7}
    return obj


def test_calls_with_object_and_text_arguments() -> None:
    piece = parse_object(
        answer(
            {"function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}, "index": 0}},
            {"function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}},
            {"function": {"name": "get_time"}},
        )
    )
    [weather, time, bare] = piece.tool_calls
    assert (weather.name, weather.arguments) == ("get_weather", '{"city":"Zürich","days":2}')
    assert (time.name, time.arguments) == ("get_time", '{"tz": "UTC"}')  # text: kept as it is
    assert bare.arguments == "{}"
    assert all(ID.fullmatch(c.id) for c in piece.tool_calls) and len({c.id for c in piece.tool_calls}) == 3
    assert piece.has_tool_calls
    assert ollama.map_finish_reason(piece.done_reason, has_tool_calls=piece.has_tool_calls) == "tool_calls"


def test_no_calls() -> None:
    piece = parse_object(answer(content="Hi"))
    assert piece.tool_calls == () and not piece.has_tool_calls
    absent = answer(content="Hi")
    del absent["message"]["tool_calls"]
    assert parse_object(absent).tool_calls == ()


@pytest.mark.parametrize(
    "calls",
    [
        {"function": {"name": "f"}},  # not a list
        [{"name": "f"}],
        [{"function": {"arguments": {}}}],
        [{"function": {"name": "", "arguments": {}}}],
        [{"function": {"name": "f", "arguments": [1]}}],
    ],
)
def test_malformed_calls(calls: Any) -> None:
    obj = answer()
    obj["message"]["tool_calls"] = calls
    with pytest.raises(errors.MalformedResponse):
        parse_object(obj)


async def _lines(lines: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """A body as ``iter_ndjson_lines`` reads it: one line at a time."""
    for line in lines:
        yield orjson.dumps(line) + b"\n"


class _Body:
    """The lines, and a body that has ended (nothing to wait for after ``done: true``)."""

    ended = True

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self._lines = lines

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _lines(self._lines)


class _Resp:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.content = _Body(lines)


async def test_stream_parsing_counts_calls_across_the_stream() -> None:
    weather = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    time = {"function": {"name": "get_time", "arguments": {}}}
    lines = [
        answer(done=False, content="Let me check."),
        answer(weather, time, done=False),
        answer({"function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}}, done=False),
        answer(),
    ]
    p = OllamaProvider(ProviderSettings(), None, Timeouts())  # type: ignore[arg-type]
    chunks = [c async for c in p._chunks(_Resp(lines), "llama3.2")]  # type: ignore[arg-type]
    assert [c.text for c in chunks] == ["Let me check.", "", "", ""]
    assert chunks[0].tool_calls is None
    parts = [part for c in chunks for part in c.tool_calls or ()]
    assert [(p.index, p.name, p.arguments) for p in parts] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "get_time", "{}"),
        (2, "get_time", '{"tz":"UTC"}'),
    ]
    assert all(p.id is not None and ID.fullmatch(p.id) for p in parts)
    assert [len(c.tool_calls or ()) for c in chunks] == [0, 2, 1, 0]
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage == Usage(10, 7)
    assert all(c.finish_reason is None for c in chunks[:-1])


# --- the adapter against the simulator -----------------------------------------------------


async def test_complete_with_a_call(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    result = await provider.complete(request(tools=ToolSpec((WEATHER, TIME))))
    sent = sim.requests[-1].body
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert (result.text, result.finish_reason) == ("", "tool_calls")
    [call] = result.tool_calls
    assert ID.fullmatch(call.id) and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "sim", "days": 1}
    assert result.usage is not None and result.usage.completion_tokens > 0


async def test_stream_with_a_call(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    chunks: list[StreamChunk] = [c async for c in provider.stream(request(tools=ToolSpec((WEATHER,)), stream=True))]
    parts = [part for c in chunks for part in c.tool_calls or ()]
    [part] = parts
    assert isinstance(part, ToolCallPart) and part.index == 0 and part.id and ID.fullmatch(part.id)
    assert part.name == "get_weather" and json.loads(part.arguments) == {"city": "sim", "days": 1}
    assert "".join(c.text for c in chunks) == ""
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage is not None
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_results_go_back_and_the_model_answers(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    first = await provider.complete(request(tools=ToolSpec((WEATHER,))))
    [call] = first.tool_calls
    history = [ASK, Message("assistant", "", tool_calls=(call,)), Message("tool", "sunny", tool_call_id=call.id)]
    for stream in (False, True):
        req = request(*history, tools=ToolSpec((WEATHER,)), tool_history=True, stream=stream)
        if stream:
            chunks = [c async for c in provider.stream(req)]
            assert "".join(c.text for c in chunks) == sim.reply and chunks[-1].finish_reason == "stop"
            assert all(c.tool_calls is None for c in chunks)
        else:
            second = await provider.complete(req)
            assert (second.text, second.finish_reason, second.tool_calls) == (sim.reply, "stop", ())
        sent = sim.requests[-1].body["messages"]
        assert sent[1] == {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "sim", "days": 1}}}],
        }
        assert sent[2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


async def test_tool_choice_none_gets_text(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    result = await provider.complete(request(tools=ToolSpec((WEATHER,), mode="none")))
    assert (result.text, result.finish_reason, result.tool_calls) == (sim.reply, "stop", ())
    assert "tools" not in sim.requests[-1].body


async def test_simulator_refusal_and_stream_faults_with_tools(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("content_filter"))
    result = await provider.complete(request(tools=ToolSpec((WEATHER,))))
    assert (result.text, result.tool_calls) == (REFUSAL, ())
    sim.faults.push(Fault("cut", after_chunks=1))
    got: list[StreamChunk] = []
    with pytest.raises(errors.StreamCut):
        async for chunk in provider.stream(request(tools=ToolSpec((WEATHER,)), stream=True)):
            got.append(chunk)
    assert [len(c.tool_calls or ()) for c in got] == [1]
