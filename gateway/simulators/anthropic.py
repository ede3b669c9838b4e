"""Anthropic Messages API simulator: ``POST /v1/messages``, JSON or named-event SSE.

Beyond the base class: requires ``anthropic-version`` (400 without it) and, when ``api_key`` is
set, a matching ``x-api-key`` (401). Token accounting follows Anthropic: the prompt words are
split into ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` (the knobs; the writes
also by lifetime in ``cache_creation``) and the uncached rest in ``input_tokens``, so a correct
adapter reports prompt_tokens = all words.
``thinking`` adds a thinking block whose words count as output, like extended thinking.
The request's ``max_tokens`` (in words) and ``stop_sequences`` are honoured.

Tools: offered (``tool_choice`` not ``none``) and the last user turn holding no
``tool_result``, the answer is one ``tool_use`` block (the forced tool, else the first) with
sample arguments from its ``input_schema``; its arguments text counts as the output. Tool
blocks in the history are checked as Anthropic does: each ``tool_use`` answered by a
``tool_result`` in the next turn, each ``tool_result`` answering one of the turn before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.simulators.base import Fault, Simulator, sample_arguments

_QUOTA_BODIES: dict[int, tuple[str, str]] = {
    400: (
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    402: ("billing_error", "There is an issue with your billing or payment information."),
    429: (
        "rate_limit_error",
        "You have reached your specified API usage limits. You will regain access on 2026-10-01 at 00:00 UTC.",
    ),
}
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
#: the models that refuse ``temperature`` and ``top_p`` together (Opus 4.1, the 4.5 and 4.6 ones)
_ONE_SAMPLING_KNOB = (
    "claude-opus-4-1", "claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5",
    "claude-opus-4-6", "claude-sonnet-4-6",
)  # fmt: skip
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _error(status: int, etype: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": "req_sim_error",
    }
    return web.json_response(body, status=status, headers=headers)


def _texts(content: Any) -> list[str]:
    """The texts of a turn's content: text blocks, and the results in tool_result blocks."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out: list[str] = []
        for b in content:
            if isinstance(b, dict) and isinstance(b.get("text"), str):
                out.append(b["text"])
            elif isinstance(b, dict) and b.get("type") == "tool_result":
                out += _texts(b.get("content"))
        return out
    return []


#: the longest base64 image Anthropic takes
IMAGE_MAX_BASE64 = 5 * 1024 * 1024


def _blocks(msg: Any, kind: str) -> list[dict[str, Any]]:
    content = msg.get("content") if isinstance(msg, dict) else None
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _block_problem(messages: list[Any]) -> str | None:
    """Anthropic's 400s for a text block of whitespace alone and an image over 5 MB of base64."""
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict):
                continue
            text = block.get("text")
            if block.get("type") == "text" and isinstance(text, str) and not text.strip():
                return f"messages.{i}.content.{j}.text: text content blocks must contain non-whitespace text"
            source = block.get("source") if block.get("type") == "image" else None
            data = source.get("data") if isinstance(source, dict) else None
            if isinstance(data, str) and len(data) > IMAGE_MAX_BASE64:
                return (
                    f"messages.{i}.content.{j}.image.source.base64: image exceeds 5 MB maximum: "
                    f"{len(data)} bytes > {IMAGE_MAX_BASE64} bytes"
                )
    return None


