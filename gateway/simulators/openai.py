"""OpenAI API simulator: ``POST /v1/chat/completions`` and legacy ``POST /v1/completions``.

JSON or SSE (``data: {...}`` chunks ending with ``data: [DONE]``), usage on a final
``choices: []`` chunk when ``stream_options.include_usage`` is set, ``obfuscation`` padding on
chunks. Beyond the base class: a ``Bearer`` key check when ``api_key`` is set (401
``invalid_api_key``), 400 for bodies without ``model`` / ``messages`` / ``prompt``, and the
length cap (``max_completion_tokens`` or ``max_tokens``, in words; legacy default 16) cuts the
reply with ``finish_reason: "length"``. Knobs: ``served_model`` (a dated snapshot such as
``gpt-4o-2024-08-06``), ``cached_tokens`` and ``reasoning_tokens`` (reported in the usage
details; reasoning counts inside ``completion_tokens``), ``crlf`` line ends.

Error bodies and statuses are data (``ERRORS``); ``AzureSimulator`` overrides that table and a
few hooks. A ``content_filter`` fault has no error entry here: OpenAI answers 200 with
``finish_reason: "content_filter"`` and no text.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from gateway.simulators.base import Fault, Simulator, sample_arguments


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One error answer. ``message`` may use {model}, {wait} (a sentence naming the wait, or
    empty) and {api_version}."""

    status: int
    message: str
    code: str | None
    type: str | None = None
    param: str | None = None
    #: more keys of the ``error`` object (Azure: ``status``, ``innererror``)
    extra: Mapping[str, Any] | None = None


OPENAI_ERRORS: dict[str, ErrorSpec] = {
    "rate_limit": ErrorSpec(
        429,
        "Rate limit reached for {model} in organization org-simulator on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1.{wait} Visit https://platform.openai.com/account/rate-limits "
        "to learn more.",
        "rate_limit_exceeded",
        "requests",
    ),
    "quota": ErrorSpec(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "overloaded": ErrorSpec(503, "The server is overloaded or not ready yet.", "server_is_overloaded", "server_error"),
    "server_error": ErrorSpec(
        500,
        "The server had an error while processing your request. Sorry about that!",
        None,
        "server_error",
    ),
    "auth": ErrorSpec(
        401,
        "Incorrect API key provided: sk-sim***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_api_key",
        "invalid_request_error",
    ),
    "bad_request": ErrorSpec(
        400,
        "This model's maximum context length is 128000 tokens. However, your messages resulted "
        "in 130412 tokens. Please reduce the length of the messages.",
        "context_length_exceeded",
        "invalid_request_error",
        "messages",
    ),
    "not_found": ErrorSpec(
        404,
        "The model `{model}` does not exist or you do not have access to it.",
        "model_not_found",
        "invalid_request_error",
    ),
    "timeout": ErrorSpec(408, "Request timed out.", "timeout", "timeout"),
}

#: the reasoning models that take no sampling knob (``sampling_problem``)
_FIXED_SAMPLING = re.compile(r"(?:ft:)?(?:o\d|gpt-5(?:$|-(?!chat)))")
#: gpt-5.1 and later: the sampling knobs only without reasoning (``reasoning_effort`` none)
_SAMPLING_IF_NO_REASONING = re.compile(r"(?:ft:)?gpt-5\.\d")
_UNPARSABLE = ErrorSpec(400, "We could not parse the JSON body of your request.", None, "invalid_request_error")


@dataclass(slots=True)
class Call:
    """One parsed request, as the reply builders need it."""

    kind: str  # "chat" | "text"
    body: dict[str, Any]
    #: what the caller named: the body's model (Azure: the deployment)
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    api_version: str | None = None


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p if isinstance(p, str) else p.get("text", "") for p in content if isinstance(p, str | dict)]
    return []


