"""Validate OpenAI request bodies into normalised requests, with errors that say what is wrong."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from gateway.api.metadata import request_metadata
from gateway.api.tool_validation import (
    CallsAnswered,
    parse_tool_call_id,
    parse_tool_calls,
    parse_tools,
    shallow_enough,
    type_name,
)
from gateway.errors import InvalidRequest
from gateway.events import INDEXED_TEXT
from gateway.images import DETAILS, Image, parse_image_url
from gateway.prompt_cache import WHOLE, check_marks, parse_mark
from gateway.types import OPTION_NAMES, ChatRequest, Message, Options, Role

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_STOP = 4
#: a tenant named in a request: as long as one of the configuration (API keys, budgets), the
#: longest every store holds; it was 128, so an admin could not name a key's longer tenant
MAX_TENANT_LEN = INDEXED_TEXT
#: a model name goes into the usage event, the cost log line and the ``x-llm-model`` header
MAX_MODEL_LEN = 256
#: fields we know but cannot honour: refused clearly rather than silently dropped (a value equal
#: to the field's default, :data:`_DEFAULTS`, is accepted: it asks for nothing). ``store: true``
#: asks OpenAI to keep the completion, a ``service_tier`` other than auto changes its price
UNSUPPORTED_CHAT = frozenset({
    "functions", "function_call", "logprobs", "top_logprobs", "audio", "modalities", "logit_bias",
    "prediction", "web_search_options", "store", "service_tier", "safety_identifier", "prompt_cache_key", "verbosity",
})  # fmt: skip
UNSUPPORTED_COMPLETION = frozenset({"suffix", "echo", "logprobs", "best_of", "logit_bias"})
#: the fields both endpoints read (``provider`` and ``tenantId`` are the gateway's own)
_COMMON = frozenset({
    "model", "provider", "tenantId", "n", "temperature", "top_p", "max_tokens", "stop", "user", "stream",
    "stream_options", "seed", "presence_penalty", "frequency_penalty", "metadata",
})  # fmt: skip
#: every field each endpoint knows; any other is refused, as OpenAI refuses it ("Unrecognized
#: request argument"): a field the gateway does not read would be silently dropped
KNOWN_CHAT = _COMMON | UNSUPPORTED_CHAT | {
    "messages", "max_completion_tokens", "response_format", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning_effort",
}  # fmt: skip
KNOWN_COMPLETION = _COMMON | UNSUPPORTED_COMPLETION | {"prompt"}
#: JSON's safe range for a seed: OpenAI and Ollama take 64-bit integers
MAX_SEED = 2**63 - 1
#: the fields behind the generation options and function calling (checked only when named)
_EXTRAS = frozenset({*OPTION_NAMES, "tools", "tool_choice", "parallel_tool_calls"})
#: OpenAI's rule for a message's ``name``
_PARTICIPANT = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: OpenAI's rule for ``response_format.json_schema.name``
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the value (other than null) of an unsupported field that asks for nothing, compared with its
#: type: ``logprobs: 0`` on the legacy endpoint asks for the sampled token's logprob (chat's
#: ``logprobs`` is a boolean), and ``web_search_options: {}`` turns web search on
_DEFAULTS: dict[str, object] = {
    "best_of": 1, "modalities": ["text"], "service_tier": "auto", "logprobs": False, "top_logprobs": 0,
    "echo": False, "store": False, "logit_bias": {}, "functions": [], "suffix": "",
}  # fmt: skip


@dataclass(slots=True)
class ParsedRequest:
    template: ChatRequest  # model = the requested model; the router maps it per provider
    endpoint: str  # "chat.completions" | "completions"
    requested_model: str
    provider: str | None
    tenant_id: str | None
    include_usage: bool
    #: the request's metadata (``gateway/api/metadata.py``; None: none)
    metadata: dict[str, str] | None = None


_type_name = type_name


def expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, got {_type_name(body)}")
    return body


#: control characters (C0, DEL, C1) and the Unicode line and paragraph separators
_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def _has_control(value: str) -> bool:
    """A character that is in no model name or tenant id, and with which a client could break
    a log line (forge a cost line) or a response header."""
    return not value.isprintable() and any(unicodedata.category(c) in _BREAKING for c in value)


def string_field(
    body: Mapping[str, Any], name: str, *, required: bool = False, max_len: int | None = None, printable: bool = False
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{name}'", param=name, code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string, got {_type_name(value)}", param=name, code="invalid_type")
    if required and not value.strip():
        raise InvalidRequest(f"'{name}' must not be empty", param=name, code="invalid_value")
    if max_len is not None and len(value) > max_len:
        raise InvalidRequest(f"'{name}' is longer than {max_len} characters", param=name, code="invalid_value")
    if printable and _has_control(value):
        raise InvalidRequest(
            f"'{name}' must not contain control characters (line breaks, tabs, NUL, ...)",
            param=name,
            code="invalid_value",
        )
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a number, got {_type_name(value)}", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low:g} and {high:g}, got {value}", param=name, code="invalid_value"
        )
    return float(value)


def integer_field(body: dict[str, Any], name: str, low: int = 1, high: int = 10_000_000) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and not low <= value <= high:
        value = int(value)  # an integer too large for the JSON decoder's 64 bits: out of range, below
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer, got {_type_name(value)}", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low} and {high}, got {value}", param=name, code="invalid_value"
        )
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean, got {_type_name(value)}", param=name, code="invalid_type")
    return value


def _stop(body: dict[str, Any]) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOP:
            raise InvalidRequest(f"'stop' accepts at most {MAX_STOP} sequences, got {len(value)}", param="stop")
        return list(value) or None
    raise InvalidRequest("'stop' must be a string or an array of strings", param="stop", code="invalid_type")


def _n(body: dict[str, Any]) -> None:
    n = integer_field(body, "n", 1, 128)
    if n is not None and n != 1:
        raise InvalidRequest("Only n=1 is supported by this gateway", param="n", code="unsupported_value")


def _is_default(name: str, value: Any) -> bool:
    if value is None:
        return True
    default = _DEFAULTS.get(name, None)
    return type(value) is type(default) and value == default


def refuse_unknown(body: dict[str, Any], names: frozenset[str], known: frozenset[str]) -> None:
    if not body.keys() <= known:
        name = next(name for name in body if name not in known)
        raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    for name in body:  # a few keys, against a set: most bodies name none of these
        if name in names and not _is_default(name, body[name]):
            raise InvalidRequest(f"'{name}' is not supported by this gateway", param=name, code="unsupported_parameter")


class _Content:
    """A message's content: its text, its parts when it holds images, and its prompt-cache
    marks with the parts they index (``Message.cache``, ``Message.pieces``)."""

    __slots__ = ("marks", "parts", "pieces", "text")

    def __init__(self, text: str, parts: tuple[str | Image, ...] | None = None) -> None:
        self.text = text
        self.parts = parts
        self.pieces: tuple[str | Image, ...] | None = None
        self.marks: list[tuple[int, str | None]] = []


def _content(message: dict[str, Any], index: int) -> _Content:
    """The message's text, and its parts in order when it holds images (else None)."""
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant":
            return _Content("")
        raise InvalidRequest(f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    if isinstance(content, str):
        return _Content(content)
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}' must be a string or an array of content parts", param=param, code="invalid_type"
        )
    texts: list[str] = []
    parts: list[str | Image] = []
    marks: list[tuple[int, str | None]] = []
    images = False
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, dict) and kind is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.type'", param=f"{where}.type", code="missing_required_parameter"
            )
        if isinstance(part, dict) and "cache_control" in part:
            marks.append((j, parse_mark(part["cache_control"], f"{where}.cache_control")))
        if kind == "image_url" and message.get("role") == "user":
            parts.append(_image(part, where))
            images = True
            continue
        # an assistant's refusal part (the SDK puts a refused answer back so) is its text
        key = "refusal" if kind == "refusal" and message.get("role") == "assistant" else "text"
        if kind != key:
            shown = kind if isinstance(part, dict) else _type_name(part)
            raise InvalidRequest(
                f"{where}: only text content parts (and images in user messages) are supported, got {shown!r}",
                param=where,
            )
        text = part.get(key)
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}.{key} must be a string", param=f"{where}.{key}", code="invalid_type")
        texts.append(text)
        parts.append(text)
    out = _Content("".join(texts), tuple(parts) if images else None)
    if marks:
        out.pieces, out.marks = tuple(parts), marks
    return out


