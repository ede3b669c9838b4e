"""Gemini (Generative Language API) wire mapping: pure functions, no HTTP.

Request body builder (with function declarations, calls and results), response/chunk parser
(one mapper for streaming and non-streaming, text and ``functionCall`` parts), finish-reason
and usage normalisation (providers.md 6.1) and the google.rpc.Status error classifier.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

from gateway import errors
from gateway.events import DAILY_QUOTA
from gateway.images import Image
from gateway.providers.google_thinking import thinking_config
from gateway.providers.http import (
    default_classify,
    error_message,
    parse_duration,
    parse_retry_after,
    usage_unknown,
)
from gateway.tool_calls import ToolCall, ToolSpec, declaration, load_json, nests_deeper
from gateway.types import ChatRequest, FinishReason, Message, Options, UnreadableUsage, Usage, token_count

log = logging.getLogger(__name__)

PROVIDER = "google"

_ROLES = {"user": "user", "assistant": "model", "tool": "user"}

_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_LENGTH = frozenset({"MAX_TOKENS"})
#: the model's tool call failed: the attempt fails (``tool_call_failure``)
_TOOL_FAILURES = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
_PLAIN_STOP = frozenset({"STOP", "OTHER", "LANGUAGE", "FINISH_REASON_UNSPECIFIED", "IMAGE_OTHER", "NO_IMAGE"})

#: ErrorInfo reasons meaning the gateway's key is unusable
_KEY_REASONS = frozenset(
    {
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_SERVICE_BLOCKED",
        "API_KEY_HTTP_REFERRER_BLOCKED",
    }
)

_TYPE_PREFIX = "type.googleapis.com/google.rpc."


# --- request -------------------------------------------------------------------------------


def build_body(req: ChatRequest) -> dict[str, Any]:
    """The generateContent body: user/model turns, systemInstruction, tools, generationConfig.

    Consecutive messages of one role share a turn (Gemini alternates user and model turns):
    the results of a model's calls go back together, as one user turn."""
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> function name, of the calls made so far
    signed = signs_calls(req.model)
    for i, msg in enumerate(req.messages):
        role = _ROLES.get(msg.role)
        if role is None:  # system / developer go to systemInstruction
            continue
        if msg.tool_calls or msg.tool_call_id is not None:
            parts = _tool_parts(msg, i, names, signed)
        elif msg.parts is not None:  # text and images in order (images inline only: see options)
            parts = [_part(part) for part in msg.parts if part]
        else:
            parts = [{"text": msg.content}] if msg.content else []
        if not parts:  # an empty turn (OpenAI takes an empty assistant message): an empty text
            continue  # part is Gemini's 400 ("Unable to submit request because it has an empty text parameter")
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    system = req.system_text()
    if not contents and system is not None:
        # system messages alone (OpenAI answers them): Gemini needs a turn, so they are it
        contents.append({"role": "user", "parts": [{"text": system}]})
        system = None
    body: dict[str, Any] = {"contents": contents}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if req.tools is not None:
        _add_tools(body, req.tools)
    config: dict[str, Any] = {"candidateCount": 1}
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.stop:
        config["stopSequences"] = list(req.stop)
    if req.options is not None:
        _add_options(config, req.options, req.model)
    body["generationConfig"] = config
    return body


def _part(part: str | Image) -> dict[str, Any]:
    if isinstance(part, str):
        return {"text": part}
    return {"inlineData": {"mimeType": part.media_type, "data": part.data}}


#: Gemini 3 models: they refuse a history whose calls lack the ``thoughtSignature`` they were
#: made with (400 "Function call is missing a thought_signature in functionCall parts"), and
#: the OpenAI shape has no place for it: their calls go back with the validator's documented
#: skip value (ai.google.dev/gemini-api/docs/thought-signatures), so every tool loop on them
#: failed at its second turn (a review). The model reasons on without its earlier thoughts.
_SIGNS_CALLS = re.compile(r"(?:^|/)gemini-3(?:[.-]|$)")
SKIP_SIGNATURE = "skip_thought_signature_validator"


def signs_calls(model: str) -> bool:
    """Whether ``model`` wants a thought signature on each call of its history (Gemini 3)."""
    return _SIGNS_CALLS.search(model) is not None