@dataclass
class OpenAISimulator(Simulator):
    ERRORS: ClassVar[Mapping[str, ErrorSpec]] = OPENAI_ERRORS
    #: chat/completions objects and chunks carry this (OpenAI: the side-channel padding)
    PADDING: ClassVar[bool] = True

    name: str = "openai"
    api_key: str | None = None
    #: reported as prompt_tokens_details.cached_tokens (capped at the prompt tokens)
    cached_tokens: int = 0
    #: reported as completion_tokens_details.reasoning_tokens, added to completion_tokens
    reasoning_tokens: int = 0
    #: end SSE lines with CRLF instead of LF
    crlf: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/completions", self._text),
            web.post("/v1/embeddings", self._embed),
        ]

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "embed")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "chat")

    async def _text(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "text")

    # --- hooks (Azure overrides these) -----------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def requested_model(self, request: web.Request, body: dict[str, Any]) -> str | None:
        model = body.get("model")
        return model if isinstance(model, str) and model else None

    def route_problem(self, request: web.Request, call: Call) -> web.Response | None:
        """A vendor-specific refusal before faults apply (Azure: api-version, deployments)."""
        return None

    def served(self, call: Call) -> str:
        return self.served_model or call.model

    def embedding_model(self, call: Call) -> str:
        """The model an embedding answer names."""
        return self.served(call)

    def reply_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_sim{next(self._ids)}", "openai-processing-ms": "12"}

    def error_headers(self, fault: Fault | None, spec: ErrorSpec) -> dict[str, str]:
        headers = self.retry_headers(fault) if fault is not None else {}
        if spec.status == 429 and spec.code == "rate_limit_exceeded":
            headers |= {
                "x-ratelimit-limit-requests": "3",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": headers.get("retry-after", "1") + "s",
            }
        return headers

    def wait_sentence(self, fault: Fault | None) -> str:
        if fault is None:
            return ""
        if fault.retry_after_ms is not None:
            return f" Please try again in {fault.retry_after_ms}ms."
        if fault.retry_after is not None:
            return f" Please try again in {fault.retry_after:g}s."
        return ""

    def error_object(self, spec: ErrorSpec, message: str) -> dict[str, Any]:
        return {
            "message": message,
            "type": spec.type,
            "param": spec.param,
            "code": spec.code,
            **(spec.extra or {}),
        }

    def decorate_choice(self, choice: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return choice

    def decorate_response(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def stream_preamble(self, call: Call) -> list[dict[str, Any]]:
        """Objects sent before the first chunk (Azure: the prompt-filter chunk)."""
        return []

    def stream_usage(self, call: Call) -> bool:
        return call.include_usage

    # --- request handling -------------------------------------------------------------------------
    async def handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await self.record(request)
        if not self.authorized(request):
            return self.error_response(self.ERRORS["auth"], model="")
        if not isinstance(body, dict):
            return self.error_response(_UNPARSABLE, model="")
        model = self.requested_model(request, body)
        problem = self.body_problem(body, kind, model)
        if problem is not None:
            return problem
        assert model is not None
        call = self.parse_call(request, body, kind, model)
        refused = self.route_problem(request, call)
        if refused is not None:
            return refused
        fault = await self.take_fault()
        spec = self.fault_error(fault, call)
        if spec is not None:
            return self.error_response(spec, model=call.model, fault=fault, api_version=call.api_version)
        if kind == "embed":
            return await self.embed_reply(request, call, fault)
        if call.stream:
            return await self.stream_reply(request, call, fault)
        return await self.json_reply(request, call, fault)

    def body_problem(self, body: dict[str, Any], kind: str, model: str | None) -> web.Response | None:
        missing = None
        if model is None:
            missing = "model"
        elif kind == "chat" and not (isinstance(body.get("messages"), list) and body["messages"]):
            missing = "messages"
        elif kind == "text" and not isinstance(body.get("prompt"), str | list):
            missing = "prompt"
        elif kind == "embed" and not isinstance(body.get("input"), str | list):
            missing = "input"
        if missing is None:
            return self.sampling_problem(body, model or "")
        spec = ErrorSpec(
            400,
            f"Missing required parameter: '{missing}'.",
            "missing_required_parameter",
            "invalid_request_error",
            missing,
        )
        return self.error_response(spec, model=model or "")

    def sampling_problem(self, body: dict[str, Any], model: str) -> web.Response | None:
        """The reasoning models' 400s for a sampling knob (o1, o3, o4, gpt-5 but its chat model):
        temperature and top_p only at 1, no penalties."""
        effort = body.get("reasoning_effort")
        reasoning = _SAMPLING_IF_NO_REASONING.match(model) and effort is not None and effort != "none"
        if not (_FIXED_SAMPLING.match(model) or reasoning):
            return None
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None and value != 1:
                message = (
                    f"Unsupported value: '{name}' does not support {value} with this model. "
                    "Only the default (1) value is supported."
                )
                return self.error_response(
                    ErrorSpec(400, message, "unsupported_value", "invalid_request_error", name), model=model
                )
        for name in ("presence_penalty", "frequency_penalty"):
            if body.get(name) is not None:
                message = f"Unsupported parameter: '{name}' is not supported with this model."
                return self.error_response(
                    ErrorSpec(400, message, "unsupported_parameter", "invalid_request_error", name), model=model
                )
        return None

    def parse_call(self, request: web.Request, body: dict[str, Any], kind: str, model: str) -> Call:
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        if kind == "text" and cap is None:
            cap = 16  # the legacy endpoint's default
        options = body.get("stream_options")
        return Call(
            kind=kind,
            body=body,
            model=model,
            stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            max_tokens=cap if isinstance(cap, int) else None,
            api_version=request.query.get("api-version"),
        )

    def fault_error(self, fault: Fault | None, call: Call) -> ErrorSpec | None:
        """The error answer for a fault, or None when the fault shapes the reply itself."""
        if fault is None:
            return None
        kind = fault.kind
        if kind == "stream_error" and not call.stream:
            kind = "server_error"
        if kind == "content_filter" and fault.status == 200:
            return None
        spec = self.ERRORS.get(kind)
        if spec is not None and fault.status is not None:
            spec = ErrorSpec(fault.status, spec.message, spec.code, spec.type, spec.param, spec.extra)
        return spec

    def error_response(
        self,
        spec: ErrorSpec,
        *,
        model: str,
        fault: Fault | None = None,
        api_version: str | None = None,
    ) -> web.Response:
        message = spec.message.format(model=model, wait=self.wait_sentence(fault), api_version=api_version or "v1")
        headers = self.reply_headers() | self.error_headers(fault, spec)
        return web.json_response({"error": self.error_object(spec, message)}, status=spec.status, headers=headers)

    # --- replies --------------------------------------------------------------------------------
    def plan(self, call: Call, fault: Fault | None) -> tuple[list[str], str]:
        """The reply pieces and the finish reason."""
        if fault is not None and fault.kind == "content_filter":
            return [], "content_filter"
        text, capped = self.cut_answer(self.reply_text(call.body), call.max_tokens, call.body.get("stop"))
        return self.reply_words(text), "length" if capped else "stop"

    def json_format(self, body: Any) -> tuple[bool, Any]:
        spec = body.get("response_format") if isinstance(body, dict) else None
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "json_schema":
            inner = spec.get("json_schema") if isinstance(spec, dict) else None
            return True, inner.get("schema") if isinstance(inner, dict) else None
        return kind == "json_object", None

    def usage(self, call: Call, text: str) -> dict[str, Any]:
        if call.kind == "chat":
            prompt = sum(
                self.count_tokens(t)
                for m in call.body["messages"]
                if isinstance(m, dict)
                for t in _texts(m.get("content"))
            )
        else:
            prompt = sum(self.count_tokens(t) for t in _texts(call.body["prompt"]))
        completion = self.count_tokens(text) + (self.reasoning_tokens if call.kind == "chat" else 0)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if call.kind == "chat":
            usage["prompt_tokens_details"] = {
                "cached_tokens": min(self.cached_tokens, prompt),
                "audio_tokens": 0,
            }
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return usage

    def envelope(self, call: Call, *, chunk: bool) -> dict[str, Any]:
        chat = call.kind == "chat"
        obj_type = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-sim{next(self._ids)}",
            "object": obj_type,
            "created": int(time.time()),
            "model": self.served(call),
        }

    def choice(self, call: Call, text: str | None, finish: str | None, *, chunk: bool) -> dict[str, Any]:
        if call.kind == "text":
            body: dict[str, Any] = {"text": text or "", "index": 0}
        elif chunk:
            body = {"index": 0, "delta": {} if text is None else {"content": text}}
        else:
            body = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
            }
        return self.decorate_choice(body | {"logprobs": None, "finish_reason": finish}, finish)

    def tool_call(self, call: Call) -> dict[str, Any] | None:
        """The call the simulated model makes: tools offered (not ``tool_choice: "none"``) and
        the conversation not ending with a tool result; the forced function, else the first."""
        body = call.body
        tools = body.get("tools")
        if call.kind != "chat" or not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
            return None
        messages = body.get("messages") or [{}]
        if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            return None
        choice = body.get("tool_choice")
        forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        function = next((t["function"] for t in tools if t["function"]["name"] == forced), tools[0]["function"])
        arguments = json.dumps(sample_arguments(function.get("parameters")))
        return {
            "id": f"call_sim{next(self._ids)}",
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }

    async def json_reply(self, request: web.Request, call: Call, fault: Fault | None) -> web.StreamResponse:
        tool_call = self.tool_call(call)
        if tool_call is not None:
            obj = self.envelope(call, chunk=False) | {
                "choices": [self.choice(call, None, "tool_calls", chunk=False)],
                "usage": self.usage(call, tool_call["function"]["arguments"]),
            }
            obj["choices"][0]["message"]["tool_calls"] = [tool_call]
            return web.json_response(self.decorate_response(obj), headers=self.reply_headers())
        words, finish = self.plan(call, fault)
        text = "".join(words)
        obj = self.envelope(call, chunk=False) | {
            "choices": [self.choice(call, text, finish, chunk=False)],
            "usage": self.usage(call, text),
        }
        if call.kind == "chat":
            obj |= {"service_tier": "default", "system_fingerprint": "fp_sim"}
        raw = json.dumps(self.decorate_response(obj))
        headers = self.reply_headers()
        if fault is not None and fault.kind == "malformed":
            return web.Response(text=raw[: len(raw) // 2], content_type="application/json", headers=headers)
        if fault is not None and fault.kind == "cut":
            resp = web.StreamResponse(headers=headers)
            resp.content_type, resp.content_length = "application/json", len(raw)
            await resp.prepare(request)
            await resp.write(raw[: len(raw) // 2].encode())
            return await self.cut_connection(resp, request)
        return web.Response(text=raw, content_type="application/json", headers=headers)

    async def embed_reply(self, request: web.Request, call: Call, fault: Fault | None) -> web.StreamResponse:
        """A ``list`` of ``embedding`` objects (``encoding_format`` ``base64``: float32 bytes)."""
        raw = call.body["input"]
        items = [raw] if isinstance(raw, str) or (raw and not isinstance(raw[0], str | list)) else raw
        as_base64 = call.body.get("encoding_format") == "base64"
        dimensions = call.body.get("dimensions")
        obj = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": self.embedding(item, dimensions, as_base64=as_base64)}
                for i, item in enumerate(items)
            ],
            "model": self.embedding_model(call),
            "usage": {"prompt_tokens": (n := sum(self.input_tokens(i) for i in items)), "total_tokens": n},
        }
        data = json.dumps(obj).encode()
        faulty = await self.faulty_json(request, data, fault)
        if faulty is not None:
            return faulty
        return web.Response(body=data, content_type="application/json", headers=self.reply_headers())

    async def _send(self, resp: web.StreamResponse, data: str) -> None:
        end = "\r\n" if self.crlf else "\n"
        await resp.write(f"data: {data}{end}{end}".encode())

    async def _send_chunk(self, resp: web.StreamResponse, call: Call, choices: list[dict[str, Any]]) -> None:
        obj = self.envelope(call, chunk=True)
        if call.kind == "chat" and self.PADDING:
            obj["obfuscation"] = "x" * (1 + len(choices))
        obj["choices"] = choices
        if self.stream_usage(call):
            obj["usage"] = None
        await self._send(resp, json.dumps(obj))

    async def stream_reply(self, request: web.Request, call: Call, fault: Fault | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers=self.reply_headers() | {"cache-control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        if fault is not None and fault.kind == "malformed":
            await self._send(resp, '{"id": "chatcmpl-sim", "choices": [{"index": 0, "delta": {"con')
            await self._send(resp, "[DONE]")
            return resp
        for obj in self.stream_preamble(call):
            await self._send(resp, json.dumps(obj))
        if call.kind == "chat":
            first = self.choice(call, "", None, chunk=True)
            first["delta"] = {"role": "assistant", "content": "", "refusal": None}
            await self._send_chunk(resp, call, [first])
        tool_call = self.tool_call(call)
        if tool_call is not None:
            return await self._stream_tool_call(resp, call, tool_call)
        words, finish = self.plan(call, fault)
        break_at = min(fault.after_chunks, len(words)) if fault is not None else -1
        for i, word in enumerate([*words, None]):
            if fault is not None and i == break_at and fault.kind in ("cut", "stream_error"):
                return await self._break_stream(request, resp, call, fault)
            if word is not None:
                await self._send_chunk(resp, call, [self.choice(call, word, None, chunk=True)])
        await self._send_chunk(resp, call, [self.choice(call, None, finish, chunk=True)])
        if self.stream_usage(call):
            usage_chunk = self.envelope(call, chunk=True) | {
                "choices": [],
                "usage": self.usage(call, "".join(words)),
            }
            await self._send(resp, json.dumps(usage_chunk))
        await self._send(resp, "[DONE]")
        return resp

    async def _stream_tool_call(
        self, resp: web.StreamResponse, call: Call, tool_call: dict[str, Any]
    ) -> web.StreamResponse:
        """The call in OpenAI's pieces: id and name first, then the arguments in two halves."""
        arguments = tool_call["function"]["arguments"]
        half = len(arguments) // 2
        head = {
            "index": 0,
            "id": tool_call["id"],
            "type": "function",
            "function": {"name": tool_call["function"]["name"], "arguments": ""},
        }
        pieces = [head] + [{"index": 0, "function": {"arguments": a}} for a in (arguments[:half], arguments[half:])]
        for piece in pieces:
            choice = self.choice(call, None, None, chunk=True)
            choice["delta"] = {"tool_calls": [piece]}
            await self._send_chunk(resp, call, [choice])
        await self._send_chunk(resp, call, [self.choice(call, None, "tool_calls", chunk=True)])
        if self.stream_usage(call):
            usage_chunk = self.envelope(call, chunk=True) | {"choices": [], "usage": self.usage(call, arguments)}
            await self._send(resp, json.dumps(usage_chunk))
        await self._send(resp, "[DONE]")
        return resp

    async def _break_stream(
        self, request: web.Request, resp: web.StreamResponse, call: Call, fault: Fault
    ) -> web.StreamResponse:
        if fault.kind == "cut":
            return await self.cut_connection(resp, request)
        spec = self.ERRORS["server_error"]
        await self._send(resp, json.dumps({"error": self.error_object(spec, spec.message)}))
        await resp.write_eof()
        return resp
