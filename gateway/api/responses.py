"""OpenAI response bodies: chat.completion, text_completion, and their stream chunks."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.tool_calls import openai_tool_call, openai_tool_call_part
from gateway.types import ChatResult, StreamChunk, Usage


def _message(result: ChatResult) -> dict[str, Any]:
    if not result.tool_calls and result.refusal is None:
        return {"role": "assistant", "content": result.text, "refusal": None}
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None, "refusal": result.refusal}
    if result.tool_calls:
        message["tool_calls"] = [openai_tool_call(call) for call in result.tool_calls]
    return message


def chat_completion(response_id: str, created: int, model: str, result: ChatResult) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _message(result),
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": None if result.usage is None else result.usage.to_openai(),
    }


def text_completion(response_id: str, created: int, model: str, result: ChatResult) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": result.text, "logprobs": None, "finish_reason": text_finish(result.finish_reason)}
        ],
        "usage": None if result.usage is None else result.usage.to_openai(),
    }


class ChunkFormatter:
    """Builds the stream events of one response: chat chunks or text_completion objects.

    Every content event of a response shares its id, object, created, model and (with
    ``include_usage``) ``"usage": null``, so they are rendered once, as byte templates around the
    parts that change (the text and the finish reason). The bytes are exactly
    ``data: `` + ``orjson.dumps`` of the chunk object + a blank line (tests/unit/test_stream_formatter.py
    holds the object-building version as the oracle)."""

    def __init__(self, endpoint: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self.chat = endpoint == "chat.completions"
        self.id = response_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._role_sent = False
        self._finish_json = _FINISH_JSON if self.chat else _TEXT_FINISH_JSON
        kind = b'"chat.completion.chunk"' if self.chat else b'"text_completion"'
        head = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(response_id),
                b',"object":',
                kind,
                b',"created":',
                orjson.dumps(created),
                b',"model":',
                orjson.dumps(model),
                b',"choices":[{"index":0,',
            )
        )
        #: after the finish reason: the choice, the choices and the object end
        self._end = b'}],"usage":null}\n\n' if include_usage else b"}]}\n\n"
        if self.chat:
            self._first = head + b'"delta":{"role":"assistant","content":'
            self._text = head + b'"delta":{"content":'
            self._finish_only = head + b'"delta":{},"logprobs":null,"finish_reason":'
            self._after_text = b'},"logprobs":null,"finish_reason":'
        else:
            self._first = self._text = head + b'"text":'
            self._finish_only = b""  # a text_completion object always has its text
            self._after_text = b',"logprobs":null,"finish_reason":'

    def sse(self, chunks: list[StreamChunk]) -> bytes:
        """The SSE events for upstream chunks that arrived together (b"" if none says anything).

        The first event of a chat stream carries the role (and the text, even empty; null for a
        model that began by thinking); later chunks without text or finish reason say nothing
        and are left out."""
        out: list[bytes] = []
        add = out.extend
        end = self._end
        for chunk in chunks:
            if (chunk.tool_calls or chunk.refusal) and self.chat:
                add((b"data: ", orjson.dumps(self._object_chunk(chunk)), b"\n\n"))
                continue
            text = chunk.text
            finish = chunk.finish_reason
            reason = b"null" if finish is None else self._finish_json.get(finish) or orjson.dumps(finish)
            if not self._role_sent:
                self._role_sent = True
                # a model that thinks first may answer with calls alone: its content is null
                # then, as the whole answer's is (it was "": a review)
                content = b"null" if chunk.thinking and not text and self.chat else orjson.dumps(text)
                add((self._first, content, self._after_text, reason, end))
            elif text:
                add((self._text, orjson.dumps(text), self._after_text, reason, end))
            elif finish is not None:
                if self.chat:
                    add((self._finish_only, reason, end))
                else:
                    add((self._text, b'""', self._after_text, reason, end))
        return b"".join(out)

    def _object_chunk(self, chunk: StreamChunk) -> dict[str, Any]:
        """A chunk with pieces of tool calls or of a refusal (rare: built as an object, not from
        the templates)."""
        delta: dict[str, Any] = {}
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", "content": None}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.refusal:
            delta["refusal"] = chunk.refusal
        if chunk.tool_calls:
            delta["tool_calls"] = [openai_tool_call_part(part) for part in chunk.tool_calls]
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": chunk.finish_reason}],
        }
        if self.include_usage:
            obj["usage"] = None
        return obj

    def usage(self, usage: Usage, extension: dict[str, Any]) -> dict[str, Any]:
        """The final ``choices: []`` chunk with the totals and the gateway's extension field."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
            "x_llm_gateway": extension,
        }


_FINISH_JSON: dict[str, bytes] = {
    reason: orjson.dumps(reason) for reason in ("stop", "length", "tool_calls", "content_filter")
}
#: a text_completion's finish reasons are stop, length and content_filter: an upstream that
#: called a tool anyway (no tools go on this endpoint) stopped
_TEXT_FINISH_JSON = {**_FINISH_JSON, "tool_calls": _FINISH_JSON["stop"]}


def text_finish(reason: str | None) -> str | None:
    """A finish reason as the legacy completions endpoint has them (see ``_TEXT_FINISH_JSON``)."""
    return "stop" if reason == "tool_calls" else reason
