"""Anthropic Messages API wire mapping: pure functions, no HTTP (providers.md section 3).

Request body, response parsing, the stream event parser and the error classifier live here
so they can be tested without a server; ``anthropic.py`` only does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import orjson

from gateway import errors
from gateway.images import Image
from gateway.prompt_cache import WHOLE, control
from gateway.providers.http import default_classify, error_message, malformed, parse_retry_after, usage_unknown
from gateway.tool_calls import NO_PARAMETERS, Tool, ToolCall, ToolCallPart, ToolSpec, declaration, load_json
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
    "cache_creation",  # the cache writes by lifetime: ephemeral_5m_input_tokens, ephemeral_1h_input_tokens
)


# --- request ------------------------------------------------------------------------------------


def build_body(req: ChatRequest, *, stream: bool, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """The /v1/messages body: top-level ``system``, user/assistant turns merged by role.

    A turn's content stays one string (texts joined by blank lines) until a tool block joins
    it; then it is a list of blocks. Calls are ``tool_use`` blocks of the assistant turn;
    results are ``tool_result`` blocks of the next user turn, ahead of any text.
    """
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(req.messages):
        if msg.role in ("system", "developer"):
            continue
        if msg.role == "assistant" and msg.tool_calls:
            blocks = _assistant_blocks(msg, f"messages[{i}]")
            if msg.cache:  # a mark on its text or on the message: its last block
                blocks[-1]["cache_control"] = control(msg.cache[-1][1])
            _add_blocks(turns, "assistant", blocks)
        elif msg.role == "tool" and msg.tool_call_id is not None:
            _add_tool_result(turns, msg)
        elif msg.role == "assistant" and not msg.content:
            continue  # an empty assistant turn (OpenAI takes one): Anthropic refuses empty content
        elif msg.cache or msg.parts is not None:
            # prompt-cache marks, or images: the content as blocks (text and images in order),
            # marked as the client marked it; a stretch of whitespace alone joins the text before
            # it (a block of it is Anthropic's 400: "\n" beside an image, a review found)
            role = "assistant" if msg.role == "assistant" else "user"
            before: list[dict[str, Any]] = []
            if turns and turns[-1]["role"] == role:
                before = turns[-1]["content"] = _blocks(turns[-1]["content"])
            blocks = _marked_blocks(msg, before, partial(_last_turn_blocks, turns))
            if blocks or before:
                _add_blocks(turns, role, blocks)
            else:  # whitespace alone, nothing to mark: as without the mark (an empty turn: a 400)
                _add_text(turns, role, msg.content)
        else:
            # Anthropic has no tool role; without a tool-call id a tool result is user text
            _add_text(turns, "assistant" if msg.role == "assistant" else "user", msg.content)
    _trim_prefill(turns)
    if not turns and req.prompt is not None:
        turns.append({"role": "user", "content": req.prompt})
    system: str | list[dict[str, Any]] | None = req.system_text()
    if system is not None and any(m.cache for m in req.messages if m.role in ("system", "developer")):
        system = []
        for m in req.messages:
            if m.role in ("system", "developer"):
                system += _marked_blocks(m, system)
    if not turns and system is not None:
        # system messages alone (OpenAI answers them): Anthropic needs a turn, so they are it
        turns.append({"role": "user", "content": system})
        system = None

    body: dict[str, Any] = {
        "model": req.model,
        "max_tokens": req.max_tokens if req.max_tokens is not None else default_max_tokens,
        "messages": turns,
    }
    if system is not None:
        body["system"] = system
    # each at 1, its default here, asks for nothing: sent with the other, it would be the pair the
    # later models refuse (SDKs send ``top_p: 1`` beside a temperature); the router keeps a pair
    # of other values from those models (``ChatRequest.needs``)
    both = req.temperature is not None and req.top_p is not None
    if req.temperature is not None and not (both and req.temperature == 1):
        body["temperature"] = req.temperature
    if req.top_p is not None and not (both and req.top_p == 1):
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if req.tools is not None:
        _add_tools(body, req.tools)
    elif req.tool_history:
        _add_tools(body, _history_tools(req))
    if stream:
        body["stream"] = True
    return body


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A turn's content as blocks (an empty text is no block: Anthropic refuses those)."""
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _add_text(turns: list[dict[str, Any]], role: str, text: str) -> None:
    if turns and turns[-1]["role"] == role:
        last = turns[-1]
        if isinstance(last["content"], str):
            last["content"] += "\n\n" + text
        elif text:
            last["content"].append({"type": "text", "text": text})
    else:
        turns.append({"role": role, "content": text})


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """A last assistant turn is Anthropic's prefill (the answer goes on from it), and one that
    ends in whitespace is its 400 ("final assistant content cannot end with trailing
    whitespace"), which does not fall back: its trailing whitespace goes (the model writes the
    space itself), with the blocks of whitespace alone at its end (a prompt-cache mark on one
    passes to the block before it), and a turn of whitespace alone with them."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    if isinstance(content, str):
        turns[-1]["content"] = content = content.rstrip()
        if not content:
            turns.pop()
        return
    while content and content[-1].get("type") == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()
        if content[-1]["text"]:
            break
        mark = content.pop().get("cache_control")
        if mark is not None and content and "cache_control" not in content[-1]:
            content[-1]["cache_control"] = mark
    if not content:
        turns.pop()


def _block(part: str | Image) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if part.inline:
        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _add_blocks(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] = _blocks(turns[-1]["content"]) + blocks
    else:
        turns.append({"role": role, "content": blocks})


def _last_turn_blocks(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The blocks of the last turn so far (its text made a block), or none."""
    if not turns:
        return []
    turns[-1]["content"] = blocks = _blocks(turns[-1]["content"])
    return blocks