def _tool_parts(msg: Message, index: int, names: dict[str, str], signed: bool = False) -> list[dict[str, Any]]:
    """An assistant message's text and ``functionCall`` parts, or a tool result's
    ``functionResponse`` part, named by the function of the call it answers. ``signed``: each
    call carries the skip signature (see :data:`_SIGNS_CALLS`).

    Call ids are not sent: Gemini pairs results with calls by order and name, and the ids of
    the history may be the gateway's own (Gemini's answers often carry none) or another
    vendor's."""
    if msg.tool_call_id is not None:
        name = names.get(msg.tool_call_id)
        if name is None:
            raise errors.InvalidRequest(
                f"{PROVIDER}: tool result for call {msg.tool_call_id!r}, which no earlier assistant message made",
                param=f"messages[{index}].tool_call_id",
            )
        return [{"functionResponse": {"name": name, "response": _tool_result(msg.content)}}]
    parts: list[dict[str, Any]] = [{"text": msg.content}] if msg.content else []
    for j, call in enumerate(msg.tool_calls or ()):
        args = _call_args(call, f"messages[{index}].tool_calls[{j}].function.arguments")
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": args}}
        if signed:
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
        names[call.id] = call.name
    return parts


def _call_args(call: ToolCall, param: str) -> dict[str, Any]:
    """A call's arguments text as the object Gemini takes (blank text: no arguments)."""
    try:
        args = load_json(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise errors.InvalidRequest(
            f"{PROVIDER}: the arguments of tool call {call.id!r} are not a JSON object", param=param
        )
    return args


def _tool_result(content: str) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: a JSON object result as it is, any
    other text wrapped."""
    try:
        value = load_json(content)  # NaN or 1e400 in it: sent as the text it is, not as null
        if nests_deeper(value):  # deeper than a body can be re-encoded: the text it is (re-test)
            value = None
    except (ValueError, RecursionError):  # nested past what Python parses: text, as any other
        value = None
    return value if isinstance(value, dict) else {"content": content}


#: ``tool_choice`` mode -> ``functionCallingConfig.mode`` (a forced function is ANY, restricted)
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _add_tools(body: dict[str, Any], spec: ToolSpec) -> None:
    """``functionDeclarations`` with ``parametersJsonSchema`` (plain JSON Schema, as OpenAI's;
    ``parameters`` takes Gemini's OpenAPI subset) and ``toolConfig`` for the choice.
    ``strict`` has no Gemini equivalent; ``parallel_tool_calls`` is not carried (not in
    ``GoogleProvider.options``), so it never gets here."""
    declarations = [declaration(tool, schema_key="parametersJsonSchema", typed=True) for tool in spec.tools]
    body["tools"] = [{"functionDeclarations": declarations}]
    if spec.function is not None:
        config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [spec.function]}
    elif spec.mode is not None:
        config = {"mode": _MODES[spec.mode]}
    else:
        return
    body["toolConfig"] = {"functionCallingConfig": config}


_OPTION_KEYS = (("seed", "seed"), ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))


def _add_options(config: dict[str, Any], options: Options, model: str) -> None:
    """``generationConfig``'s names for the options (``GoogleProvider.options``); JSON modes are
    ``responseMimeType`` and, for a schema, ``responseJsonSchema`` (JSON Schema, as OpenAI's);
    ``reasoning_effort`` is a ``thinkingConfig`` (:mod:`google_thinking`)."""
    for name, key in _OPTION_KEYS:
        value = getattr(options, name)
        if value is not None:
            config[key] = value
    if options.response_format is not None:
        config["responseMimeType"] = "application/json"
        schema = options.json_schema()
        if schema is not None:
            config["responseJsonSchema"] = schema
    if options.reasoning_effort is not None:
        config["thinkingConfig"] = thinking_config(model, options.reasoning_effort)


# --- response ------------------------------------------------------------------------------


def map_finish_reason(value: str | None, *, has_function_call: bool = False) -> FinishReason:
    """A Gemini ``finishReason`` (or a prompt ``blockReason``) as an OpenAI finish reason."""
    if value in _CONTENT_FILTER:
        return "content_filter"
    if value in _LENGTH:
        return "length"
    if value in _TOOL_FAILURES:  # raised before (tool_call_failure); "stop" if ever asked
        return "stop"
    if value not in _PLAIN_STOP and value is not None:
        log.warning("gemini sent an unknown finishReason %r; treating it as stop", value)
    return "tool_calls" if has_function_call else "stop"


def map_usage(meta: Any) -> Usage | None:
    """``usageMetadata`` in OpenAI semantics: thoughts are completion, tool-use prompt is prompt;
    None (usage unknown) when a count is not a token count, or the prompt's is missing (a prompt
    is never 0 tokens: ``{}`` was billed $0). Gemini leaves out the other counts when they are 0
    (``candidatesTokenCount`` of an empty answer)."""
    try:
        if not isinstance(meta, Mapping):
            raise UnreadableUsage(f"usageMetadata is {type(meta).__name__}")
        thoughts = token_count(meta, "thoughtsTokenCount")
        return Usage(
            prompt_tokens=token_count(meta, "promptTokenCount", required=True)
            + token_count(meta, "toolUsePromptTokenCount"),
            completion_tokens=token_count(meta, "candidatesTokenCount") + thoughts,
            cached_tokens=token_count(meta, "cachedContentTokenCount"),
            reasoning_tokens=thoughts,
        )
    except UnreadableUsage as e:
        usage_unknown("google", e)
        return None


@dataclass(slots=True)
class Piece:
    """What one GenerateContentResponse (a whole answer or one stream chunk) says."""

    text: str = ""
    #: the raw finishReason or the prompt blockReason (normalised by ``finish()``)
    raw_finish: str | None = None
    blocked: bool = False
    has_function_call: bool = False
    usage: Usage | None = None
    #: a ``usageMetadata`` came that could not be read (``usage`` is None)
    usage_unreadable: bool = False
    model: str | None = None
    #: the ``functionCall`` parts, in order (Gemini sends each one whole, also when streaming)
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: the candidate's ``finishMessage`` (why a tool call failed), cut to 500 characters
    finish_message: str | None = None

    def finish(self, *, has_function_call: bool | None = None) -> FinishReason | None:
        if self.blocked:
            return "content_filter"
        if self.raw_finish is None:
            return None
        calls = self.has_function_call if has_function_call is None else has_function_call
        return map_finish_reason(self.raw_finish, has_function_call=calls)


def tool_call_failure(piece: Piece, usage: Usage | None, model: str | None) -> errors.ToolCallFailed | None:
    """The error of an answer that ended in a failed tool call (``piece``: the one with the
    finish), billed at ``usage`` (a stream's: what its last report said) as ``model``; else None."""
    if piece.raw_finish not in _TOOL_FAILURES:
        return None
    detail = f": {piece.finish_message}" if piece.finish_message else ""
    error = errors.ToolCallFailed(
        f"{PROVIDER}: the model's tool call failed ({piece.raw_finish}){detail}",
        provider=PROVIDER,
        http_status=200,
        upstream_code=piece.raw_finish,
    )
    error.usage = usage
    error.billed_unseen = usage is None
    error.served_model = model
    return error


def parse_response(obj: Any) -> Piece:
    """Parse a GenerateContentResponse; an in-band ``error`` object raises its ProviderError."""
    if not isinstance(obj, dict):
        raise _malformed("response is not a JSON object")
    if "error" in obj:
        err = obj["error"]
        status = err.get("code") if isinstance(err, dict) else None
        raise classify(status if isinstance(status, int) else 500, {}, obj, "")
    piece = Piece()
    model = obj.get("modelVersion")
    piece.model = model if isinstance(model, str) and model else None
    if obj.get("usageMetadata") is not None:
        piece.usage = map_usage(obj["usageMetadata"])
        piece.usage_unreadable = piece.usage is None
    feedback = obj.get("promptFeedback")
    candidates = obj.get("candidates")
    if not candidates:
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            piece.blocked = True
            piece.raw_finish = str(feedback["blockReason"])
        return piece
    if not isinstance(candidates, list) or not isinstance(candidates[0], dict):
        raise _malformed("candidates is not a list of objects")
    cand = candidates[0]
    _read_parts(cand.get("content"), piece)
    finish = cand.get("finishReason")
    if finish is not None:
        piece.raw_finish = str(finish)
        message = cand.get("finishMessage")
        if isinstance(message, str):
            piece.finish_message = message[:500]
    return piece


def _read_parts(content: Any, piece: Piece) -> None:
    """The answer text of a candidate's content (thought parts skipped) and its calls."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is not None and not isinstance(parts, list):
        raise _malformed("content.parts is not a list")
    texts: list[str] = []
    for part in parts or []:
        if not isinstance(part, dict):
            raise _malformed("content part is not an object")
        if "functionCall" in part:
            piece.has_function_call = True
            piece.tool_calls.append(_tool_call(part["functionCall"]))
        text = part.get("text")
        if isinstance(text, str) and not part.get("thought"):
            texts.append(text)
    piece.text = "".join(texts)


def _tool_call(raw: Any) -> ToolCall:
    """A ``functionCall`` part as a call: Gemini's id when it sends one, else a fresh one (the
    client sends it back with the result; Gemini pairs results by order and name)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _malformed("functionCall without a name")
    args = raw.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _malformed(f"functionCall {raw['name']!r} args is not an object")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{uuid4().hex[:24]}"
    return ToolCall(call_id, raw["name"], json.dumps(args, separators=(",", ":"), ensure_ascii=False))


def is_answer(obj: Any) -> bool:
    """A whole (non-streamed) response must have candidates or say the prompt was blocked."""
    if not isinstance(obj, dict):
        return False
    feedback = obj.get("promptFeedback")
    blocked = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
    return isinstance(obj.get("candidates"), list) or blocked or "error" in obj


# --- errors --------------------------------------------------------------------------------


def _details(err: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    details = err.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, Mapping) and d.get("@type") == _TYPE_PREFIX + kind]


def retry_delay(body: Any) -> float | None:
    """Seconds from ``details[RetryInfo].retryDelay`` (e.g. ``"27s"``)."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return None
    for info in _details(err, "RetryInfo"):
        delay = info.get("retryDelay")
        if isinstance(delay, str):
            return parse_duration(delay)
    return None


#: where Gemini's daily quotas reset ("at midnight Pacific time"); PST where the system has no
#: time zone database (an hour late in summer)
try:
    from zoneinfo import ZoneInfo

    _QUOTA_DAY_ZONE: Any = ZoneInfo("America/Los_Angeles")
except (ImportError, KeyError, OSError):  # no time zone database (ZoneInfoNotFoundError is a KeyError)
    _QUOTA_DAY_ZONE = timezone(timedelta(hours=-8))


def until_quota_day_ends(now: datetime | None = None) -> float:
    """Seconds until Gemini's next daily quota reset (midnight Pacific time), at least 1."""
    instant = (now or datetime.now(UTC)).astimezone(UTC)
    day = instant.astimezone(_QUOTA_DAY_ZONE).date()
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=_QUOTA_DAY_ZONE)
    # in UTC: a difference of two times in one zone is of their wall clocks (23 or 25 hours on
    # the days the clocks change are not 24)
    return max(1.0, (midnight.astimezone(UTC) - instant).total_seconds())


