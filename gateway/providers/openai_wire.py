"""OpenAI wire format, shared by the OpenAI and Azure OpenAI adapters (providers.md 1, 2, 6.1).

Pure mapping functions, unit-testable without HTTP: the request body (chat or legacy text
completions), the response and stream-chunk parsers (``chat.completion[.chunk]`` and
``text_completion``) and the error classifier. ``ChatRequest.prompt`` selects the legacy
``/completions`` endpoint; everything else goes to ``/chat/completions``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway import errors
from gateway.images import Image
from gateway.providers.http import default_classify, error_message, malformed, parse_retry_after, usage_unknown
from gateway.providers.sse import SseEvent, SseFramer
from gateway.tool_calls import ToolCall, ToolCallPart, ToolSpec, declaration, openai_tool_call
from gateway.types import (
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
    StreamChunk,
    UnreadableUsage,
    Usage,
    token_count,
)

CHAT_PATH = "chat/completions"
TEXT_PATH = "completions"

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # deprecated spelling of tool_calls
    "content_filter": "content_filter",
}

#: 429 (or 402/403) codes that mean "out of money", not "slow down": never worth a retry
QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "credit_balance_exhausted",
        "quota_exceeded",
    }
)
#: 400 codes of a prompt blocked by a content policy (Azure content_filter and friends)
CONTENT_FILTER_CODES = frozenset(
    {
        "content_filter",
        "content_policy_violation",
        "invalid_prompt",
        "ResponsibleAIPolicyViolation",
    }
)
_OVERLOAD_CODES = frozenset({"server_is_overloaded", "slow_down", "overloaded", "engine_overloaded"})
_RATE_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error", "requests", "tokens", "429"})
_HINT = re.compile(
    r"(?:try again|retry) (?:in|after) "
    r"(?:(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|mins?|minutes?)\b"  # 600ms, 6 seconds, 2 minutes
    r"|((?:\d+h)?(?:\d+m(?!s))?(?:\d+(?:\.\d+)?s)?)\b)",  # a Go duration: 6m0s, 1m30s, 1h2m3.5s
    re.I,
)
_GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", re.I)


# --- request --------------------------------------------------------------------------------


def endpoint(request: ChatRequest) -> str:
    """The path under the API root: legacy ``completions`` when a prompt is set, else chat."""
    return TEXT_PATH if request.prompt is not None else CHAT_PATH


def build_body(
    request: ChatRequest,
    *,
    model: str,
    stream: bool,
    chat_max_tokens_field: str = "max_completion_tokens",
    parallel_tool_calls: bool = True,
) -> dict[str, Any]:
    """The JSON body for ``endpoint(request)``.

    Chat sends ``messages`` and the length cap as ``chat_max_tokens_field`` (OpenAI:
    ``max_completion_tokens``; Azure GA api-versions: ``max_tokens``); legacy completions send
    ``prompt`` and ``max_tokens``. Streams always ask for usage (the gateway bills from it).
    ``parallel_tool_calls`` False: the model refuses the field, which is left out.
    """
    body: dict[str, Any] = {"model": model}
    if request.prompt is not None:
        body["prompt"] = request.prompt
        max_field = "max_tokens"
    else:
        body["messages"] = [
            _rich_message(m)
            if m.tool_calls or m.tool_call_id or m.name or m.parts
            else {"role": m.role, "content": m.content}
            for m in request.messages
        ]
        if request.tools is not None:
            _add_tools(body, request.tools, parallel_tool_calls)
        max_field = chat_max_tokens_field
    if request.max_tokens is not None:
        body[max_field] = request.max_tokens
    for key in ("temperature", "top_p", "stop", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.options is not None:  # OpenAI's own names and shapes
        for key in request.options.names():
            body[key] = getattr(request.options, key)
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _rich_message(message: Message) -> dict[str, Any]:
    """A message with more than a role and text: a tool result, an assistant message with calls
    (content null when it has no text), a participant's ``name``, text and images in parts."""
    if message.tool_call_id is not None:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.parts is not None:
        out["content"] = [_openai_part(part) for part in message.parts]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [openai_tool_call(call) for call in message.tool_calls]
    return out


def _openai_part(part: str | Image) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    image: dict[str, Any] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _add_tools(body: dict[str, Any], spec: ToolSpec, parallel_tool_calls: bool = True) -> None:
    body["tools"] = [
        {"type": "function", "function": declaration(tool, schema_key="parameters", strict=True)} for tool in spec.tools
    ]
    if spec.function is not None:
        body["tool_choice"] = {"type": "function", "function": {"name": spec.function}}
    elif spec.mode is not None:
        body["tool_choice"] = spec.mode
    if spec.parallel is not None and parallel_tool_calls:
        body["parallel_tool_calls"] = spec.parallel