def _image(part: dict[str, Any], where: str) -> Image:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else None
    if not isinstance(url, str):
        raise InvalidRequest(
            f"Missing required parameter: '{where}.image_url.url'",
            param=f"{where}.image_url.url",
            code="missing_required_parameter",
        )
    detail = spec.get("detail") if isinstance(spec, dict) else None
    if detail is not None and (not isinstance(detail, str) or detail not in DETAILS):  # a list: unhashable, a 500
        raise InvalidRequest(
            f"'{where}.image_url.detail' must be one of 'auto', 'low', 'high'", param=f"{where}.image_url.detail"
        )
    try:
        return parse_image_url(url, detail)
    except ValueError as exc:
        raise InvalidRequest(f"'{where}.image_url.url' {exc}", param=f"{where}.image_url.url") from exc


def _messages(body: dict[str, Any]) -> tuple[list[Message], bool, tuple[str, ...]]:
    """The conversation, whether it holds tool calls or results, what its content needs."""
    raw = body.get("messages")
    if raw is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'", param="messages", code="missing_required_parameter"
        )
    if not isinstance(raw, list):
        raise InvalidRequest(
            f"'messages' must be an array, got {_type_name(raw)}", param="messages", code="invalid_type"
        )
    if not raw:
        raise InvalidRequest("'messages' must contain at least one message", param="messages", code="empty_array")
    messages: list[Message] = []
    made: set[str] = set()  # the ids of the calls made so far: what a tool message may answer
    calls = CallsAnswered()
    history = False
    needs: set[str] = set()  # what the content needs (ChatRequest.content_needs)
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = item.get("role")
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].role'",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        name = _participant(item, i, role) if "name" in item else None
        content = item.get("content")
        cache: tuple[tuple[int, str | None], ...] = ()
        if isinstance(content, str):
            text, parts, pieces = content, None, None
        else:
            read = _content(item, i)
            text, parts, pieces, cache = read.text, read.parts, read.pieces, tuple(read.marks)
        if "cache_control" in item:  # the whole message: its last block
            cache = (*cache, (WHOLE, parse_mark(item["cache_control"], f"messages[{i}].cache_control")))
        if role == "tool":
            call_id = parse_tool_call_id(item, f"messages[{i}]", made)
            calls.answer(call_id, i, messages)
            messages.append(Message("tool", text, tool_call_id=call_id, cache=cache))
            history = True
            continue
        calls.before_next(i, messages)
        if role == "assistant" and "tool_calls" in item:
            made_here = parse_tool_calls(item, f"messages[{i}]")
            if made_here:
                made.update(call.id for call in made_here)
                calls.made(made_here, i)
                history = True
            messages.append(Message("assistant", text, made_here, name=name, cache=cache, pieces=pieces))
        else:
            messages.append(Message(cast(Role, role), text, name=name, parts=parts, cache=cache, pieces=pieces))
            if parts is not None:
                needs.add("images")
                needs.update(need for p in parts if isinstance(p, Image) for need in p.needs())
            elif role == "user" and not text.strip():
                needs.add("blank_content")
    calls.before_next(len(raw), messages)
    if not any(m.content.strip() or m.parts or m.tool_calls for m in messages):
        # no text at all (e.g. one empty system message): Gemini and Anthropic are sent it as an
        # empty user turn, which they refuse with a 400 that does not fall back (review)
        needs.add("blank_content")
    return messages, history, tuple(sorted(needs))


