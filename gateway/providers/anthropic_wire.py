"""Anthropic Messages API wire mapping: pure functions, no HTTP (providers.md section 3).

Request body, response parsing, the stream event parser and the error classifier live here
so they can be tested without a server; ``anthropic.py`` only does the HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway import errors
from gateway.providers.http import default_classify, error_message, malformed, parse_retry_after
from gateway.types import ChatRequest, ChatResult, FinishReason, StreamChunk, Usage, is_token_count

PROVIDER = "anthropic"
#: Anthropic requires ``max_tokens``; used when the client did not set one
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: error.type -> the HTTP status Anthropic pairs it with (used for in-stream errors)
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

#: messages meaning "out of money / over the spend cap" (sent as 400 or as 429 without retry-after)
_QUOTA_PHRASES = (
    "credit balance is too low",
    "specified api usage limits",
    "spend limit",
    "extra usage is required",
    "usage credits are required",
)

_USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


# --- request ------------------------------------------------------------------------------------


def build_body(req: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The /v1/messages body: top-level ``system``, user/assistant turns merged by role."""
    turns: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role in ("system", "developer"):
            continue
        # Anthropic has no tool role; without tool-call ids a tool result is user text
        role = "assistant" if msg.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + msg.content
        else:
            turns.append({"role": role, "content": msg.content})
    if not turns and req.prompt is not None:
        turns.append({"role": "user", "content": req.prompt})
    system = req.system_text()
    if not turns and system is not None:
        # system messages alone (OpenAI answers them): Anthropic needs a turn, so they are it
        turns.append({"role": "user", "content": system})
        system = None

    body: dict[str, Any] = {
        "model": req.model,
        "max_tokens": req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system is not None:
        body["system"] = system
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if stream:
        body["stream"] = True
    return body


# --- responses ----------------------------------------------------------------------------------


def finish_reason(stop_reason: str | None) -> FinishReason:
    """providers.md 6.1; an unknown or missing reason reads as a natural stop."""
    if stop_reason is None:
        return "stop"
    return STOP_REASONS.get(stop_reason, "stop")


def _count(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if value is None:
        return 0
    if not is_token_count(value):
        raise malformed(PROVIDER, f"usage.{key} is {value!r}")
    return value


def usage_from(raw: Any) -> Usage:
    """Anthropic usage -> OpenAI semantics: prompt = uncached + cache writes + cache reads."""
    if not isinstance(raw, Mapping):
        raise malformed(PROVIDER, f"usage is {type(raw).__name__}")
    created = _count(raw, "cache_creation_input_tokens")
    read = _count(raw, "cache_read_input_tokens")
    return Usage(
        prompt_tokens=_count(raw, "input_tokens") + created + read,
        completion_tokens=_count(raw, "output_tokens"),
        cached_tokens=read,
        cache_creation_tokens=created,
    )


def _text_of(blocks: Any) -> str:
    if not isinstance(blocks, list):
        raise malformed(PROVIDER, "content is not a list")
    parts: list[str] = []
    for block in blocks:
        if not isinstance(block, Mapping):
            raise malformed(PROVIDER, "content block is not an object")
        if block.get("type") == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise malformed(PROVIDER, "text block without text")
            parts.append(text)
    return "".join(parts)


def parse_message(body: Any, requested_model: str, request_id: str | None = None) -> ChatResult:
    """A non-streaming Message -> ChatResult (text blocks only; thinking/tool_use skipped)."""
    if error_type(body) is not None:  # an error object behind a 200 (seen from proxies)
        raise classify(200, {}, body, "")
    if not isinstance(body, Mapping) or body.get("type", "message") != "message":
        raise malformed(PROVIDER, "not a Message object")
    stop_reason = body.get("stop_reason")
    model = body.get("model")
    return ChatResult(
        text=_text_of(body.get("content")),
        finish_reason=finish_reason(stop_reason if isinstance(stop_reason, str) else None),
        usage=usage_from(body.get("usage")),
        model=model if isinstance(model, str) and model else requested_model,
        upstream_request_id=request_id,
    )


class StreamParser:
    """Turns the named SSE events of one stream into StreamChunks.

    ``feed`` returns the chunk to emit (or None); it raises the translated ProviderError on an
    ``error`` event. ``done`` is set by ``message_stop``; a stream ending without it was cut.
    """

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.done = False
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None

    def feed(self, event: str | None, data: str) -> StreamChunk | None:
        try:
            payload = orjson.loads(data)
        except ValueError as exc:
            raise malformed(PROVIDER, f"stream event is not JSON: {data[:200]!r}") from exc
        if not isinstance(payload, Mapping):
            raise malformed(PROVIDER, "stream event is not an object")
        kind = event or payload.get("type")
        if kind == "error":
            raise classify(200, {}, payload, data)
        if kind == "message_start":
            self._start(payload.get("message"))
            return None
        if kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, Mapping) and block.get("type") == "text":
                return self._text(block.get("text"))
            return None
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and delta.get("type") == "text_delta":
                return self._text(delta.get("text"))
            return None
        if kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            self._merge_usage(payload.get("usage"))
            return None
        if kind == "message_stop":
            self.done = True
            return StreamChunk(
                finish_reason=finish_reason(self._stop_reason),
                usage=usage_from(self._usage),
                model=self.model,
            )
        return None  # ping, content_block_stop, and event types added later

    def _start(self, message: Any) -> None:
        if not isinstance(message, Mapping):
            raise malformed(PROVIDER, "message_start without a message")
        if isinstance(message.get("model"), str) and message["model"]:
            self.model = message["model"]
        self._merge_usage(message.get("usage"))

    def _merge_usage(self, raw: Any) -> None:
        # message_delta counts are cumulative: later non-null values replace earlier ones
        if isinstance(raw, Mapping):
            self._usage.update({k: raw[k] for k in _USAGE_FIELDS if raw.get(k) is not None})

    def _text(self, text: Any) -> StreamChunk | None:
        if not isinstance(text, str):
            raise malformed(PROVIDER, "text delta without text")
        return StreamChunk(text=text, model=self.model) if text else None


# --- errors -------------------------------------------------------------------------------------


def error_type(body: Any) -> str | None:
    if isinstance(body, Mapping):
        err = body.get("error")
        etype = err.get("type") if isinstance(err, Mapping) else None
        if isinstance(etype, str):
            return etype
    return None


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    """Map an Anthropic error (HTTP status + ``error.type``) to a ProviderError.

    ``status`` 200 means an ``event: error`` inside a stream: ``error.type`` decides alone.
    """
    etype = error_type(body)
    text = error_message(body, raw.strip()[:300] or f"HTTP {status}")
    effective = ERROR_TYPE_STATUS.get(etype or "", 500) if status < 300 else status
    kwargs: dict[str, Any] = {
        "provider": PROVIDER,
        "http_status": status,
        "retry_after": parse_retry_after(headers),
        "upstream_code": etype,
    }
    if (
        etype == "billing_error"
        or effective == 402
        or (effective in (400, 429) and any(p in text.lower() for p in _QUOTA_PHRASES))
    ):
        return errors.QuotaExhausted(f"{PROVIDER}: {text}", **kwargs)
    if etype == "overloaded_error":
        return errors.Overloaded(f"{PROVIDER}: {text}", **kwargs)
    err = default_classify(PROVIDER, effective, headers, text, etype)
    err.http_status = status
    return err