def _tool_problem(messages: list[Any]) -> str | None:
    """Anthropic's pairing rules for tool blocks (its 400 messages, nearly word for word)."""
    for i, msg in enumerate(messages):
        results = {b.get("tool_use_id") for b in _blocks(msg, "tool_result")}
        asked = {b.get("id") for b in _blocks(messages[i - 1], "tool_use")} if i else set()
        unexpected = sorted(str(r) for r in results - asked)
        if unexpected:
            return (
                f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message."
            )
        unanswered = sorted(str(a) for a in asked - results)
        if unanswered:
            return (
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(unanswered)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
    last = len(messages) - 1
    unanswered = sorted(str(b.get("id")) for b in _blocks(messages[last], "tool_use")) if messages else []
    if unanswered:
        return (
            f"messages.{last}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(unanswered)}. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message."
        )
    return None


def _sse(event: str, **fields: Any) -> bytes:
    """One named SSE event whose JSON ``type`` is the event name, as Anthropic sends them."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **fields})}\n\n".encode()


@dataclass
class AnthropicSimulator(Simulator):
    name: str = "anthropic"
    api_key: str | None = None
    #: prompt tokens reported as cache reads / cache writes (None: sent as null)
    cache_read_input_tokens: int | None = 0
    cache_creation_input_tokens: int | None = 0
    #: of the cache writes, those to a 1-hour cache: the ``cache_creation`` split is sent
    #: (``ephemeral_5m_input_tokens`` the rest) whenever cache writes are not null
    cache_creation_1h_input_tokens: int = 0
    #: force this stop_reason (e.g. "max_tokens", "refusal", "tool_use") whatever the reply
    stop_reason: str | None = None
    #: text of a thinking block sent before the answer (its words count as output tokens)
    thinking: str | None = None
    #: also send input/cache counts in message_delta.usage (newer API behaviour)
    delta_usage_has_input: bool = False
    #: a ``ping`` event after every this many text deltas (and one after message_start)
    ping_every: int = 2
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: the prompt prefixes cached by ``cache_control`` marks (kept for the simulator's life)
    _cached: set[str] = field(default_factory=set)
    _cache_usage: dict[int, tuple[Any, tuple[int, int, int] | None]] = field(default_factory=dict)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages)]

    # --- request handling -----------------------------------------------------------------------
    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        problem = self._invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        stream = bool(body.get("stream"))
        fault = await self.take_fault()
        if fault is not None:
            rendered = await self._fault(fault, request, body, stream)
            if rendered is not None:
                return rendered
        tool_use = self._tool_use(body)
        if tool_use is not None:
            if stream:
                return await self._stream_tool_use(request, body, tool_use)
            return web.json_response(self._tool_message(body, tool_use), headers={"request-id": self._request_id()})
        answer = self._answer(body)
        if stream:
            return await self._stream(request, body, answer)
        return web.json_response(self._message(body, *answer), headers={"request-id": self._request_id()})

    def _request_id(self) -> str:
        return f"req_sim_{next(self._ids)}"

    @staticmethod
    def _invalid(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body is not valid JSON"
        for key in ("model", "messages", "max_tokens"):
            if key not in body:
                return f"{key}: Field required"
        if not isinstance(body["messages"], list):
            return "messages: Input should be a valid list"
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 0:
            return "max_tokens: Input should be a valid non-negative integer"
        for i, msg in enumerate(body["messages"]):
            role = msg.get("role") if isinstance(msg, dict) else None
            if role not in ("user", "assistant"):
                return (
                    f'messages.{i}.role: Unexpected role "{role}". The Messages API accepts a '
                    'top-level `system` parameter, not "system" as an input message role.'
                )
        last = body["messages"][-1] if body["messages"] else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            content = last.get("content")
            text = content if isinstance(content, str) else (content[-1].get("text") if content else None)
            if isinstance(text, str) and text != text.rstrip():
                return "messages: final assistant content cannot end with trailing whitespace"
        if "temperature" in body and "top_p" in body and str(body["model"]).startswith(_ONE_SAMPLING_KNOB):
            return "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
        tools = body.get("tools")
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)
        ):
            return "tools: Input should be a valid list of tools with a name"
        for k, tool in enumerate(tools or ()):
            schema = tool.get("input_schema")
            kind = schema.get("type") if isinstance(schema, dict) else None
            if kind != "object":
                what = "Field required" if kind is None else "Input should be 'object'"
                return f"tools.{k}.custom.input_schema.type: {what}"
        if not tools and any(_blocks(m, "tool_use") or _blocks(m, "tool_result") for m in body["messages"]):
            return "Requests which include `tool_use` or `tool_result` blocks must define tools."
        return _block_problem(body["messages"]) or _tool_problem(body["messages"])

    # --- tool use -------------------------------------------------------------------------------
    def _tool_use(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The ``tool_use`` block the simulated model answers with, or None for a text answer."""
        tools = body.get("tools")
        choice = body.get("tool_choice")
        choice = choice if isinstance(choice, dict) else {}
        if not tools or choice.get("type") == "none":
            return None
        users = [m for m in body["messages"] if m.get("role") == "user"]
        if users and _blocks(users[-1], "tool_result"):
            return None
        forced = choice.get("name") if choice.get("type") == "tool" else None
        tool = next((t for t in tools if t["name"] == forced), tools[0])
        return {
            "type": "tool_use",
            "id": f"toolu_sim{next(self._ids)}",
            "name": tool["name"],
            "input": sample_arguments(tool.get("input_schema")),
        }

    def _tool_message(self, body: dict[str, Any], tool_use: dict[str, Any]) -> dict[str, Any]:
        message = self._message(body, "", self.stop_reason or "tool_use", None, streaming=True)
        message["content"] = [tool_use]
        message["usage"] = self._usage(body, self.count_tokens(json.dumps(tool_use["input"])))
        return message

    async def _stream_tool_use(
        self, request: web.Request, body: dict[str, Any], tool_use: dict[str, Any]
    ) -> web.StreamResponse:
        """The call as Anthropic streams it: the block with an empty input, then the input's
        JSON text in two ``input_json_delta`` pieces."""
        resp = web.StreamResponse(headers=_SSE_HEADERS | {"request-id": self._request_id()})
        await resp.prepare(request)
        await resp.write(_sse("message_start", message=self._message(body, "", None, None, streaming=True)))
        await resp.write(_sse("ping"))
        await resp.write(_sse("content_block_start", index=0, content_block=tool_use | {"input": {}}))
        arguments = json.dumps(tool_use["input"])
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            await resp.write(_sse("content_block_delta", index=0, delta=delta))
        await resp.write(_sse("content_block_stop", index=0))
        usage: dict[str, Any] = {"output_tokens": self.count_tokens(arguments)}
        if self.delta_usage_has_input:
            usage = self._usage(body, usage["output_tokens"])
            usage.pop("service_tier")
        end = {"stop_reason": self.stop_reason or "tool_use", "stop_sequence": None}
        await resp.write(_sse("message_delta", delta=end, usage=usage))
        await resp.write(_sse("message_stop"))
        await resp.write_eof()
        return resp

    def _answer(self, body: dict[str, Any]) -> tuple[str, str, str | None]:
        text, stop_reason, stop_sequence = self.reply, "end_turn", None
        hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
        if hits:
            idx, stop_sequence = min(hits)
            text, stop_reason = text[:idx], "stop_sequence"
        words = text.split(" ") if text else []
        if len(words) > body["max_tokens"]:
            text, stop_reason, stop_sequence = (
                " ".join(words[: body["max_tokens"]]),
                "max_tokens",
                None,
            )
        return text, self.stop_reason or stop_reason, stop_sequence

    def _usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        texts = _texts(body.get("system")) + [t for m in body["messages"] for t in _texts(m.get("content"))]
        prompt = sum(self.count_tokens(t) for t in texts)
        written, read = self.cache_creation_input_tokens, self.cache_read_input_tokens
        hour = self.cache_creation_1h_input_tokens
        marked = self._prompt_cache(body)
        if marked is not None and written == read == 0:  # no knob set: what the marks cache
            read, written, hour = marked
        cached = (read or 0) + (written or 0)
        usage: dict[str, Any] = {
            "input_tokens": max(prompt - cached, 0),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if written is not None:
            usage["cache_creation"] = {"ephemeral_5m_input_tokens": written - hour, "ephemeral_1h_input_tokens": hour}
        return usage

    def _prompt_cache(self, body: dict[str, Any]) -> tuple[int, int, int] | None:
        """(read, written, written for an hour) by the request's ``cache_control`` marks (None
        without any), as
        Anthropic caches: the longest marked prefix cached before is read, the rest up to the
        last mark is written (at each mark's lifetime) and cached. Once per request (a stream
        reports its usage twice)."""
        done = self._cache_usage.get(id(body))
        if done is not None and done[0] is body:
            return done[1]
        blocks: list[tuple[str, str | None, bool]] = []  # (text, ttl, marked)
        system = body.get("system")
        for turn in [{"content": system}] + body["messages"] if system is not None else body["messages"]:
            content: Any = turn["content"]
            for block in [{"text": content}] if isinstance(content, str) else content:
                mark: Any = block.get("cache_control") if isinstance(block, dict) else None
                text = " ".join(_texts([block])) if isinstance(block, dict) else ""
                blocks.append((text, mark.get("ttl") if isinstance(mark, dict) else None, mark is not None))
        if not any(marked for _, _, marked in blocks):
            return None
        read = written = hour = 0
        prefix: list[str] = []
        counted = 0
        for text, ttl, marked in blocks:
            prefix.append(text)
            if not marked:
                continue
            key = "\x00".join(prefix)
            tokens = sum(self.count_tokens(t) for t in prefix)
            if key in self._cached:
                read, written, hour, counted = tokens, 0, 0, tokens
            else:
                written += tokens - counted
                hour += tokens - counted if ttl == "1h" else 0
                counted = tokens
                self._cached.add(key)
        result: tuple[int, int, int] | None = (read, written, hour)
        if len(self._cache_usage) > 64:
            self._cache_usage.clear()
        self._cache_usage[id(body)] = (body, result)
        return result

    def _output_tokens(self, text: str) -> int:
        return self.count_tokens(text) + self.count_tokens(self.thinking or "")

    def _message(
        self,
        body: dict[str, Any],
        text: str,
        stop_reason: str | None,
        stop_sequence: str | None,
        *,
        streaming: bool = False,
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.thinking is not None and not streaming:
            content.append({"type": "thinking", "thinking": self.thinking, "signature": "c2ln"})
        if not streaming:
            content.append({"type": "text", "text": text})
        return {
            "id": f"msg_sim{len(self.requests):04d}",
            "type": "message",
            "role": "assistant",
            "model": self.served_model or body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self._usage(body, 1 if streaming else self._output_tokens(text)),
        }

    # --- streaming ------------------------------------------------------------------------------
    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        answer: tuple[str, str, str | None],
        fault: Fault | None = None,
    ) -> web.StreamResponse:
        """The named-event stream; a ``cut`` / ``stream_error`` fault breaks it mid-text."""
        text, stop_reason, stop_sequence = answer
        resp = web.StreamResponse(headers=_SSE_HEADERS | {"request-id": self._request_id()})
        await resp.prepare(request)
        start = self._message(body, text, None, None, streaming=True)
        await resp.write(_sse("message_start", message=start))
        await resp.write(_sse("ping"))
        index = 0
        if self.thinking is not None:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            await resp.write(_sse("content_block_start", index=0, content_block=block))
            for delta in (
                {"type": "thinking_delta", "thinking": self.thinking},
                {"type": "signature_delta", "signature": "c2ln"},
            ):
                await resp.write(_sse("content_block_delta", index=0, delta=delta))
            await resp.write(_sse("content_block_stop", index=0))
            index = 1
        block = {"type": "text", "text": ""}
        await resp.write(_sse("content_block_start", index=index, content_block=block))
        words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []
        for n, word in enumerate(words):
            if fault is not None and n == fault.after_chunks:
                break
            delta = {"type": "text_delta", "text": word}
            await resp.write(_sse("content_block_delta", index=index, delta=delta))
            if self.ping_every and (n + 1) % self.ping_every == 0:
                await resp.write(_sse("ping"))
        if fault is not None:
            return await self._break_stream(resp, request, fault)
        await resp.write(_sse("content_block_stop", index=index))
        usage: dict[str, Any] = {"output_tokens": self._output_tokens(text)}
        if self.delta_usage_has_input:
            usage = self._usage(body, usage["output_tokens"])
            usage.pop("service_tier")
        end = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        await resp.write(_sse("message_delta", delta=end, usage=usage))
        await resp.write(_sse("message_stop"))
        await resp.write_eof()
        return resp

    async def _break_stream(self, resp: web.StreamResponse, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.kind == "cut":
            await asyncio.sleep(0.05)  # let the sent events reach the client before the abort
            return await self.cut_connection(resp, request)
        error = {"type": "overloaded_error", "message": "Overloaded"}
        await resp.write(_sse("error", error=error, request_id="req_sim_error"))
        await resp.write_eof()
        return resp

    # --- faults ---------------------------------------------------------------------------------
    async def _fault(
        self, fault: Fault, request: web.Request, body: dict[str, Any], stream: bool
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "rate_limit":
            headers = {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                **self.retry_headers(fault),
            }
            return _error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
                headers,
            )
        if kind == "quota":
            etype, message = _QUOTA_BODIES[fault.status or 400]
            return _error(fault.status or 400, etype, message)
        if kind == "overloaded" or (kind == "stream_error" and not stream):
            return _error(529, "overloaded_error", "Overloaded", self.retry_headers(fault))
        if kind == "server_error":
            status = fault.status or 500
            return _error(
                status,
                _STATUS_TYPES.get(status, "api_error"),
                "Internal server error",
                self.retry_headers(fault),
            )
        if kind == "auth":
            return _error(401, "authentication_error", "invalid x-api-key")
        if kind == "bad_request":
            return _error(400, "invalid_request_error", "messages: text content blocks must be non-empty")
        if kind == "not_found":
            return _error(404, "not_found_error", f"model: {body['model']}")
        if kind == "timeout":
            return _error(504, "timeout_error", "Request timed out")
        if kind == "content_filter":
            text = " ".join(self.reply.split(" ")[: fault.after_chunks])
            if stream:
                return await self._stream(request, body, (text, "refusal", None))
            return web.json_response(self._message(body, text, "refusal", None))
        if kind == "malformed":  # a proxy's page where JSON (or SSE) belongs
            return web.Response(
                text="<html><body>upstream proxy error</body></html>",
                content_type="text/html" if stream else "application/json",
            )
        if kind in ("cut", "stream_error"):
            answer = self._answer(body)
            if stream:
                return await self._stream(request, body, answer, fault)
            return await self._cut_json(request, body, answer[0])
        return None

    async def _cut_json(self, request: web.Request, body: dict[str, Any], text: str) -> web.StreamResponse:
        raw = json.dumps(self._message(body, text, "end_turn", None)).encode()
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.content_length = len(raw)
        await resp.prepare(request)
        await resp.write(raw[: len(raw) // 2])
        await asyncio.sleep(0.05)
        return await self.cut_connection(resp, request)