def _participant(item: dict[str, Any], i: int, role: str) -> str | None:
    """A message's participant ``name`` (system, user or assistant messages, as at OpenAI)."""
    param = f"messages[{i}].name"
    name = item["name"]
    if name is None:
        return None
    if not isinstance(name, str) or not _PARTICIPANT.fullmatch(name) or role == "tool":
        raise InvalidRequest(
            f"'{param}' must be 1 to 64 letters, digits, '_' or '-' (and a tool message has none)",
            param=param,
            code="invalid_value",
        )
    return name


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options", code="invalid_type")
    if not stream:  # as OpenAI answers it
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled",
            param="stream_options",
            code="invalid_value",
        )
    value = options.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean", param="stream_options.include_usage")
    return bool(value)


def _penalty(body: dict[str, Any], name: str) -> float | None:
    value = _number(body, name, -2, 2)
    return None if value == 0 else value  # the default asks for nothing: any provider serves it


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("response_format")
    if value is None:
        return None
    param = "response_format"
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object, got {_type_name(value)}", param=param, code="invalid_type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise InvalidRequest(
            f"'{param}.type' must be one of 'text', 'json_object', 'json_schema', got {kind!r}",
            param=f"{param}.type",
            code="invalid_value",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            f"Missing required parameter: '{param}.json_schema'",
            param=f"{param}.json_schema",
            code="missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise InvalidRequest(
            f"'{param}.json_schema.name' must be 1 to 64 letters, digits, '_' or '-'",
            param=f"{param}.json_schema.name",
            code="invalid_value",
        )
    for key, kinds, what in (
        ("schema", dict, "an object"),
        ("strict", bool, "a boolean"),
        ("description", str, "a string"),
    ):
        if spec.get(key) is not None and not isinstance(spec[key], kinds):
            raise InvalidRequest(
                f"'{param}.json_schema.{key}' must be {what}", param=f"{param}.json_schema.{key}", code="invalid_type"
            )
    if spec.get("schema") is not None:
        shallow_enough(spec["schema"], f"{param}.json_schema.schema")
    return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}


