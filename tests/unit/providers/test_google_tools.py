"""Gemini function calling: declarations, tool config, calls and results in the history, calls
in answers and streams; the pure wire mapping, then the adapter against its simulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import errors
from gateway.providers import google_wire as wire
from gateway.providers.base import Timeouts
from gateway.providers.google import GoogleProvider
from gateway.settings import ProviderSettings
from gateway.simulators.google import GeminiSimulator
from gateway.tool_calls import Tool, ToolCall, ToolCallPart, ToolSpec
from gateway.types import CAPABILITIES, ChatRequest, Message, StreamChunk
from tests.unit.providers import test_google as adapter_tests

#: the adapter's fixtures (its simulator, and the adapter pointed at it)
sim = adapter_tests.sim
provider = adapter_tests.provider

KEY = "gm-test-key"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
WEATHER = Tool("get_weather", "The weather in a city", WEATHER_SCHEMA)
TIME = Tool("get_time")
ASK = Message("user", "Weather in Paris and Rome?")
PARIS = ToolCall("call_1", "get_weather", '{"city":"Paris","days":1}')
ROME = ToolCall("call_2", "get_weather", '{"city": "Rome", "days": 2}')


def request(messages: list[Message] | None = None, **kw: Any) -> ChatRequest:
    return ChatRequest("gemini-2.5-flash", messages or [ASK], **kw)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)


def test_the_adapter_carries_tools_and_their_choice_but_not_parallel_false() -> None:
    assert GoogleProvider.options == frozenset(CAPABILITIES) - {
        "parallel_tool_calls",
        "image_urls",
        "gif_images",
        "tool_names",
        "blank_content",
        "reasoning_effort_level",
    } | {"embeddings"}
    assert request(tools=ToolSpec((WEATHER,), parallel=False)).needs() == ["tools", "parallel_tool_calls"]


# --- request mapping ---------------------------------------------------------------------------


def test_declarations_use_json_schema_and_omit_what_is_unset() -> None:
    body = wire.build_body(request(tools=ToolSpec((WEATHER, TIME, Tool("strict_one", None, {}, strict=True)))))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "The weather in a city", "parametersJsonSchema": WEATHER_SCHEMA},
                {"name": "get_time"},
                {"name": "strict_one", "parametersJsonSchema": {"type": "object"}},  # the root typed
            ]
        }
    ]
    assert "toolConfig" not in body  # mode None: Gemini's default (AUTO)
    assert body["contents"] == [{"role": "user", "parts": [{"text": ASK.content}]}]


@pytest.mark.parametrize(
    ("spec", "config"),
    [
        (ToolSpec((WEATHER,), mode="auto"), {"mode": "AUTO"}),
        (ToolSpec((WEATHER,), mode="required"), {"mode": "ANY"}),
        (ToolSpec((WEATHER,), mode="none"), {"mode": "NONE"}),
        (
            ToolSpec((WEATHER, TIME), mode="required", function="get_time"),
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
)
def test_tool_choice_is_the_function_calling_mode(spec: ToolSpec, config: dict[str, Any]) -> None:
    assert wire.build_body(request(tools=spec))["toolConfig"] == {"functionCallingConfig": config}


def test_calls_and_results_in_the_history() -> None:
    history = [
        Message("system", "Be brief."),
        ASK,
        Message("assistant", "Let me check.", (PARIS, ROME)),
        Message("tool", '{"sky": "clear"}', tool_call_id="call_1"),
        Message("tool", "rain", tool_call_id="call_2"),
        Message("user", "And tomorrow?"),
        Message("assistant", "", (ToolCall("call_3", "get_time", ""),)),
        Message("tool", "[1, 2]", tool_call_id="call_3"),
    ]
    body = wire.build_body(request(history, tools=ToolSpec((WEATHER, TIME))))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": ASK.content}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 1}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome", "days": 2}}},
            ],
        },
        {
            "role": "user",  # both results in one turn, then the next user message merged in
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "rain"}}},
                {"text": "And tomorrow?"},
            ],
        },
        # no text part for empty content; blank arguments are no arguments
        {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]},
        # a result that is JSON but not an object is wrapped as text
        {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "response": {"content": "[1, 2]"}}}]},
    ]


def test_a_call_after_text_of_the_same_turn_merges_into_it() -> None:
    history = [ASK, Message("assistant", "Hmm."), Message("assistant", "", (PARIS,))]
    assert wire.build_body(request(history))["contents"][1] == {
        "role": "model",
        "parts": [{"text": "Hmm."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 1}}}],
    }


def test_a_conversation_without_tools_is_unchanged() -> None:
    messages = [Message("user", "a"), Message("tool", "b"), Message("assistant", "")]
    assert wire.build_body(request(messages)) == {
        "contents": [
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        ],
        "generationConfig": {"candidateCount": 1},
    }


@pytest.mark.parametrize(
    "history",
    [
        [ASK, Message("tool", "x", tool_call_id="call_9")],
        # a call made only later does not name an earlier result
        [ASK, Message("tool", "x", tool_call_id="call_1"), Message("assistant", "", (PARIS,))],
    ],
)
def test_a_result_for_an_unknown_call_is_invalid(history: list[Message]) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        wire.build_body(request(history))
    assert "call_" in info.value.message and info.value.param == "messages[1].tool_call_id"


@pytest.mark.parametrize("arguments", ["not json", "[1]", '"text"', "{"])
def test_arguments_that_are_not_an_object_are_invalid(arguments: str) -> None:
    bad = ToolCall("call_bad", "get_weather", arguments)
    with pytest.raises(errors.InvalidRequest) as info:
        wire.build_body(request([ASK, Message("assistant", "", (PARIS, bad))]))
    assert "call_bad" in info.value.message
    assert info.value.param == "messages[1].tool_calls[1].function.arguments"


# --- response parsing --------------------------------------------------------------------------


def answer(*parts: dict[str, Any], finish: str | None = "STOP") -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}


def test_a_call_with_text_and_gemini_s_id() -> None:
    piece = wire.parse_response(
        answer(
            {"text": "thinking", "thought": True},
            {"text": "Checking. "},
            {"functionCall": {"id": "g-1", "name": "get_weather", "args": {"city": "Paris", "note": "été"}}},
        )
    )
    assert piece.text == "Checking. " and piece.finish() == "tool_calls"
    assert piece.tool_calls == [ToolCall("g-1", "get_weather", '{"city":"Paris","note":"été"}')]


def test_calls_without_text_or_id_get_fresh_ids() -> None:
    piece = wire.parse_response(
        answer(
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time"}},
        )
    )
    assert piece.text == "" and piece.finish() == "tool_calls"
    first, second = piece.tool_calls
    assert (first.name, first.arguments, second.name, second.arguments) == (
        "get_weather",
        '{"city":"Paris"}',
        "get_time",
        "{}",
    )
    assert first.id.startswith("call_") and len(first.id) == 29 and first.id != second.id


def test_text_alone_has_no_calls() -> None:
    piece = wire.parse_response(answer({"text": "Sunny."}))
    assert (piece.tool_calls, piece.finish()) == ([], "stop")


@pytest.mark.parametrize(
    "call",
    [{"args": {}}, {"name": 3}, {"name": "f", "args": [1]}, "f"],
)
def test_a_malformed_call_is_a_malformed_response(call: Any) -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.parse_response(answer({"functionCall": call}))


# --- stream parsing ---------------------------------------------


class _Lines:
    """``resp.content`` as the adapter reads it: the body a line at a time."""

    def __init__(self, body: bytes) -> None:
        self._lines = body.splitlines(keepends=True)

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        if not self._lines:
            raise StopAsyncIteration
        return self._lines.pop(0)


async def parse_stream(body: bytes) -> list[StreamChunk]:
    class Resp:
        content = _Lines(body)

    p = GoogleProvider(ProviderSettings(api_key="k"), None, Timeouts())  # type: ignore[arg-type]
    return [c async for c in p._chunks(Resp(), "m")]  # type: ignore[arg-type]


async def test_stream_parsing_counts_calls_across_the_stream() -> None:
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14}
    body = sse(
        answer({"text": "Checking."}, finish=None),
        answer(
            {"functionCall": {"id": "g-1", "name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
            finish=None,
        ),
        answer({"functionCall": {"name": "get_time", "args": {}}}, finish="STOP") | {"usageMetadata": usage},
    )
    chunks = await parse_stream(body)
    assert chunks[0].text == "Checking." and chunks[0].tool_calls is None
    parts = [p for c in chunks for p in c.tool_calls or ()]
    assert [(p.index, p.name, p.arguments) for p in parts] == [
        (0, "get_weather", '{"city":"Paris"}'),
        (1, "get_weather", '{"city":"Rome"}'),
        (2, "get_time", "{}"),
    ]
    assert parts[0].id == "g-1" and all(p.id and p.id.startswith("call_") for p in parts[1:])
    assert parts[1].id != parts[2].id
    last = chunks[-1]
    assert last.finish_reason == "tool_calls" and last.usage is not None and last.usage.total_tokens == 14
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


# --- against the simulator ---------------------------------------------------------------------


async def test_the_model_calls_the_first_declared_function(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    result = await provider.complete(request(tools=ToolSpec((WEATHER, TIME))))
    assert result.finish_reason == "tool_calls" and result.text == ""
    [call] = result.tool_calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "sim", "days": 1}
    assert result.usage is not None and result.usage.prompt_tokens > 0
    sent = sim.requests[-1].body
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER_SCHEMA


async def test_a_forced_function_is_called(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    spec = ToolSpec((WEATHER, TIME), mode="required", function="get_time")
    result = await provider.complete(request(tools=spec))
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_time", "{}")]
    assert sim.requests[-1].body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
    }


async def test_mode_none_answers_in_text(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    result = await provider.complete(request(tools=ToolSpec((WEATHER,), mode="none")))
    assert (result.text, result.finish_reason, result.tool_calls) == (sim.reply, "stop", ())


async def test_the_results_go_back_and_the_model_answers(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    first = await provider.complete(request(tools=ToolSpec((WEATHER,))))
    [call] = first.tool_calls
    history = [ASK, Message("assistant", "", (call,)), Message("tool", '{"sky": "clear"}', tool_call_id=call.id)]
    second = await provider.complete(request(history, tools=ToolSpec((WEATHER,))))
    assert (second.text, second.finish_reason, second.tool_calls) == (sim.reply, "stop", ())
    assert sim.requests[-1].body["contents"][-1] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}],
    }


async def test_the_simulator_refuses_results_that_do_not_pair_with_calls(
    sim: GeminiSimulator, provider: GoogleProvider
) -> None:
    """One result for two calls: Gemini's 400 (the simulator checks what the real API does)."""
    history = [ASK, Message("assistant", "", (PARIS, ROME)), Message("tool", "x", tool_call_id="call_1")]
    with pytest.raises(errors.ProviderError) as info:
        await provider.complete(request(history))
    assert info.value.http_status == 400 and "number of function response parts" in info.value.message


