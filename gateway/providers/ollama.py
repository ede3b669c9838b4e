"""Ollama adapter: ``POST /api/chat``, JSON or NDJSON stream, string errors.

Ollama needs no key (a local server); ``api_key`` is sent as a Bearer token when set (Ollama
cloud). Missing ``prompt_eval_count`` / ``eval_count`` (Go ``omitempty``) count as 0.

Function calling: ``tools`` in OpenAI's shape; the model's calls come back whole (one NDJSON
line holds them all) as ``message.tool_calls[{function: {name, arguments: {...}}}]`` with
argument objects and no ids, so ids are made here and the arguments re-encoded as JSON text.
A tool result goes back as ``{"role": "tool", "tool_name": ...}``: the name of the call its
``tool_call_id`` names, looked up in the conversation. Ollama cannot force a call nor keep to
one (no ``tool_choice`` / ``parallel_tool_calls``): such requests are never sent here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

from gateway import errors
from gateway.embedding import EMBEDDINGS, EmbeddingRequest, EmbeddingResult
from gateway.images import Image
from gateway.providers import embedding_wire
from gateway.providers.base import Timeouts
from gateway.providers.http import (
    default_classify,
    error_message,
    let_body_finish,
    malformed,
    parse_json,
    post,
    post_json,
    read_json,
    usage_unknown,
    with_billed_usage,
)
from gateway.providers.sse import iter_ndjson_lines
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Response
from gateway.settings import ProviderSettings
from gateway.tool_calls import NO_PARAMETERS, ToolCall, ToolSpec, declaration, load_json, whole_call_parts
from gateway.types import (
    CAPABILITIES,
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
    Options,
    StreamChunk,
    UnreadableUsage,
    Usage,
    token_count,
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
#: a 400 about the model's abilities ("registry.ollama.ai/library/llama3:latest does not support
#: tools"; also thinking, vision): the built-in groups map to llama3, which has no tools
_CANNOT = "does not support"
#: what a model lacks, in the words of that 400, and the request field it is about
_LACKED = re.compile(r"does not support (tools|vision|thinking|insert)\b")
_LACKED_PARAMS = {"tools": "tools", "vision": "messages", "thinking": "reasoning_effort", "insert": "suffix"}
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
        "messages": _messages(req.messages),
        "stream": stream,
    }
    if req.tools is not None and req.tools.mode != "none":  # "none": the model cannot call
        body["tools"] = _tools(req.tools)
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


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation; calls with argument objects, results named by their call's function."""
    if not any(m.tool_calls or m.tool_call_id is not None or m.parts for m in messages):  # the common case
        return [{"role": _ROLES.get(m.role, "user"), "content": m.content} for m in messages]
    names: dict[str, str] = {}  # call id -> function name, of the calls made so far
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        item: dict[str, Any] = {"role": _ROLES.get(m.role, "user"), "content": m.content}
        if m.parts is not None:  # the message's text, its images as base64 (inline only: see options)
            item["images"] = [part.data for part in m.parts if isinstance(part, Image)]
        if m.tool_calls:
            item["tool_calls"] = [_call(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(m.tool_calls)]
            names.update((call.id, call.name) for call in m.tool_calls)
        if m.tool_call_id is not None:
            name = names.get(m.tool_call_id)
            if name is None:
                raise errors.InvalidRequest(
                    f"{PROVIDER}: tool result for call {m.tool_call_id!r}, which no earlier assistant message made",
                    param=f"messages[{i}].tool_call_id",
                )
            item["tool_name"] = name
        out.append(item)
    return out


def _call(call: ToolCall, where: str) -> dict[str, Any]:
    """A call of the history with its arguments as an object (blank text: no arguments)."""
    try:
        arguments = load_json(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise errors.InvalidRequest(
            f"{PROVIDER}: the arguments of tool call {call.id!r} are not a JSON object",
            param=f"{where}.function.arguments",
        )
    return {"function": {"name": call.name, "arguments": arguments}}


def _tools(spec: ToolSpec) -> list[dict[str, Any]]:
    """OpenAI's shape (``strict`` has no Ollama equivalent); no parameters: an empty object
    schema (Ollama decodes ``parameters`` into a struct that templates render as they are)."""
    return [
        {"type": "function", "function": declaration(tool, schema_key="parameters", empty=NO_PARAMETERS)}
        for tool in spec.tools
    ]


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


def map_usage(obj: Mapping[str, Any]) -> Usage | None:
    """The counts of a final object; None when it has neither or one is not a token count (usage
    unknown: billable at an unknown cost where a price file prices the model, $0 on a free one;
    it was 0 tokens, free). Ollama leaves out ``prompt_eval_count`` when the prompt was cached."""
    if obj.get("prompt_eval_count") is None and obj.get("eval_count") is None:
        return None
    try:
        return Usage(
            prompt_tokens=token_count(obj, "prompt_eval_count"), completion_tokens=token_count(obj, "eval_count")
        )
    except UnreadableUsage as e:
        usage_unknown(PROVIDER, e)
        return None


@dataclass(slots=True)
class Piece:
    """One ``/api/chat`` object: a whole answer or one NDJSON line."""

    text: str
    done: bool
    done_reason: str | None
    usage: Usage | None
    model: str | None
    #: the calls it holds, whole, with ids made here
    tool_calls: tuple[ToolCall, ...] = ()
    #: it holds thinking (``message.thinking``: a thinking model's, never the answer's content)
    thinking: bool = False

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)


def _new_call_id() -> str:
    return f"call_{uuid4().hex[:24]}"


def parse_tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """``message.tool_calls``: argument objects re-encoded as compact JSON text (arguments that
    are already text are kept as they are); an id of the call's own when it has one, else a new one."""
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise malformed(PROVIDER, "message.tool_calls is not a list")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise malformed(PROVIDER, f"tool call without a function name: {str(item)[:200]}")
        arguments = function.get("arguments")
        if arguments is None:
            text = "{}"
        elif isinstance(arguments, dict):
            text = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)  # exact past 64 bits
        elif isinstance(arguments, str):
            text = arguments
        else:
            raise malformed(PROVIDER, f"tool call {function['name']!r} arguments are {type(arguments).__name__}")
        call_id = item.get("id")
        calls.append(
            ToolCall(call_id if isinstance(call_id, str) and call_id else _new_call_id(), function["name"], text)
        )
    return tuple(calls)


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
        done_reason=obj.get("done_reason") if isinstance(obj.get("done_reason"), str) else None,
        usage=map_usage(obj) if done else None,
        model=model if isinstance(model, str) and model else None,
        tool_calls=parse_tool_calls(message.get("tool_calls")),
        thinking=bool(message.get("thinking")),
    )


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    """Ollama errors are ``{"error": "<string>"}``: the status code decides, 503 = queue full."""
    message = error_message(body, raw or f"HTTP {status}")
    if status == 429 and any(word in message.lower() for word in _QUOTA_WORDS):
        return errors.QuotaExhausted(f"{PROVIDER}: {message}", provider=PROVIDER, http_status=status, retry_after=None)
    if status == 400 and _CANNOT in message.lower():  # the model, not the request: another may
        lacked = _LACKED.search(message.lower())
        param = _LACKED_PARAMS[lacked.group(1)] if lacked else None
        return errors.ModelCannotServe(f"{PROVIDER}: {message}", provider=PROVIDER, http_status=status, param=param)
    return default_classify(PROVIDER, status, headers, message)