def _options(body: dict[str, Any], *, response_format: bool) -> Options | None:
    """The generation options only some providers carry (``Options``); None when none is set."""
    if body.keys().isdisjoint(OPTION_NAMES):  # most bodies: no lookups, no object
        return None
    options = Options(
        seed=integer_field(body, "seed", -MAX_SEED - 1, MAX_SEED),
        presence_penalty=_penalty(body, "presence_penalty"),
        frequency_penalty=_penalty(body, "frequency_penalty"),
        response_format=_response_format(body) if response_format else None,
        reasoning_effort=_reasoning_effort(body),
    )
    return options if options.names() else None


#: a reasoning effort's shape: OpenAI adds levels (``none``, ``xhigh``) and answers an unknown one
_EFFORT = re.compile(r"[a-z]{1,16}")


def _reasoning_effort(body: dict[str, Any]) -> str | None:
    value = body.get("reasoning_effort")
    if value is None:
        return None
    if not isinstance(value, str) or not _EFFORT.fullmatch(value):
        raise InvalidRequest(
            "'reasoning_effort' must be a level such as 'minimal', 'low', 'medium' or 'high'",
            param="reasoning_effort",
            code="invalid_value",
        )
    return value


def model_name(value: str) -> str:
    """A model name as the chat endpoints take it (printable, at most MAX_MODEL_LEN): for the
    endpoints that name a model otherwise (``GET /v1/models/{model}``)."""
    checked = string_field({"model": value}, "model", required=True, max_len=MAX_MODEL_LEN, printable=True)
    assert checked is not None
    return checked