async def test_a_streamed_call(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    chunks = [c async for c in provider.stream(request(tools=ToolSpec((WEATHER,)), stream=True))]
    parts = [p for c in chunks for p in c.tool_calls or ()]
    assert len(parts) == 1 and isinstance(parts[0], ToolCallPart)
    [part] = parts
    assert part.index == 0 and part.id and part.name == "get_weather"
    assert json.loads(part.arguments) == {"city": "sim", "days": 1}
    assert "".join(c.text for c in chunks) == ""
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and sim.requests[-1].query == {"alt": "sse"}


async def test_a_streamed_call_with_a_thought_first(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.thoughts_tokens = 12
    chunks = [c async for c in provider.stream(request(tools=ToolSpec((TIME,)), stream=True))]
    assert [(p.index, p.name, p.arguments) for c in chunks for p in c.tool_calls or ()] == [(0, "get_time", "{}")]
    assert chunks[-1].usage is not None and chunks[-1].usage.reasoning_tokens == 12


def test_a_tool_result_nested_past_pythons_parser_goes_as_text() -> None:
    """A tool message's content is the client's: nested past what Python parses, it raised in
    the adapter, counted as Gemini's failure (a tenant could open Gemini's circuit for all)."""
    deep = '{"a":' + "[" * 1010 + "]" * 1010 + "}"
    assert wire._tool_result(deep) == {"content": deep}
    assert wire._tool_result('{"temp": 21}') == {"temp": 21}


def test_a_result_with_what_json_has_no_number_for_goes_as_its_text() -> None:
    """Python's parser reads NaN and 1e400, which the body then carried as null: Gemini was
    told the result was {"a": null} (review)."""
    for content in ('{"a": NaN}', '{"a": 1e400}'):
        body = wire.build_body(
            request([ASK, Message("assistant", "", (PARIS,)), Message("tool", content, tool_call_id="call_1")])
        )
        [response] = [
            p["functionResponse"] for turn in body["contents"] for p in turn["parts"] if "functionResponse" in p
        ]
        assert response["response"] == {"content": content}
    big = '{"a": 123456789012345678901234567890}'  # exact past 64 bits: still an object
    body = wire.build_body(
        request([ASK, Message("assistant", "", (PARIS,)), Message("tool", big, tool_call_id="call_1")])
    )
    [response] = [p["functionResponse"] for turn in body["contents"] for p in turn["parts"] if "functionResponse" in p]
    assert response["response"] == {"a": 123456789012345678901234567890}


def test_a_result_nested_too_deep_to_re_encode_goes_as_its_text() -> None:
    """A tool result nested about 960 levels parsed, then the body with Gemini's wrapper around
    it could not be encoded: a 400 with no fallback, though OpenAI takes the same call (re-test).
    A result nested deeper than the bound the API keeps for schemas and arguments (64) goes as
    text."""
    from gateway.providers.http import encode_json

    deep = '{"a":' * 100 + "1" + "}" * 100
    body = wire.build_body(
        request([ASK, Message("assistant", "", (PARIS,)), Message("tool", deep, tool_call_id="call_1")])
    )
    [response] = [p["functionResponse"] for turn in body["contents"] for p in turn["parts"] if "functionResponse" in p]
    assert response["response"] == {"content": deep}
    assert encode_json(body)  # the body can be sent
    shallow = '{"a":' * 10 + "1" + "}" * 10  # a result within the bound stays an object
    body = wire.build_body(
        request([ASK, Message("assistant", "", (PARIS,)), Message("tool", shallow, tool_call_id="call_1")])
    )
    [response] = [p["functionResponse"] for turn in body["contents"] for p in turn["parts"] if "functionResponse" in p]
    assert isinstance(response["response"], dict) and "content" not in response["response"]