def quota_ids(body: Any) -> list[str]:
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return []
    out: list[str] = []
    for failure in _details(err, "QuotaFailure"):
        for violation in failure.get("violations") or []:
            if isinstance(violation, Mapping) and isinstance(violation.get("quotaId"), str):
                out.append(violation["quotaId"])
    return out


def _reasons(err: Mapping[str, Any]) -> set[str]:
    details = err.get("details")
    if not isinstance(details, list):
        return set()
    return {str(d["reason"]) for d in details if isinstance(d, Mapping) and d.get("reason")}


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    """A google.rpc.Status error (HTTP or in-band) as a ProviderError."""
    err = body.get("error") if isinstance(body, Mapping) else None
    err = err if isinstance(err, Mapping) else {}
    message = error_message(body, raw or f"HTTP {status}")
    rpc_status = err.get("status") if isinstance(err.get("status"), str) else None
    reasons = _reasons(err)
    key_reason = next(iter(sorted(reasons & _KEY_REASONS)), None)
    upstream_code = key_reason or rpc_status
    delay = retry_delay(body)
    retry_after = delay if delay is not None else parse_retry_after(headers)
    kwargs: dict[str, Any] = {
        "provider": PROVIDER,
        "http_status": status,
        "retry_after": retry_after,
        "upstream_code": upstream_code,
    }
    text = f"{PROVIDER}: {message}"
    if key_reason is not None:
        return errors.UpstreamAuthError(text, **kwargs)
    if status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
        if any("PerDay" in q for q in quota_ids(body)):
            # a daily quota (``GenerateRequestsPerDayPerProjectPerModel``): a rate limit over a
            # day, as OpenAI's requests-per-day limits are, not credit gone. It resets at
            # midnight Pacific time, and the other models' quotas are their own: no provider
            # failure (taken for one, five calls to a model out of its day's quota opened the
            # circuit for every Gemini model: a review). Its wait, the day's end, is past any
            # retry: the call falls back at once
            kwargs["retry_after"] = max(retry_after or 0.0, until_quota_day_ends())
            kwargs["upstream_code"] = DAILY_QUOTA  # health leaves it out: the model's, not Google's
        return errors.RateLimited(text, **kwargs)
    if rpc_status == "FAILED_PRECONDITION":
        # billing not enabled / region not supported: this account cannot serve, fall back
        return errors.UpstreamAuthError(text, **kwargs)
    if rpc_status == "UNAVAILABLE":
        return errors.Overloaded(text, **kwargs)
    if rpc_status == "DEADLINE_EXCEEDED":
        return errors.UpstreamTimeout(text, **kwargs)
    exc = default_classify(PROVIDER, status, headers, message, upstream_code)
    exc.retry_after = retry_after
    return exc


def _malformed(what: str) -> errors.MalformedResponse:
    return errors.MalformedResponse(f"{PROVIDER}: malformed response: {what}", provider=PROVIDER, http_status=200)