def tenant_field(body: Mapping[str, Any]) -> str | None:
    """``tenantId`` as a key's tenant is written: printable, no blank at either end (``" acme"``
    billed a tenant apart from ``acme``, which no key or budget could name), at most
    MAX_TENANT_LEN characters."""
    tenant = string_field(body, "tenantId", max_len=MAX_TENANT_LEN, printable=True)
    if tenant is None:
        return None
    stripped = tenant.strip()
    if not stripped:
        raise InvalidRequest("'tenantId' must not be empty", param="tenantId", code="invalid_value")
    if tenant != stripped:
        raise InvalidRequest("'tenantId' must not begin or end with a blank", param="tenantId", code="invalid_value")
    if not tenant.isprintable():
        # as a key's or a budget's tenant id must be (a zero-width space, a BOM or a no-break
        # space billed a tenant no key or budget could name: a review)
        raise InvalidRequest(
            "'tenantId' must be printable: no invisible or format character (zero-width space, BOM, "
            "no-break space, ...)",
            param="tenantId",
            code="invalid_value",
        )
    return tenant


def common_fields(body: dict[str, Any]) -> tuple[str, str | None, str | None]:
    model = string_field(body, "model", required=True, max_len=MAX_MODEL_LEN, printable=True)
    provider = string_field(body, "provider")
    tenant = tenant_field(body)
    _n(body)
    assert model is not None
    return model, provider, tenant


def parse_chat(raw: Any) -> ParsedRequest:
    body = expect_object(raw)
    model, provider, tenant = common_fields(body)
    refuse_unknown(body, UNSUPPORTED_CHAT, KNOWN_CHAT)
    messages, tool_history, content_needs = _messages(body)
    max_tokens = integer_field(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = integer_field(body, "max_tokens")
    elif body.get("max_tokens") is not None:  # as OpenAI answers it
        raise InvalidRequest(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported",
            param="max_tokens",
            code="invalid_parameter_combination",
        )
    extras = not body.keys().isdisjoint(_EXTRAS)  # most bodies: no options, no tools
    template = ChatRequest(
        model=model,
        messages=messages,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        max_tokens=max_tokens,
        stop=_stop(body),
        user=string_field(body, "user"),
        stream=_boolean(body, "stream"),
        options=_options(body, response_format=True) if extras else None,
        tools=parse_tools(body) if extras else None,
        tool_history=tool_history,
        content_needs=content_needs,
    )
    if any(m.cache for m in messages) or (template.tools and any(t.cache for t in template.tools.tools)):
        check_marks(template.tools.tools if template.tools else (), messages)
    return ParsedRequest(
        template,
        "chat.completions",
        model,
        provider,
        tenant,
        _include_usage(body, template.stream),
        request_metadata(body),
    )


def _prompt(body: dict[str, Any]) -> str:
    value = body.get("prompt")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'prompt'", param="prompt", code="missing_required_parameter")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, list):
        raise InvalidRequest(
            "'prompt' must be a string (or an array of exactly one string); batches and token arrays are not supported",
            param="prompt",
            code="unsupported_value",
        )
    if not isinstance(value, str):
        raise InvalidRequest(f"'prompt' must be a string, got {_type_name(value)}", param="prompt", code="invalid_type")
    return value


def parse_completion(raw: Any, *, legacy_model: bool) -> ParsedRequest:
    body = expect_object(raw)
    model, provider, tenant = common_fields(body)
    refuse_unknown(body, UNSUPPORTED_COMPLETION, KNOWN_COMPLETION)
    prompt = _prompt(body)
    max_tokens = integer_field(body, "max_tokens")
    template = ChatRequest(
        model=model,
        messages=[Message("user", prompt)],
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        max_tokens=16 if max_tokens is None else max_tokens,
        stop=_stop(body),
        user=string_field(body, "user"),
        stream=_boolean(body, "stream"),
        prompt=prompt if legacy_model else None,
        options=_options(body, response_format=False),
        content_needs=() if prompt.strip() else ("blank_content",),
    )
    return ParsedRequest(
        template, "completions", model, provider, tenant, _include_usage(body, template.stream), request_metadata(body)
    )