def _tool_calls(provider: str, message: dict[str, Any]) -> tuple[ToolCall, ...]:
    """A message's complete ``tool_calls``."""
    raw = message.get("tool_calls")
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise malformed(provider, "tool_calls is not a list")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(item.get("id"), str):
            raise malformed(provider, f"tool call without an id or a function: {str(item)[:200]}")
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise malformed(provider, f"tool call {item['id']!r} without a name or arguments text")
        calls.append(ToolCall(item["id"], name, arguments))
    return tuple(calls)


def _tool_call_parts(provider: str, raw: Any) -> tuple[ToolCallPart, ...]:
    """A streamed delta's ``tool_calls``: pieces keyed by ``index``."""
    if not isinstance(raw, list):
        raise malformed(provider, "delta.tool_calls is not a list")
    parts = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("index"), int):
            raise malformed(provider, f"tool call piece without an index: {str(item)[:200]}")
        function = item.get("function") or {}
        if not isinstance(function, dict):
            raise malformed(provider, "tool call piece's function is not an object")
        call_id, name, arguments = item.get("id"), function.get("name"), function.get("arguments") or ""
        if not (call_id is None or isinstance(call_id, str)) or not (name is None or isinstance(name, str)):
            raise malformed(provider, "tool call piece's id or name is not text")
        if not isinstance(arguments, str):
            raise malformed(provider, "tool call piece's arguments are not text")
        parts.append(ToolCallPart(item["index"], call_id, name, arguments))
    return tuple(parts)


# --- responses ------------------------------------------------------------------------------


def map_finish_reason(value: Any) -> FinishReason | None:
    """OpenAI finish reason (Azure uses the same values); unknown non-null values -> ``stop``."""
    if value is None:
        return None
    return _FINISH.get(str(value), "stop")


def parse_usage(raw: Any, provider: str = "openai") -> Usage | None:
    """``usage`` with its details; None when absent (e.g. a stream chunk's ``"usage": null``) or
    unreadable (a count missing, negative, a float or a string: usage unknown, not 0 tokens)."""
    if not isinstance(raw, dict):
        return None
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    try:
        return Usage(
            prompt_tokens=token_count(raw, "prompt_tokens", required=True),
            completion_tokens=token_count(raw, "completion_tokens", required=True),
            cached_tokens=token_count(prompt_details, "cached_tokens") if isinstance(prompt_details, dict) else 0,
            reasoning_tokens=(
                token_count(completion_details, "reasoning_tokens") if isinstance(completion_details, dict) else 0
            ),
        )
    except UnreadableUsage as e:
        usage_unknown(provider, e)
        return None


def _choice_text(provider: str, choice: dict[str, Any], key: str) -> str:
    """Text of a choice: ``message``/``delta`` content for chat, ``text`` for text_completion."""
    if "text" in choice:
        text = choice["text"]
    else:
        part = choice.get(key)
        if part is None:
            return ""
        if not isinstance(part, dict):
            raise malformed(provider, f"choices[].{key} is {type(part).__name__}")
        text = part.get("content")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise malformed(provider, f"choice text is {type(text).__name__}")
    return text