# --- adapter ---------------------------------------------------------------------------------


class OllamaProvider:
    name = PROVIDER
    #: tools are carried; a required or forced call and parallel_tool_calls false are not:
    #: Ollama has no tool_choice nor parallel_tool_calls (such requests go elsewhere). Images
    #: as base64 ``images`` of the message; an image by URL is not (Ollama fetches nothing)
    options = frozenset(CAPABILITIES) - {
        "tool_choice", "parallel_tool_calls", "image_urls", "reasoning_effort", "reasoning_effort_level"
    } | {EMBEDDINGS}  # fmt: skip

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        self._session = session
        self._timeouts = timeouts
        self._url = base_url(settings.base_url) + "/api/chat"
        self._embed_url = base_url(settings.base_url) + "/api/embed"
        auth = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._headers = {**auth, **settings.headers}

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:  # Embeddings
        obj, _ = await post_json(
            self._session,
            self.name,
            self._embed_url,
            headers=self._headers,
            body=embedding_wire.ollama_body(request),
            timeout=self._timeouts.non_streaming(),
            classify=classify,
        )
        return embedding_wire.read_answer(
            obj, request, self.name, embedding_wire.parse_ollama, embedding_wire.ollama_usage
        )

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
            obj = await read_json(resp, self.name, exact_if=b'"tool_calls"')
        try:
            piece = parse_object(obj)
        except errors.MalformedResponse as exc:
            raise with_billed_usage(exc, lambda: map_usage(obj), lambda: obj["model"]) from None
        return ChatResult(
            text=piece.text,
            finish_reason=map_finish_reason(piece.done_reason, has_tool_calls=piece.has_tool_calls),
            usage=piece.usage,
            model=piece.model or request.model,
            tool_calls=piece.tool_calls,
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
        calls = 0  # the calls so far: the index of the next one
        thought = False  # the model has begun to think (said once: it ends the first-content deadline)
        async for line in iter_ndjson_lines(resp.content):
            try:
                obj = parse_json(line, exact_if=b'"tool_calls"')
            except ValueError as exc:
                raise malformed(self.name, f"stream line is not JSON: {line[:200]!r}") from exc
            piece = parse_object(obj)
            model = piece.model or model
            if piece.tool_calls:
                parts = whole_call_parts(piece.tool_calls, calls)  # whole calls, one line
                calls += len(parts)
                yield StreamChunk(text=piece.text, model=model or requested, tool_calls=parts)
            elif piece.text:
                yield StreamChunk(text=piece.text, model=model or requested)
            elif piece.thinking and not thought:
                thought = True
                yield StreamChunk(model=model or requested, thinking=True)
            if piece.done:
                let_body_finish(resp)  # before the last chunk: the gateway may close us after it
                yield StreamChunk(
                    finish_reason=map_finish_reason(piece.done_reason, has_tool_calls=calls > 0),
                    usage=piece.usage,
                    model=model or requested,
                )
                return
        raise errors.StreamCut(f"{self.name}: stream ended without done:true", provider=self.name)


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> OllamaProvider | None:
    if settings.enabled is False:
        return None
    return OllamaProvider(settings, session, timeouts)