def _marked_blocks(
    msg: Message, before: list[dict[str, Any]], earlier: Callable[[], list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """A message's content as blocks, split where the client put prompt-cache marks: the texts
    between two marks are one block (as they are one text without marks), an image is a block.
    Anthropic refuses a text block that is empty or only whitespace ("text content blocks must
    contain non-whitespace text"), so such a stretch joins the block before it, in this message
    or in ``before`` (the blocks this message's follow), with its mark. With no block before it
    in its turn, the stretch goes and its mark marks the end of the turn before (``earlier``),
    where the prefix it caches ends too (it went: a re-test's cache write never made); a mark on
    the whole message is its last block's."""
    pieces = msg.pieces or msg.parts or (msg.content,)
    marks = dict(msg.cache)
    blocks: list[dict[str, Any]] = []
    text: list[str] = []

    def close(mark: dict[str, str] | None) -> None:
        stretch = "".join(text)
        text.clear()
        last = blocks or before
        if stretch.strip():
            blocks.append({"type": "text", "text": stretch})
        elif last and last[-1]["type"] == "text":
            last[-1]["text"] += stretch
        if mark is None:
            return
        if blocks or before:
            (blocks or before)[-1]["cache_control"] = mark
        elif earlier is not None and (prior := earlier()) and "cache_control" not in prior[-1]:
            prior[-1]["cache_control"] = mark

    for j, piece in enumerate(pieces):
        if isinstance(piece, str):
            text.append(piece)
        else:
            close(None)
            blocks.append(_block(piece))
        if j in marks:
            close(control(marks[j]))
    close(control(marks[WHOLE]) if WHOLE in marks else None)
    return blocks


def _add_tool_result(turns: list[dict[str, Any]], msg: Message) -> None:
    """A ``tool_result`` block in the user turn, after the results already there and before
    any text (Anthropic wants the results first)."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.tool_call_id}
    if msg.content:  # ``content`` is optional; an empty text block would be refused
        block["content"] = msg.content
    if msg.cache:
        block["cache_control"] = control(msg.cache[-1][1])
    if not (turns and turns[-1]["role"] == "user"):
        turns.append({"role": "user", "content": [block]})
        return
    blocks = _blocks(turns[-1]["content"])
    at = next((i for i, b in enumerate(blocks) if b.get("type") != "tool_result"), len(blocks))
    blocks.insert(at, block)
    turns[-1]["content"] = blocks


def _assistant_blocks(msg: Message, where: str) -> list[dict[str, Any]]:
    """A text block (unless empty or whitespace alone: Anthropic's 400 "text content blocks must
    contain non-whitespace text", which models' own "\n\n" before a call made; a review), then a
    ``tool_use`` block per call."""
    text = msg.content
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text and not text.isspace() else []
    for j, call in enumerate(msg.tool_calls or ()):
        arguments = _arguments(call, f"{where}.tool_calls[{j}].function.arguments")
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _arguments(call: ToolCall, param: str) -> dict[str, Any]:
    """The call's arguments text as the object Anthropic's ``input`` is (empty text: none)."""
    if not call.arguments.strip():
        return {}
    try:
        value = load_json(call.arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise errors.InvalidRequest(
            f"The arguments of tool call {call.id!r} are not a JSON object; Anthropic takes a "
            f"call's arguments as an object: {call.arguments[:200]!r}",
            param=param,
        )
    return value


def _add_tools(body: dict[str, Any], spec: ToolSpec) -> None:
    """``tools`` and ``tool_choice``; ``parallel_tool_calls: false`` is ``disable_parallel_tool_use``."""
    body["tools"] = [
        declaration(tool, schema_key="input_schema", empty=NO_PARAMETERS, typed=True) for tool in spec.tools
    ]
    for tool, out in zip(spec.tools, body["tools"], strict=True):
        if tool.cache:
            out["cache_control"] = control(tool.cache[0])
    choice: dict[str, Any] | None = None
    if spec.function is not None:
        choice = {"type": "tool", "name": spec.function}
    elif spec.mode is not None:
        choice = {"type": _CHOICE_TYPES[spec.mode]}
    if spec.parallel is False and (choice is None or choice["type"] != "none"):
        choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    if choice is not None:
        body["tool_choice"] = choice


def _history_tools(req: ChatRequest) -> ToolSpec:
    """Tools for a conversation that holds calls but offers no tools (OpenAI takes it so):
    Anthropic refuses tool_use / tool_result blocks unless tools are defined, so the history's
    functions are declared, without parameters, and the model may call none of them."""
    names = dict.fromkeys(call.name for m in req.messages for call in m.tool_calls or ())
    return ToolSpec(tuple(Tool(name) for name in names), mode="none")


#: OpenAI's ``tool_choice`` modes -> Anthropic's ``tool_choice.type``
_CHOICE_TYPES = {"auto": "auto", "required": "any", "none": "none"}


# --- responses ----------------------------------------------------------------------------------


def finish_reason(stop_reason: str | None) -> FinishReason:
    """providers.md 6.1; an unknown or missing reason reads as a natural stop."""
    if stop_reason is None:
        return "stop"
    return STOP_REASONS.get(stop_reason, "stop")


def usage_from(raw: Any) -> Usage | None:
    """Anthropic usage -> OpenAI semantics: prompt = uncached + cache writes + cache reads; None
    (usage unknown) when a count is missing or not a token count."""
    try:
        if not isinstance(raw, Mapping):
            raise UnreadableUsage(f"usage is {type(raw).__name__}")
        created = token_count(raw, "cache_creation_input_tokens")
        hour = _hour_writes(raw.get("cache_creation"), created)
        read = token_count(raw, "cache_read_input_tokens")
        return Usage(
            prompt_tokens=token_count(raw, "input_tokens", required=True) + created + read,
            completion_tokens=token_count(raw, "output_tokens", required=True),
            cached_tokens=read,
            cache_creation_tokens=created,
            cache_creation_1h_tokens=hour,
        )
    except UnreadableUsage as e:
        usage_unknown(PROVIDER, e)
        return None


def _hour_writes(split: Any, created: int) -> int:
    """Of the ``created`` cache-write tokens, those written to a 1-hour cache (2x the input rate
    instead of 1.25x): ``cache_creation.ephemeral_1h_input_tokens``. Absent or null: none (the
    API before the split, and every 5-minute write). A split that cannot be the total's is
    usage unknown: priced at either rate it would be a guess."""
    if split is None:
        return 0
    if not isinstance(split, Mapping):
        raise UnreadableUsage(f"cache_creation is {type(split).__name__}")
    hour = token_count(split, "ephemeral_1h_input_tokens")
    if hour + token_count(split, "ephemeral_5m_input_tokens") > created:
        raise UnreadableUsage(f"cache_creation {dict(split)!r} exceeds cache_creation_input_tokens {created}")
    return hour


def _content(blocks: Any) -> tuple[str, tuple[ToolCall, ...]]:
    """The text of the ``text`` blocks and the calls of the ``tool_use`` blocks (thinking and
    other blocks are skipped)."""
    if not isinstance(blocks, list):
        raise malformed(PROVIDER, "content is not a list")
    parts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        if not isinstance(block, Mapping):
            raise malformed(PROVIDER, "content block is not an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise malformed(PROVIDER, "text block without text")
            parts.append(text)
        elif kind == "tool_use":
            call_id, name, arguments = _tool_use(block)
            if not isinstance(block.get("input"), Mapping):
                raise malformed(PROVIDER, f"tool_use block {call_id!r} without an input object")
            calls.append(ToolCall(call_id, name, arguments))
    return "".join(parts), tuple(calls)


def _tool_use(block: Mapping[str, Any]) -> tuple[str, str, str]:
    """A ``tool_use`` block's id, name and input as JSON text ("" for an empty or absent input:
    a streamed block's input arrives in deltas)."""
    call_id, name, value = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise malformed(PROVIDER, f"tool_use block without an id or a name: {str(block)[:200]}")
    return call_id, name, arguments_text(value) if isinstance(value, Mapping) else ""


def arguments_text(value: Mapping[str, Any]) -> str:
    """A call's ``input`` object as OpenAI's arguments text: compact JSON, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_message(body: Any, requested_model: str, request_id: str | None = None) -> ChatResult:
    """A non-streaming Message -> ChatResult: text blocks, tool_use blocks as calls."""
    if error_type(body) is not None:  # an error object behind a 200 (seen from proxies)
        raise classify(200, {}, body, "")
    if not isinstance(body, Mapping) or body.get("type", "message") != "message":
        raise malformed(PROVIDER, "not a Message object")
    stop_reason = body.get("stop_reason")
    model = body.get("model")
    text, calls = _content(body.get("content"))
    return ChatResult(
        text=text,
        finish_reason=finish_reason(stop_reason if isinstance(stop_reason, str) else None),
        # no usage at all: billed, cost unknown (it was a malformed answer, recorded free and
        # fallen back from: the call paid twice)
        usage=usage_from(body["usage"]) if body.get("usage") is not None else None,
        model=model if isinstance(model, str) and model else requested_model,
        upstream_request_id=request_id,
        tool_calls=calls,
    )


class StreamParser:
    """Turns the named SSE events of one stream into StreamChunks.

    ``feed`` returns the chunk to emit (or None); it raises the translated ProviderError on an
    ``error`` event. ``done`` is set by ``message_stop``; a stream ending without it was cut.
    A ``tool_use`` block is call ``k`` (counted from 0 over the message's tool_use blocks):
    its start gives the id and name, each ``input_json_delta`` more of the arguments text.
    """

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.done = False
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        #: Anthropic's block index -> the call's index, for the tool_use blocks
        self._calls: dict[Any, int] = {}
        #: the calls whose arguments text is still empty
        self._no_arguments: set[int] = set()

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
            if isinstance(block, Mapping):
                if block.get("type") == "text":
                    return self._text(block.get("text"))
                if block.get("type") == "tool_use":
                    return self._call_start(payload.get("index"), block)
            return None
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping):
                if delta.get("type") == "text_delta":
                    return self._text(delta.get("text"))
                if delta.get("type") == "input_json_delta":
                    return self._call_arguments(payload.get("index"), delta.get("partial_json"))
            return None
        if kind == "content_block_stop":
            return self._call_stop(payload.get("index"))
        if kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            self._merge_usage(payload.get("usage"))
            # the final counts: handed on now (a chunk with usage only writes nothing), so a
            # stream cut before message_stop is still priced exactly (it was unpriced)
            return StreamChunk(usage=usage_from(self._usage), model=self.model) if self._usage else None
        if kind == "message_stop":
            self.done = True
            return StreamChunk(
                finish_reason=finish_reason(self._stop_reason),
                # no usage in the whole stream: billed, cost unknown (it was recorded free)
                usage=usage_from(self._usage) if self._usage else None,
                model=self.model,
            )
        return None  # ping, and event types added later

    def _call_start(self, block_index: Any, block: Mapping[str, Any]) -> StreamChunk:
        call_id, name, arguments = _tool_use(block)
        index = len(self._calls)
        self._calls[block_index] = index
        if not arguments or arguments == "{}":  # the input comes in deltas (Anthropic sends {})
            arguments = ""
            self._no_arguments.add(index)
        return self._part(ToolCallPart(index, call_id, name, arguments))

    def _call_arguments(self, block_index: Any, partial: Any) -> StreamChunk | None:
        index = self._calls.get(block_index)
        if index is None:  # input of a block that is no client tool call (server tools)
            return None
        if not isinstance(partial, str):
            raise malformed(PROVIDER, "input_json_delta without partial_json text")
        if not partial:
            return None
        self._no_arguments.discard(index)
        return self._part(ToolCallPart(index, arguments=partial))

    def _call_stop(self, block_index: Any) -> StreamChunk | None:
        """A call that got no arguments text at all (a function without parameters) ends
        with ``{}``, so the joined pieces are always a JSON object."""
        index = self._calls.get(block_index)
        if index is None or index not in self._no_arguments:
            return None
        self._no_arguments.discard(index)
        return self._part(ToolCallPart(index, arguments="{}"))

    def _part(self, part: ToolCallPart) -> StreamChunk:
        return StreamChunk(model=self.model, tool_calls=(part,))

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
