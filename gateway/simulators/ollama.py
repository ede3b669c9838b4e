"""An Ollama simulator: ``POST /api/chat``, streaming NDJSON by default, string errors.

Knobs: ``omit_prompt_eval_count`` (drop the field, as Ollama does when the prompt came from
the KV cache), ``done_reason`` (``stop`` / ``length``). With ``api_key`` set it behaves like
Ollama cloud and wants ``Authorization: Bearer <key>``.

``thinking``: the text a thinking model (qwen3, deepseek-r1, gpt-oss) writes before its answer,
in ``message.thinking`` with empty content, as Ollama sends it: one line a word in a stream,
spread over ``think_seconds``; its tokens count in ``eval_count`` (generated output).

Offered ``tools`` (and the conversation not ending with a tool result), the model calls the
first one, as Ollama answers: ``message.tool_calls`` with an arguments object and no id, empty
content, ``done_reason`` still ``stop``; a stream sends the call whole in one line, then the
final line.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.simulators.base import Fault, Simulator, sample_arguments

CREATED_AT = "2026-01-01T00:00:00.123456789Z"
REFUSAL = "I'm sorry, but I can't help with that."
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
NDJSON = "application/x-ndjson"
BAD_OPTIONS = "json: cannot unmarshal string into Go struct field Options.num_predict of type int"


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call the simulated model makes: tools offered and the conversation not ending with a
    tool result; the first tool, with sample arguments (an object, as Ollama sends them)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    messages = body.get("messages") or [{}]
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    function = tools[0].get("function")
    if not isinstance(function, dict):
        return None
    return {"function": {"name": function.get("name"), "arguments": sample_arguments(function.get("parameters"))}}


@dataclass
class OllamaSimulator(Simulator):
    name: str = "ollama"
    api_key: str | None = None
    omit_prompt_eval_count: bool = False
    done_reason: str = "stop"
    thinking: str | None = None
    think_seconds: float = 0.0

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/chat", self._chat), web.post("/api/embed", self._embed)]

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        """``{"model", "embeddings": [[...]], "prompt_eval_count"}``."""
        body = await self.record(request)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error("unauthorized", 401)
        if not isinstance(body, dict) or not body.get("model"):
            return _error("model is required", 400)
        raw = body.get("input")
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            return _error("invalid input type", 400)
        model = str(body["model"])
        fault = await self.take_fault()
        if fault is not None and fault.kind not in ("malformed", "cut"):
            rendered = await self._fault(fault, request, model, False)
            if rendered is not None:
                return rendered
        answer = {
            "model": self.served_model or model,
            "embeddings": [self.embedding(item, body.get("dimensions")) for item in items],
            "total_duration": 14_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": sum(self.input_tokens(item) for item in items),
        }
        if self.omit_prompt_eval_count:
            del answer["prompt_eval_count"]
        data = json.dumps(answer).encode()
        return await self.faulty_json(request, data, fault) or web.Response(body=data, content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error("unauthorized", 401)
        if not isinstance(body, dict):
            return _error("invalid character 'x' looking for beginning of value", 400)
        model = body.get("model")
        if not model:
            return _error("model is required", 400)
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            return _error("json: cannot unmarshal string into Go struct field ChatRequest.messages", 400)
        streaming = body.get("stream", True) is not False
        fault = await self.take_fault()
        options = body.get("options")
        options = options if isinstance(options, dict) else {}
        reply, capped = self.cut_answer(self.reply_text(body), options.get("num_predict"), options.get("stop"))
        if fault is not None:
            if fault.kind == "content_filter":  # local models have no filter signal: they refuse
                reply = REFUSAL
            else:
                rendered = await self._fault(fault, request, str(model), streaming)
                if rendered is not None:
                    return rendered
        refused = fault is not None and fault.kind == "content_filter"
        call = None if refused else tool_call(body)
        if call is not None:
            return await self._call(request, str(model), body, call, streaming, fault)
        reason = "length" if capped and not refused else None
        if streaming:
            return await self._stream(request, str(model), body, reply, fault, reason)
        answer = self._final(str(model), body, reply, content=reply, reason=reason)
        if self.thinking is not None:
            answer["message"]["thinking"] = self.thinking
        return web.json_response(answer)

    def json_format(self, body: Any) -> tuple[bool, Any]:
        wanted = body.get("format") if isinstance(body, dict) else None  # "json" or a JSON Schema
        return wanted == "json" or isinstance(wanted, dict), wanted if isinstance(wanted, dict) else None

    # --- answers ------------------------------------------------------------------------------
    def _final(
        self, model: str, body: dict[str, Any], reply: str, *, content: str, reason: str | None = None
    ) -> dict[str, Any]:
        prompt = sum(self.count_tokens(str(m.get("content", ""))) for m in body.get("messages") or [])
        out: dict[str, Any] = {
            "model": self.served_model or model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": reason or self.done_reason,
            "total_duration": 1_200_000_000,
            "load_duration": 50_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 100_000_000,
            "eval_count": self.count_tokens(reply) + self.count_tokens(self.thinking or ""),
            "eval_duration": 1_000_000_000,
        }
        if self.omit_prompt_eval_count:
            del out["prompt_eval_count"]
        return out

    def _piece(self, model: str, text: str, thinking: str | None = None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        if thinking is not None:
            message["thinking"] = thinking
        return {"model": self.served_model or model, "created_at": CREATED_AT, "message": message, "done": False}

    async def _call(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        call: dict[str, Any],
        streaming: bool,
        fault: Fault | None,
    ) -> web.StreamResponse:
        """A tool call: in the answer's message, or a line of its own before the final line."""
        arguments = json.dumps(call["function"]["arguments"])  # what the model "generated"
        final = self._final(model, body, arguments, content="")
        if not streaming:
            final["message"]["tool_calls"] = [call]
            return web.json_response(final)
        piece = self._piece(model, "")
        piece["message"]["tool_calls"] = [call]
        return await self._send_lines(request, [piece, final], fault)

    async def _stream(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        reply: str,
        fault: Fault | None,
        reason: str | None = None,
    ) -> web.StreamResponse:
        words = reply.split(" ")
        thoughts = (self.thinking or "").split(" ") if self.thinking else []
        lines = [self._piece(model, "", thinking=w if i == 0 else " " + w) for i, w in enumerate(thoughts)]
        lines += [self._piece(model, w if i == 0 else " " + w) for i, w in enumerate(words)]
        lines.append(self._final(model, body, reply, content="", reason=reason))
        return await self._send_lines(request, lines, fault)

    async def _send_lines(
        self, request: web.Request, lines: list[dict[str, Any]], fault: Fault | None
    ) -> web.StreamResponse:
        """NDJSON lines, the last one ``done``; a cut or an in-band error after ``after_chunks``;
        the thinking lines spread over ``think_seconds``."""
        resp = web.StreamResponse(headers={"content-type": NDJSON})
        await resp.prepare(request)
        limit = len(lines)
        if fault is not None and fault.kind in ("cut", "stream_error"):
            limit = min(fault.after_chunks, len(lines) - 1)
        thinking = sum(1 for line in lines if "thinking" in line["message"])
        for line in lines[:limit]:
            if "thinking" in line["message"] and self.think_seconds:
                await asyncio.sleep(self.think_seconds / thinking)
            await resp.write(_line(line))
        if fault is not None and fault.kind == "cut":
            return await self.cut_connection(resp, request)
        if fault is not None and fault.kind == "stream_error":
            await resp.write(_line({"error": "an error was encountered while running the model: unexpected EOF"}))
        await resp.write_eof()
        return resp

    # --- faults -------------------------------------------------------------------------------
    async def _fault(
        self, fault: Fault, request: web.Request, model: str, streaming: bool
    ) -> web.StreamResponse | None:
        kind = fault.kind
        if kind == "server_error" or (kind == "stream_error" and not streaming):
            return _error("llama runner process has terminated: exit status 2", fault.status or 500)
        if kind == "rate_limit":  # Ollama cloud; a local server never sends 429
            return _error("too many requests, please slow down", 429, self.retry_headers(fault))
        static = {
            "quota": (429, "you've reached your weekly usage limit, please upgrade to continue"),
            "overloaded": (503, QUEUE_FULL),
            "auth": (401, "unauthorized"),
            "bad_request": (400, BAD_OPTIONS),
            "not_found": (404, f"model '{model}' not found"),
        }
        if kind in static:
            status, message = static[kind]
            return _error(message, status)
        if kind == "malformed":
            if not streaming:
                return web.Response(text="404 page not found", content_type="text/plain")
            resp = web.StreamResponse(headers={"content-type": NDJSON})
            await resp.prepare(request)
            await resp.write(b'{"model": "x", "message": {"content": "Hel\n')
            await resp.write_eof()
            return resp
        if kind == "cut" and not streaming:
            data = json.dumps(self._final(model, {}, self.reply, content=self.reply)).encode()
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            return await self.cut_connection(resp, request)
        return None  # timeout (already waited); cut / stream_error on a stream: handled by _stream
