"""A Gemini (Generative Language API) simulator: generateContent and streamGenerateContent.

Knobs: ``thoughts_tokens`` (a ``"thought": true`` part plus ``thoughtsTokenCount``),
``cached_tokens`` (``cachedContentTokenCount``), ``tool_use_prompt_tokens``,
``finish_reason`` (e.g. ``MAX_TOKENS``, ``SAFETY``). Errors are google.rpc.Status bodies.

Function calling: offered ``functionDeclarations`` (mode not ``NONE``) and a conversation not
ending with ``functionResponse`` parts, the simulated model calls a function (the first allowed
one, else the first declared) with sample arguments, as one whole ``functionCall`` part.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.simulators.base import Fault, Simulator, sample_arguments

_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TYPE = "type.googleapis.com/google.rpc."
_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
OVERLOADED = "The model is overloaded. Please try again later."
THOUGHT_TEXT = "Let me think this through step by step before answering."


def rpc_error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": _RPC_STATUS.get(code, "UNKNOWN"),
    }
    if details is not None:
        err["details"] = details
    return {"error": err}


def _seconds(fault: Fault) -> str | None:
    if fault.retry_after is not None:
        value = float(fault.retry_after)
    elif fault.retry_after_ms is not None:
        value = fault.retry_after_ms / 1000.0
    else:
        return None
    return f"{int(value)}s" if value.is_integer() else f"{value}s"


def _quota_error(fault: Fault, model: str, quota_id: str, limit: str) -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {
            "@type": _TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": _METRIC,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": limit,
                }
            ],
        },
        {
            "@type": _TYPE + "Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    delay = _seconds(fault)
    if delay is not None:
        details.append({"@type": _TYPE + "RetryInfo", "retryDelay": delay})
    return rpc_error(
        429,
        "You exceeded your current quota, please check your plan and billing details. "
        f"* Quota exceeded for metric: {_METRIC}, "
        f"limit: {limit}, model: {model}",
        details,
    )


#: the image types Gemini takes inline (a GIF is its 400)
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})


def api_key_invalid() -> dict[str, Any]:
    return rpc_error(
        400,
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": _TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )


@dataclass
class GeminiSimulator(Simulator):
    name: str = "google"
    api_key: str | None = None
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    #: the candidate's finishReason (``STOP``, ``MAX_TOKENS``, ``SAFETY``, ...)
    finish_reason: str = "STOP"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1beta/models/{target}", self._handle),
            web.post("/v1/models/{target}", self._handle),
        ]

    # --- request handling ---------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent", "batchEmbedContents") or not model:
            return web.json_response(rpc_error(404, f"Method not found: {method}"), status=404)
        denied = self._check_key(request)
        if denied is not None:
            return denied
        if method == "batchEmbedContents":
            return await self._embed(request, model, body)
        invalid = self._validate(body) or _check_signatures(model, body) or _check_thinking(model, body)
        if invalid is not None:
            return web.json_response(rpc_error(400, invalid), status=400)
        streaming = method == "streamGenerateContent"
        fault = await self.take_fault()
        if fault is not None:
            rendered = await self._fault(fault, request, model, body, streaming)
            if rendered is not None:
                return rendered
        if streaming:
            return await self._stream(request, model, body, fault)
        return web.json_response(
            self._response(model, body, self._answer(body)[0], final=True, with_thought=True, call=function_call(body))
        )

    async def _embed(self, request: web.Request, model: str, body: Any) -> web.StreamResponse:
        """``{"embeddings": [{"values": [...]}]}``, one per request, each of whose ``model`` must
        be the one of the URL; no usage, as Gemini reports none."""
        requests: Any = body.get("requests") if isinstance(body, dict) else None
        texts = _batch_texts(requests, model)
        if isinstance(texts, str):
            return web.json_response(rpc_error(400, texts), status=400)
        fault = await self.take_fault()
        if fault is not None:
            error = error_for(fault, model, streaming=False)
            if error is not None:
                return web.json_response(error[1], status=error[0])
        dimensions = requests[0].get("outputDimensionality")
        data = json.dumps({"embeddings": [{"values": self.cut_embedding(text, dimensions)} for text in texts]}).encode()
        return await self.faulty_json(request, data, fault) or web.Response(body=data, content_type="application/json")

    def cut_embedding(self, text: str, dimensions: Any) -> list[float]:
        """As Gemini: a unit vector at full size; cut to ``outputDimensionality``, the first part
        of one (its length below 1: the caller normalizes it, Google's guide says)."""
        if not isinstance(dimensions, int) or dimensions <= 0:
            return self.embedding(text)  # type: ignore[return-value]
        full = self.embedding(text, 2 * dimensions)
        assert isinstance(full, list)
        return full[:dimensions]

    def _check_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not given:
            return web.json_response(
                rpc_error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to call "
                    "this API.",
                ),
                status=403,
            )
        if given != self.api_key:
            return web.json_response(api_key_invalid(), status=400)
        return None

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Invalid JSON payload received."
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for content in contents:
            if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
                return "Please use a valid role: user, model."
            if not isinstance(content.get("parts"), list) or not content["parts"]:
                return "* GenerateContentRequest.contents.parts: contents.parts must not be empty."
            if any(isinstance(part, dict) and part.get("text") == "" for part in content["parts"]):
                return (
                    "Unable to submit request because it has an empty text parameter. "
                    "Add a value to the parameter and try again."
                )
            for part in content["parts"]:
                inline = part.get("inlineData") if isinstance(part, dict) else None
                kind = inline.get("mimeType") if isinstance(inline, dict) else None
                if kind is not None and kind.startswith("image/") and kind not in _IMAGE_TYPES:
                    return f"Unsupported MIME type: {kind}"
        return _check_function_turns(contents)

    # --- answers ------------------------------------------------------------------------------
    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        texts: list[str] = []
        system = body.get("systemInstruction") or {}
        for content in [system, *body.get("contents", [])]:
            texts.extend(str(p.get("text", "")) for p in content.get("parts", []) if isinstance(p, dict))
        return sum(self.count_tokens(t) for t in texts)

    def json_format(self, body: Any) -> tuple[bool, Any]:
        config = body.get("generationConfig") if isinstance(body, dict) else None
        config = config if isinstance(config, dict) else {}
        schema = config.get("responseJsonSchema", config.get("responseSchema"))
        return config.get("responseMimeType") == "application/json", schema

    def _answer(self, body: dict[str, Any]) -> tuple[str, bool]:
        """The answer's text under ``maxOutputTokens`` and ``stopSequences``, and whether the cap cut it."""
        config = body.get("generationConfig")
        config = config if isinstance(config, dict) else {}
        return self.cut_answer(self.reply_text(body), config.get("maxOutputTokens"), config.get("stopSequences"))

    def _usage(self, body: dict[str, Any], *, final: bool) -> dict[str, Any]:
        prompt = self._prompt_tokens(body)
        if not final:
            return {"promptTokenCount": prompt, "totalTokenCount": prompt}
        candidates = self.count_tokens(self._answer(body)[0])
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + self.thoughts_tokens + self.tool_use_prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = min(self.cached_tokens, prompt)
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        if self.tool_use_prompt_tokens:
            usage["toolUsePromptTokenCount"] = self.tool_use_prompt_tokens
        return usage

    def _response(
        self,
        model: str,
        body: dict[str, Any],
        text: str,
        *,
        final: bool,
        with_thought: bool,
        call: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One GenerateContentResponse: the text, or (``call``) a functionCall part instead."""
        parts: list[dict[str, Any]] = []
        if with_thought and self.thoughts_tokens:
            parts.append({"text": THOUGHT_TEXT, "thought": True})
        if call is not None:
            part: dict[str, Any] = {"functionCall": call}
            if _SIGNS.search(model):  # Gemini 3 signs each step's first call
                part["thoughtSignature"] = THOUGHT_SIGNATURE
            parts.append(part)
        elif text:
            parts.append({"text": text})
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if final:
            capped = call is None and self._answer(body)[1]
            candidate["finishReason"] = "MAX_TOKENS" if capped else self.finish_reason
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(body, final=final),
            "modelVersion": self.served_model or model,
            "responseId": "sim-gemini-response",
        }

    async def _stream(
        self, request: web.Request, model: str, body: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        call = function_call(body)
        if call is not None:  # Gemini streams a call whole, in one event
            events = [self._response(model, body, "", final=True, with_thought=True, call=call)]
        else:
            words = self.reply_words(self._answer(body)[0])
            events = [
                self._response(model, body, word, final=i == len(words) - 1, with_thought=i == 0)
                for i, word in enumerate(words)
            ]
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        limit = len(events)
        if fault is not None and fault.kind in ("cut", "stream_error"):
            limit = min(fault.after_chunks, len(events) - 1)
        for event in events[:limit]:
            await resp.write(_sse(event))
        if fault is not None and fault.kind == "cut":
            return await self.cut_connection(resp, request)
        if fault is not None and fault.kind == "stream_error":
            code = fault.status or 503
            await resp.write(_sse(rpc_error(code, OVERLOADED)))
        await resp.write_eof()
        return resp

    # --- faults -------------------------------------------------------------------------------
    async def _fault(
        self, fault: Fault, request: web.Request, model: str, body: dict[str, Any], streaming: bool
    ) -> web.StreamResponse | None:
        error = error_for(fault, model, streaming=streaming)
        if error is not None:
            status, err = error
            return web.json_response(err, status=status)
        if fault.kind == "content_filter":
            blocked = {
                "promptFeedback": {
                    "blockReason": "SAFETY",
                    "safetyRatings": [
                        {
                            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                            "probability": "HIGH",
                            "blocked": True,
                        }
                    ],
                },
                "usageMetadata": self._usage(body, final=False),
                "modelVersion": self.served_model or model,
                "responseId": "sim-gemini-blocked",
            }
            if not streaming:
                return web.json_response(blocked)
            return await _sse_response(request, _sse(blocked))
        if fault.kind == "malformed":
            if not streaming:
                return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            return await _sse_response(request, b'data: {"candidates": [oops\r\n\r\n')
        if fault.kind == "cut" and not streaming:
            answer = self._response(model, body, self.reply, final=True, with_thought=True)
            data = json.dumps(answer).encode()
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            return await self.cut_connection(resp, request)
        return None  # timeout (already waited), cut / stream_error on a stream: handled by _stream


def _declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        found = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        if isinstance(found, list):
            out.extend(d for d in found if isinstance(d, dict))
    return out


def _has_part(content: Any, kind: str) -> bool:
    parts = content.get("parts") if isinstance(content, dict) else None
    return isinstance(parts, list) and any(isinstance(p, dict) and kind in p for p in parts)


def function_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``functionCall`` the simulated model makes, or None: no declarations, mode ``NONE``,
    or the conversation ends with function results (the model then answers in text)."""
    declarations = _declarations(body)
    if not declarations:
        return None
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if config.get("mode") == "NONE":
        return None
    contents = body.get("contents") or [{}]
    if _has_part(contents[-1], "functionResponse"):
        return None
    allowed = config.get("allowedFunctionNames") or []
    chosen = next((d for d in declarations if allowed and d.get("name") == allowed[0]), declarations[0])
    schema = chosen.get("parametersJsonSchema") or chosen.get("parameters")
    return {"name": chosen.get("name"), "args": sample_arguments(schema)}


#: Gemini 3 models: their calls carry a thought signature, and the history sent back must too
_SIGNS = re.compile(r"(?:^|/)gemini-3(?:[.-]|$)")
#: the (opaque, base64) signature the simulated Gemini 3 puts on its calls
THOUGHT_SIGNATURE = "CiQBcsjafAbc0simulatedSignature0xyz="


def _check_signatures(model: str, body: dict[str, Any]) -> str | None:
    """Gemini 3's 400 for a history whose current turn (since the last user message that is not
    function results) has a model step whose first call lacks its ``thoughtSignature``."""
    if not _SIGNS.search(model):
        return None
    contents = body.get("contents") or []
    for content in reversed(contents):
        parts = [p for p in content.get("parts", []) if isinstance(p, dict)]
        if content.get("role") == "user" and not any("functionResponse" in p for p in parts):
            return None  # the turn's start
        calls = [p for p in parts if "functionCall" in p]
        if calls and not calls[0].get("thoughtSignature"):
            name = calls[0]["functionCall"].get("name")
            position = contents.index(content) + 1
            return f"Function call `{name}` in the {position}. content block is missing a `thought_signature`."
    return None


#: a thinking model's generation and tier: ``gemini-2.5-pro``, ``gemini-3-flash-preview``, ...
_THINKS = re.compile(r"(?:^|/)gemini-(\d+)(?:\.(\d+))?-(flash-lite|flash|pro)(?:-|$)")
#: Gemini 2.5's thinking budgets: (least, most); 0 turns thinking off where the least is 0, and
#: Flash-Lite's least budget but 0 is 512. -1 is dynamic thinking, taken by all
_BUDGETS = {"pro": (128, 32768), "flash": (0, 24576), "flash-lite": (0, 24576)}
#: Gemini 3's levels: the Pro models take low and high only
_LEVELS = {"pro": ("low", "high"), "flash": ("minimal", "low", "medium", "high")}


def _check_thinking(model: str, body: dict[str, Any]) -> str | None:
    """Gemini's 400s for a ``thinkingConfig`` the model does not take: thinking on a model
    before 2.5, a level and a budget both, a level on 2.5, a budget out of the model's range (0 on
    2.5 Pro, which only thinks), a level the model has not (Gemini 3 Pro: low and high)."""
    config = body.get("generationConfig")
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    if thinking is None:
        return None
    found = _THINKS.search(model)
    generation = (int(found.group(1)), int(found.group(2) or 0)) if found else (0, 0)
    if found is None or generation < (2, 5):
        return "Unable to submit request because thinking is not supported by this model."
    tier = found.group(3)
    level, budget = thinking.get("thinkingLevel"), thinking.get("thinkingBudget")
    if level is not None and budget is not None:
        return "You can only set only one of thinking budget and thinking level."
    if level is not None:
        if generation < (3, 0):
            return "Thinking level is not supported for this model."
        if level not in _LEVELS["pro" if tier == "pro" else "flash"]:
            return f"Thinking level {str(level).upper()} is not supported for this model."
    if budget is not None and budget != -1 and generation < (3, 0):
        least, most = _BUDGETS[tier]
        if budget == 0 and least > 0:
            return "Budget 0 is invalid. This model only works in thinking mode."
        if not isinstance(budget, int) or not least <= budget <= most or (tier == "flash-lite" and 0 < budget < 512):
            return f"The thinking budget {budget} is invalid. Please choose a value between {least} and {most}."
    return None


def _check_function_turns(contents: list[dict[str, Any]]) -> str | None:
    """Gemini's 400s for a conversation whose calls and results do not pair up: calls only in
    model turns, results only in the user turn right after a turn of calls, as many as them."""
    for i, content in enumerate(contents):
        parts = content["parts"]
        calls = sum(1 for p in parts if isinstance(p, dict) and "functionCall" in p)
        results = sum(1 for p in parts if isinstance(p, dict) and "functionResponse" in p)
        if calls and content["role"] != "model":
            return "Please ensure that function call turns are model turns."
        if not results:
            continue
        previous = contents[i - 1]["parts"] if i else []
        made = sum(1 for p in previous if isinstance(p, dict) and "functionCall" in p)
        if content["role"] != "user" or not made:
            return "Please ensure that function response turn comes immediately after a function call turn."
        if results != made:
            return (
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn."
            )
    return None


def _batch_texts(requests: Any, model: str) -> list[str] | str:
    """The texts of a ``batchEmbedContents`` request's ``requests``, or Gemini's 400 for them."""
    if not isinstance(requests, list) or not requests:
        return "* BatchEmbedContentsRequest.requests: contents is not specified"
    if len(requests) > 100:
        return "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
    texts = []
    for i, one in enumerate(requests):
        one = one if isinstance(one, dict) else {}
        if one.get("model") != f"models/{model}":
            return f"* BatchEmbedContentsRequest.requests[{i}].model: model must match the batch model"
        content = one.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) and p.get("text") for p in parts):
            return f"* requests[{i}].content: contents is not specified"
        texts.append(" ".join(p["text"] for p in parts))
    return texts


def error_for(fault: Fault, model: str, *, streaming: bool) -> tuple[int, dict[str, Any]] | None:
    """The status and google.rpc.Status body of an error fault (None: not an error fault)."""
    kind = fault.kind
    if kind == "server_error" or (kind == "stream_error" and not streaming):
        status = fault.status or 500
        return status, rpc_error(status, "An internal error has occurred.")
    static: dict[str, tuple[int, dict[str, Any]]] = {
        "overloaded": (503, rpc_error(503, OVERLOADED)),
        "auth": (400, api_key_invalid()),
        "bad_request": (
            400,
            rpc_error(400, 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'),
        ),
        "not_found": (
            404,
            rpc_error(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for generateContent. Call ListModels to see the list of available models "
                "and their supported methods.",
            ),
        ),
    }
    if kind == "rate_limit":
        quota_id = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        return 429, _quota_error(fault, model, quota_id, "10")
    if kind == "quota":
        return 429, _quota_error(fault, model, "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250")
    return static.get(kind)


async def _sse_response(request: web.Request, data: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(data)
    await resp.write_eof()
    return resp


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"
