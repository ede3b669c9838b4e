"""Ollama adapter: ``POST /api/chat``, JSON or NDJSON stream, string errors.

Ollama needs no key (a local server); ``api_key`` is sent as a Bearer token when set (Ollama
cloud). Missing ``prompt_eval_count`` / ``eval_count`` (Go ``omitempty``) count as 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway import errors
from gateway.providers.base import Timeouts
from gateway.providers.http import default_classify, error_message, malformed, post, read_json
from gateway.providers.sse import iter_ndjson_lines
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Response
from gateway.settings import ProviderSettings
from gateway.types import (
    CAPABILITIES,
    ChatRequest,
    ChatResult,
    FinishReason,
    Options,
    StreamChunk,
    Usage,
    is_token_count,
)

PROVIDER = "ollama"
DEFAULT_HOST = "http://localhost:11434"
DEFAULT_PORT = 11434

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
#: 429 messages that mean a spent plan (Ollama cloud usage limits), not a short rate limit
_QUOTA_WORDS = ("usage limit", "quota")


def base_url(host: str | None) -> str:
    """``OLLAMA_HOST`` as a URL: ``host:port`` / ``host`` get ``http://`` (and port 11434)."""
    if not host:
        return DEFAULT_HOST
    host = host.strip().rstrip("/")
    if "://" in host:
        return host
    url = f"http://{host}"
    if urlsplit(url).port is None:
        url = f"{url}:{DEFAULT_PORT}"
    return url


# --- wire mapping (pure) ---------------------------------------------------------------------


def build_body(req: ChatRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": req.model,
        "messages": [{"role": _ROLES.get(m.role, "user"), "content": m.content} for m in req.messages],
        "stream": stream,
    }
    options: dict[str, Any] = {}
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.top_p is not None:
        options["top_p"] = req.top_p
    if req.stop:
        options["stop"] = list(req.stop)
    if req.options is not None:
        _add_options(body, options, req.options)
    if options:
        body["options"] = options
    return body


def _add_options(body: dict[str, Any], options: dict[str, Any], asked: Options) -> None:
    """Sampling options go in ``options`` (Ollama's names are OpenAI's); a JSON mode is the
    top-level ``format``: ``"json"``, or the schema itself."""
    for name in ("seed", "presence_penalty", "frequency_penalty"):
        value = getattr(asked, name)
        if value is not None:
            options[name] = value
    if asked.response_format is not None:
        body["format"] = asked.json_schema() or "json"


def map_finish_reason(done_reason: str | None, *, has_tool_calls: bool = False) -> FinishReason:
    if done_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def _count(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if not is_token_count(value):
        raise malformed(PROVIDER, f"{key} is not a token count: {value!r}")
    return value


def map_usage(obj: Mapping[str, Any]) -> Usage:
    return Usage(prompt_tokens=_count(obj, "prompt_eval_count"), completion_tokens=_count(obj, "eval_count"))


@dataclass(slots=True)
class Piece:
    """One ``/api/chat`` object: a whole answer or one NDJSON line."""

    text: str
    done: bool
    has_tool_calls: bool
    done_reason: str | None
    usage: Usage | None
    model: str | None


def parse_object(obj: Any) -> Piece:
    """Parse one chat object; an ``{"error": "..."}`` object raises its ProviderError."""
    if not isinstance(obj, dict):
        raise malformed(PROVIDER, "object expected")
    if "error" in obj:
        raise errors.UpstreamServerError(
            f"{PROVIDER}: {error_message(obj, 'stream error')}", provider=PROVIDER, http_status=200
        )
    message = obj.get("message")
    if not isinstance(message, dict) or "done" not in obj:
        raise malformed(PROVIDER, "chat object without message/done")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise malformed(PROVIDER, "message.content is not a string")
    done = obj.get("done") is True
    model = obj.get("model")
    return Piece(
        text=content,
        done=done,
        has_tool_calls=bool(message.get("tool_calls")),
        done_reason=obj.get("done_reason") if isinstance(obj.get("done_reason"), str) else None,
        usage=map_usage(obj) if done else None,
        model=model if isinstance(model, str) and model else None,
    )


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    """Ollama errors are ``{"error": "<string>"}``: the status code decides, 503 = queue full."""
    message = error_message(body, raw or f"HTTP {status}")
    if status == 429 and any(word in message.lower() for word in _QUOTA_WORDS):
        return errors.QuotaExhausted(f"{PROVIDER}: {message}", provider=PROVIDER, http_status=status, retry_after=None)
    return default_classify(PROVIDER, status, headers, message)


# --- adapter ---------------------------------------------------------------------------------


class OllamaProvider:
    name = PROVIDER
    options = frozenset(CAPABILITIES) - {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }  # function calling: not mapped yet

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        self._session = session
        self._timeouts = timeouts
        self._url = base_url(settings.base_url) + "/api/chat"
        self._headers = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    async def complete(self, request: ChatRequest) -> ChatResult:
        async with post(
            self._session,
            self.name,
            self._url,
            headers=self._headers,
            body=build_body(request, stream=False),
            timeout=self._timeouts.non_streaming(),
            classify=classify,
        ) as resp:
            obj = await read_json(resp, self.name)
        piece = parse_object(obj)
        return ChatResult(
            text=piece.text,
            finish_reason=map_finish_reason(piece.done_reason, has_tool_calls=piece.has_tool_calls),
            usage=piece.usage or Usage(),
            model=piece.model or request.model,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        started = False
        try:
            async with post(
                self._session,
                self.name,
                self._url,
                headers=self._headers,
                body=build_body(request, stream=True),
                timeout=self._timeouts.streaming(),
                classify=classify,
            ) as resp:
                async for chunk in self._chunks(resp, request.model):
                    started = True
                    yield chunk
        except (errors.UpstreamTimeout, errors.UpstreamConnectionError) as exc:
            if not started:
                raise
            raise errors.StreamCut(f"{self.name}: stream broke: {exc.message}", provider=self.name) from exc

    async def _chunks(self, resp: Response, requested: str) -> AsyncIterator[StreamChunk]:
        model: str | None = None
        has_tool_calls = False
        async for line in iter_ndjson_lines(resp.content):
            try:
                obj = orjson.loads(line)
            except ValueError as exc:
                raise malformed(self.name, f"stream line is not JSON: {line[:200]!r}") from exc
            piece = parse_object(obj)
            model = piece.model or model
            has_tool_calls = has_tool_calls or piece.has_tool_calls
            if piece.text:
                yield StreamChunk(text=piece.text, model=model or requested)
            if piece.done:
                yield StreamChunk(
                    finish_reason=map_finish_reason(piece.done_reason, has_tool_calls=has_tool_calls),
                    usage=piece.usage or Usage(),
                    model=model or requested,
                )
                return
        raise errors.StreamCut(f"{self.name}: stream ended without done:true", provider=self.name)


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> OllamaProvider | None:
    if settings.enabled is False:
        return None
    return OllamaProvider(settings, session, timeouts)