def _first_choice(provider: str, data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        raise malformed(provider, f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise malformed(provider, "no choices list")
    if not choices:
        return None
    if not isinstance(choices[0], dict):
        raise malformed(provider, "choices[0] is not an object")
    return choices[0]


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def parse_response(data: Any, *, provider: str, requested_model: str, request_id: str | None = None) -> ChatResult:
    """A ``chat.completion`` or ``text_completion`` object as a ChatResult."""
    if isinstance(data, dict) and data.get("error") is not None:
        raise classify_inband_error(provider, data)
    choice = _first_choice(provider, data)
    if choice is None:
        raise malformed(provider, "empty choices")
    message = choice.get("message")
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return ChatResult(
        text=_choice_text(provider, choice, "message"),
        finish_reason=map_finish_reason(choice.get("finish_reason")) or "stop",
        usage=parse_usage(data.get("usage")),
        model=_model(data) or requested_model,
        upstream_request_id=request_id or (data.get("id") if isinstance(data.get("id"), str) else None),
        tool_calls=_tool_calls(provider, message) if isinstance(message, dict) else (),
        refusal=refusal if isinstance(refusal, str) and refusal else None,
    )


def parse_chunk(data: Any, *, provider: str) -> StreamChunk | None:
    """One streamed object (chat chunk or text_completion) -> a StreamChunk, or None if empty.

    Empty means no text, finish reason or usage: the role-only first delta, Azure's leading
    ``choices: []`` prompt-filter chunk. ``obfuscation`` and filter results are ignored.
    An object with an ``error`` key is an in-band failure and raised translated.
    """
    if not isinstance(data, dict):
        raise malformed(provider, f"expected a JSON object, got {type(data).__name__}")
    if data.get("error") is not None:
        raise classify_inband_error(provider, data)
    choices = data.get("choices")
    text, finish, parts, refusal = "", None, None, None
    if choices:  # what _first_choice checks, inlined: this runs for every streamed event
        if not isinstance(choices, list):
            raise malformed(provider, "no choices list")
        choice = choices[0]
        if not isinstance(choice, dict):
            raise malformed(provider, "choices[0] is not an object")
        text = _choice_text(provider, choice, "delta")
        delta = choice.get("delta")
        if delta:  # a dict: _choice_text checked it
            if delta.get("tool_calls"):
                parts = _tool_call_parts(provider, delta["tool_calls"])
            refusal = delta.get("refusal")
            if refusal is not None and not isinstance(refusal, str):
                raise malformed(provider, "delta.refusal is not text")
        reason = choice.get("finish_reason")
        if reason is not None:
            finish = _FINISH.get(str(reason), "stop")
    elif not isinstance(choices, list):
        raise malformed(provider, "no choices list")
    usage = data.get("usage")
    if usage is not None:
        usage = parse_usage(usage)
    if not text and finish is None and usage is None and parts is None and not refusal:
        return None
    model = data.get("model")
    return StreamChunk(text, finish, usage, model if isinstance(model, str) and model else None, parts, refusal or None)


_DONE = "[DONE]"
#: what :func:`_event_json` returns for ``data: [DONE]`` (``null`` is JSON, so not None)
_END = object()


def _event_json(data: bytes | str, provider: str) -> Any:
    """The JSON of one event's data, or ``_END`` for ``[DONE]``; bytes are parsed as they are
    (no decode) and decoded with replacement only when that fails."""
    try:
        return orjson.loads(data)
    except ValueError:
        pass
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    if text.strip() == _DONE:
        return _END
    try:
        return orjson.loads(text)
    except ValueError as exc:
        raise malformed(provider, f"stream event is not JSON: {text[:200]!r}") from exc


def _event_chunk(event: SseEvent, provider: str) -> StreamChunk | None:
    data = _event_json(event.data, provider)
    return None if data is _END else parse_chunk(data, provider=provider)


async def parse_stream(events: AsyncIterator[SseEvent], *, provider: str) -> AsyncIterator[StreamChunk]:
    """SSE events -> chunks; ends at ``data: [DONE]``, raises StreamCut if it never comes."""
    async for event in events:
        data = _event_json(event.data, provider)
        if data is _END:
            return
        chunk = parse_chunk(data, provider=provider)
        if chunk is not None:
            yield chunk
    raise _no_done(provider)


def _no_done(provider: str) -> errors.StreamCut:
    return errors.StreamCut(f"{provider}: stream ended without [DONE]", provider=provider, http_status=200)


async def parse_stream_batches(
    batches: AsyncIterator[list[SseEvent]], *, provider: str
) -> AsyncIterator[list[StreamChunk]]:
    """:func:`parse_stream` a network read at a time: one (non-empty) list of chunks per batch
    of events. Whatever a batch held before a bad event or ``[DONE]`` is yielded first, so the
    client gets exactly the chunks it would get one by one."""
    async for events in batches:
        chunks: list[StreamChunk] = []
        for event in events:
            try:
                data = _event_json(event.data, provider)
                if data is _END:
                    if chunks:
                        yield chunks
                    return
                chunk = parse_chunk(data, provider=provider)
            except errors.ProviderError:
                if chunks:
                    yield chunks
                raise
            if chunk is not None:
                chunks.append(chunk)
        if chunks:
            yield chunks
    raise _no_done(provider)


class StreamParser:
    """:func:`parse_stream_batches` over raw reads, without awaits or generators: the stream of
    one call, a network read at a time (what the adapters' ``stream_batches`` loop uses).

    ``feed(read)`` returns the chunks of the events the read completed. Then ``done`` tells
    whether ``data: [DONE]`` came (what followed it is ignored) and ``error`` holds what to
    raise: a bad or in-band error event, after the chunks that came before it. ``end()`` at the
    end of the body: an unterminated last event, and a StreamCut if ``[DONE]`` never came.
    """

    __slots__ = ("_framer", "done", "error", "provider")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self.error: errors.ProviderError | None = None
        self._framer = SseFramer()

    def feed(self, piece: bytes) -> list[StreamChunk]:
        return self._chunks(self._framer.feed(piece))

    def end(self) -> list[StreamChunk]:
        chunks = self._chunks(self._framer.close())
        if not self.done and self.error is None:
            self.error = _no_done(self.provider)
        return chunks

    def _chunks(self, events: list[tuple[bytes | None, bytes]]) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        if self.done or self.error is not None:
            return chunks
        provider = self.provider
        try:
            for _, raw in events:
                data = _END if raw == b"[DONE]" else _event_json(raw, provider)
                if data is _END:
                    self.done = True
                    break
                chunk = parse_chunk(data, provider=provider)
                if chunk is not None:
                    chunks.append(chunk)
        except errors.ProviderError as exc:
            self.error = exc
        return chunks


# --- errors ---------------------------------------------------------------------------------


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(code, type, param, innererror code) of an OpenAI / Azure error body."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None, None, None

    def text(value: Any) -> str | None:
        if isinstance(value, bool) or value is None:
            return None
        return str(value) if isinstance(value, str | int) else None

    inner = err.get("innererror")
    inner_code = text(inner.get("code")) if isinstance(inner, dict) else None
    return text(err.get("code")), text(err.get("type")), text(err.get("param")), inner_code


#: the largest ``innererror`` passed on (its JSON text): Azure's is a few hundred bytes
MAX_INNERERROR = 4096


def _innererror(body: Any) -> dict[str, Any] | None:
    """Azure's ``error.innererror`` of a content-filter 400, when it is an object of a sane size."""
    err = body.get("error") if isinstance(body, dict) else None
    inner = err.get("innererror") if isinstance(err, dict) else None
    if not isinstance(inner, dict):
        return None
    try:
        size = len(orjson.dumps(inner))
    except TypeError:  # nested past orjson's limit
        return None
    return inner if size <= MAX_INNERERROR else None


def retry_hint(message: str) -> float | None:
    """The wait named in a rate-limit message ("try again in 600ms", "retry after 6 seconds",
    "try again in 6m0s": OpenAI writes waits over a minute so, and they were not read, so the
    gateway retried after half a second and a second: review); None for none, or a zero one."""
    match = _HINT.search(message)
    if match is None:
        return None
    if match.group(1) is not None:
        value, unit = float(match.group(1)), match.group(2).lower()
        wait = value / 1000.0 if unit.startswith(("ms", "milli")) else value * 60.0 if unit.startswith("min") else value
    else:
        parts = _GO_DURATION.fullmatch(match.group(3))
        if parts is None or not any(parts.groups()):
            return None
        hours, minutes, seconds = (float(part) if part else 0.0 for part in parts.groups())
        wait = hours * 3600.0 + minutes * 60.0 + seconds
    return wait if wait > 0 else None


def classify_error(provider: str, status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    """A non-2xx OpenAI / Azure answer as a ProviderError (providers.md 1.6, 2.3, 6.1).

    On top of the shared status mapping: ``insufficient_quota`` and billing codes ->
    QuotaExhausted; a content-policy 400 -> ContentFiltered; ``x-should-retry: true`` makes a
    408/409/5xx retryable (Overloaded); a 429 without retry headers takes the wait named in its
    message.
    """
    code, etype, param, inner = _error_fields(body)
    message = error_message(body, raw.strip() or f"HTTP {status}")
    codes = {code, etype, inner}
    kwargs: dict[str, Any] = {
        "provider": provider,
        "http_status": status,
        "retry_after": parse_retry_after(headers),
        "upstream_code": code or etype or inner,
        "param": param,
    }
    text = f"{provider}: {message}"
    if codes & QUOTA_CODES and status in (402, 403, 429):
        return errors.QuotaExhausted(text, **kwargs)
    if codes & CONTENT_FILTER_CODES and status == 400:
        filtered = errors.ContentFiltered(text, **kwargs)
        filtered.innererror = _innererror(body)
        return filtered
    err = default_classify(provider, status, headers, message, kwargs["upstream_code"])
    if headers.get("x-should-retry") == "true" and not err.retryable and (status in (408, 409) or status >= 500):
        err = errors.Overloaded(text, **kwargs)
    if isinstance(err, errors.RateLimited) and err.retry_after is None:
        err.retry_after = retry_hint(message)
    err.param = param
    return err


def _inband_status(codes: set[str | None]) -> int:
    if codes & QUOTA_CODES or codes & _RATE_CODES:
        return 429
    if codes & _OVERLOAD_CODES:
        return 503
    if codes & CONTENT_FILTER_CODES or "invalid_request_error" in codes:
        return 400
    return 500


def classify_inband_error(provider: str, body: Any) -> errors.ProviderError:
    """``{"error": {...}}`` inside a 200 answer or stream, classified by its code and type."""
    code, etype, _, inner = _error_fields(body)
    status = _inband_status({code, etype, inner})
    err = classify_error(provider, status, {}, body, json.dumps(body)[:500])
    err.http_status = 200
    return err
