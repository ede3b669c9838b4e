"""``ChunkFormatter.sse`` (byte templates) writes exactly what building each chunk object and
``orjson.dumps`` of it wrote before, for any text, finish reason, model and id, chat or text."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.responses import ChunkFormatter, text_completion, text_finish
from gateway.types import ChatResult, FinishReason, StreamChunk, Usage


class ObjectFormatter:
    """The previous ChunkFormatter.content: one dict per chunk (the oracle)."""

    def __init__(self, endpoint: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self.chat = endpoint == "chat.completions"
        self.id, self.created, self.model, self.include_usage = response_id, created, model, include_usage
        self._role_sent = False

    def content(self, chunk: StreamChunk) -> dict[str, Any] | None:
        if not chunk.text and chunk.finish_reason is None and self._role_sent:
            return None
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }
        if self.chat:
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                delta["content"] = chunk.text
                self._role_sent = True
            elif chunk.text:
                delta["content"] = chunk.text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": chunk.finish_reason,
            }
        else:
            self._role_sent = True
            choice = {
                "index": 0,
                "text": chunk.text,
                "logprobs": None,
                "finish_reason": text_finish(chunk.finish_reason),
            }
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        return body


FINISH: list[FinishReason | None] = [None, "stop", "length", "tool_calls", "content_filter"]
TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["", '"\\', "\u2028\x00\x1f", "é \U0001f600", "</script>"]))
CHUNKS = st.builds(
    StreamChunk,
    text=TEXT,
    finish_reason=st.sampled_from(FINISH),
    usage=st.one_of(st.none(), st.just(Usage(1, 2))),
    model=st.one_of(st.none(), st.just("m")),
)


@settings(max_examples=300, deadline=None)
@given(
    endpoint=st.sampled_from(["chat.completions", "completions"]),
    response_id=st.text(max_size=12),
    created=st.integers(0, 2**40),
    model=TEXT,
    include_usage=st.booleans(),
    batches=st.lists(st.lists(CHUNKS, max_size=4), max_size=4),
)
def test_templates_write_what_the_objects_did(
    endpoint: str, response_id: str, created: int, model: str, include_usage: bool, batches: list[list[StreamChunk]]
) -> None:
    new = ChunkFormatter(endpoint, response_id, created, model, include_usage)
    old = ObjectFormatter(endpoint, response_id, created, model, include_usage)
    for batch in batches:
        expected = b"".join(
            b"data: " + orjson.dumps(obj) + b"\n\n" for obj in map(old.content, batch) if obj is not None
        )
        assert new.sse(batch) == expected


def test_usage_chunk_keeps_its_shape() -> None:
    formatter = ChunkFormatter("chat.completions", "chatcmpl-1", 7, "gpt-4o", True)
    assert formatter.usage(Usage(3, 2, cached_tokens=1), {"cost_usd": "0.1"}) == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "gpt-4o",
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "x_llm_gateway": {"cost_usd": "0.1"},
    }


def test_a_text_completion_never_finishes_with_tool_calls() -> None:
    """The legacy endpoint's finish reasons are stop, length and content_filter: an upstream that
    called a tool anyway (none is offered there) stopped; it was passed on as ``tool_calls``."""
    formatter = ChunkFormatter("completions", "cmpl-1", 7, "m", False)
    event = formatter.sse([StreamChunk(text="x", finish_reason="tool_calls")])
    assert orjson.loads(event.removeprefix(b"data: "))["choices"][0]["finish_reason"] == "stop"
    result = ChatResult(text="x", finish_reason="tool_calls", usage=None, model="m")
    assert text_completion("cmpl-1", 7, "m", result)["choices"][0]["finish_reason"] == "stop"
    chat = ChunkFormatter("chat.completions", "c-1", 7, "m", False).sse(
        [StreamChunk(text="", finish_reason="tool_calls")]
    )
    assert b'"finish_reason":"tool_calls"' in chat


def test_a_stream_that_begins_by_thinking_has_null_content_until_its_text() -> None:
    """Ollama's thinking models stream their thinking first (held as a ``thinking`` chunk to
    begin the stream). Then a tool call alone left the SDK's message content ``""`` where the
    same answer not streamed has ``null``; text after it still reads as the text."""
    formatter = ChunkFormatter("chat.completions", "chatcmpl-1", 1, "qwen3", False)
    first = orjson.loads(formatter.sse([StreamChunk(thinking=True)]).removeprefix(b"data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}
    later = formatter.sse([StreamChunk(text="Hi"), StreamChunk(finish_reason="stop")]).split(b"\n\n")
    assert orjson.loads(later[0].removeprefix(b"data: "))["choices"][0]["delta"] == {"content": "Hi"}
    # not thinking: an empty first text is "" (as OpenAI's own first chunk), and a legacy
    # completion's text is never null
    plain = ChunkFormatter("chat.completions", "chatcmpl-2", 1, "gpt-4", False).sse([StreamChunk()])
    assert orjson.loads(plain.removeprefix(b"data: "))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    legacy = ChunkFormatter("completions", "cmpl-3", 1, "qwen3", False).sse([StreamChunk(thinking=True)])
    assert orjson.loads(legacy.removeprefix(b"data: "))["choices"][0]["text"] == ""
