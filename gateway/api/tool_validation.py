"""Validate the function-calling parts of a chat request: ``tools``, ``tool_choice``,
``parallel_tool_calls``, an assistant message's ``tool_calls`` and a tool message's
``tool_call_id``; errors say which field is wrong, as OpenAI's do."""

from __future__ import annotations

import re
from typing import Any, cast

import orjson

from gateway.errors import InvalidRequest
from gateway.prompt_cache import parse_mark
from gateway.tool_calls import MAX_JSON_DEPTH, Tool, ToolCall, ToolMode, ToolSpec, load_json, nests_deeper
from gateway.types import Message

#: OpenAI's limits: a function name, the number of tools
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128
_MODES = frozenset({"none", "auto", "required"})


def type_name(value: Any) -> str:
    """A JSON value's type as the error messages name it."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(param, f"'{param}' must be an object, got {type_name(value)}", "invalid_type")
    return value


def _name(value: Any, param: str) -> str:
    if value is None:
        raise _invalid(param, f"Missing required parameter: '{param}'", "missing_required_parameter")
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _invalid(param, f"'{param}' must be 1 to 64 letters, digits, '_' or '-', got {value!r}")
    return value


def _tool(item: Any, param: str) -> Tool:
    item = _object(item, param)
    if item.get("type") != "function":
        raise _invalid(f"{param}.type", f"'{param}.type' must be 'function', got {item.get('type')!r}")
    function = _object(item.get("function"), f"{param}.function")
    name = _name(function.get("name"), f"{param}.function.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{param}.function.description", f"'{param}.function.description' must be a string")
    parameters = function.get("parameters")
    if parameters is not None:
        _object(parameters, f"{param}.function.parameters")
        shallow_enough(parameters, f"{param}.function.parameters")
        kind = parameters.get("type", "object")
        if kind != "object":  # the arguments are an object: OpenAI refuses any other schema too
            raise _invalid(
                f"{param}.function.parameters",
                f"Invalid schema for function {name!r}: schema must be a JSON Schema of 'type: \"object\"', "
                f"got 'type: {kind!r}'",
            )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"{param}.function.strict", f"'{param}.function.strict' must be a boolean")
    mark = item.get("cache_control")
    cache = () if mark is None else (parse_mark(mark, f"{param}.cache_control"),)
    return Tool(name, description, parameters, strict, cache)


def parse_tools(body: dict[str, Any]) -> ToolSpec | None:
    """The request's tools, how they may be used; None when it offers none."""
    raw = body.get("tools")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if raw is None or raw == []:
        for name, value in (("tool_choice", choice), ("parallel_tool_calls", parallel)):
            if value is not None:
                raise _invalid(name, f"'{name}' is only allowed when 'tools' are specified")
        return None
    if not isinstance(raw, list):
        raise _invalid("tools", f"'tools' must be an array, got {type_name(raw)}", "invalid_type")
    if len(raw) > MAX_TOOLS:
        raise _invalid("tools", f"'tools' accepts at most {MAX_TOOLS} tools, got {len(raw)}")
    tools = tuple(_tool(item, f"tools[{i}]") for i, item in enumerate(raw))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise _invalid("tools", "'tools' must not name a function twice")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls", "'parallel_tool_calls' must be a boolean", "invalid_type")
    mode, function = _choice(choice, names)
    return ToolSpec(tools, mode, function, parallel)


def _choice(choice: Any, names: list[str]) -> tuple[ToolMode | None, str | None]:
    if choice is None:
        return None, None
    if isinstance(choice, str):
        if choice not in _MODES:
            raise _invalid("tool_choice", f"'tool_choice' must be one of 'none', 'auto', 'required', got {choice!r}")
        return cast(ToolMode, choice), None
    choice = _object(choice, "tool_choice")
    if choice.get("type") != "function":
        raise _invalid("tool_choice.type", f"'tool_choice.type' must be 'function', got {choice.get('type')!r}")
    name = _name(_object(choice.get("function"), "tool_choice.function").get("name"), "tool_choice.function.name")
    if name not in names:
        raise _invalid("tool_choice.function.name", f"'tool_choice' names {name!r}, which is not in 'tools'")
    return "required", name


def parse_tool_calls(message: dict[str, Any], param: str) -> tuple[ToolCall, ...] | None:
    """An assistant message's ``tool_calls`` (None when it has none)."""
    raw = message.get("tool_calls")
    if raw is None or raw == []:
        return None
    param = f"{param}.tool_calls"
    if not isinstance(raw, list):
        raise _invalid(param, f"'{param}' must be an array, got {type_name(raw)}", "invalid_type")
    calls = []
    for j, item in enumerate(raw):
        where = f"{param}[{j}]"
        item = _object(item, where)
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{where}.id", f"'{where}.id' must be a non-empty string")
        if item.get("type", "function") != "function":
            raise _invalid(f"{where}.type", f"'{where}.type' must be 'function'")
        function = _object(item.get("function"), f"{where}.function")
        name = _name(function.get("name"), f"{where}.function.name")
        arguments = function.get("arguments", "")
        value = _json_object(arguments) if isinstance(arguments, str) else None
        if value is None:
            raise _invalid(
                f"{where}.function.arguments", f"'{where}.function.arguments' must be a string holding a JSON object"
            )
        if arguments.count("[") + arguments.count("{") > MAX_JSON_DEPTH:  # only such texts can nest deeper
            shallow_enough(value, f"{where}.function.arguments")
        calls.append(ToolCall(call_id, name, arguments))
    return tuple(calls)


def _json_object(text: str) -> dict[str, Any] | None:
    """A call's arguments as the object every vendor can take (Anthropic, Gemini and Ollama want
    an object, not text; blank text is no arguments), or None when they are no JSON object."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except ValueError:
        try:  # what orjson refuses and JSON allows: an integer past 64 bits
            value = load_json(text)
        except (ValueError, RecursionError):  # nested past what Python parses: no arguments to send
            return None
    return value if isinstance(value, dict) else None


def shallow_enough(value: Any, param: str) -> None:
    """A JSON value the adapters read and re-encode (a call's arguments, a tool's schema, a
    response schema) nests at most :data:`MAX_JSON_DEPTH` levels: Python's parser and encoder give
    up near 1,000 levels (``RecursionError``), and that counted as each provider's failure: five
    such requests opened every provider's circuit for every tenant (reviews)."""
    if nests_deeper(value, MAX_JSON_DEPTH):
        raise _invalid(param, f"'{param}' nests deeper than {MAX_JSON_DEPTH} levels")


class CallsAnswered:
    """OpenAI's rule for a conversation's calls: an assistant message's ``tool_calls`` are
    followed at once by one ``tool`` message for each (OpenAI's and Anthropic's 400 otherwise).
    The results are put in the order of the calls: OpenAI and Anthropic pair them by id, but
    Gemini and Ollama by position and name, so results sent back in another order (which OpenAI
    takes) gave each call another call's result."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}  # the last assistant message's call ids -> their order
        self._pending: set[str] = set()  # ... not answered yet
        self._at = 0  # that message's index in the request
        self._first: int | None = None  # the index of its first result in the messages

    def made(self, calls: tuple[ToolCall, ...], index: int) -> None:
        """An assistant message (at ``index``) made ``calls``."""
        self._order = {}
        for k, call in enumerate(calls):
            if call.id in self._order:
                raise _invalid(
                    f"messages[{index}].tool_calls[{k}].id", f"'messages[{index}].tool_calls' has id {call.id!r} twice"
                )
            self._order[call.id] = k
        self._pending = set(self._order)
        self._at = index

    def answer(self, call_id: str, index: int, messages: list[Message]) -> None:
        """The tool message at ``index`` answers ``call_id`` (``messages``: those before it)."""
        if call_id not in self._pending:
            raise _invalid(
                f"messages[{index}].tool_call_id",
                f"'messages[{index}].tool_call_id' names {call_id!r}, which is not an unanswered call of the "
                "assistant message before it (each call is answered once, by the tool messages right after it)",
            )
        self._pending.discard(call_id)
        if self._first is None:
            self._first = len(messages)

    def before_next(self, index: int, messages: list[Message]) -> None:
        """A message that is no tool result comes at ``index`` (or the conversation ends): every
        call must be answered by now. Puts the results in the order of their calls."""
        if self._pending:
            missing = ", ".join(sorted(self._pending, key=self._order.__getitem__))
            raise _invalid(
                f"messages[{self._at}].tool_calls",
                f"An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {missing}",
            )
        first = self._first
        if first is not None:
            order = self._order
            messages[first:] = sorted(messages[first:], key=lambda m: order[m.tool_call_id or ""])
            self._first = None


def parse_tool_call_id(message: dict[str, Any], param: str, made: set[str]) -> str:
    """A tool message's ``tool_call_id``: required."""
    value = message.get("tool_call_id")
    if value is None:
        raise _invalid(
            f"{param}.tool_call_id",
            f"Missing required parameter: '{param}.tool_call_id'",
            "missing_required_parameter",
        )
    if not isinstance(value, str) or not value:
        raise _invalid(f"{param}.tool_call_id", f"'{param}.tool_call_id' must be a non-empty string")
    if value not in made:
        raise _invalid(
            f"{param}.tool_call_id",
            f"'{param}.tool_call_id' names {value!r}, a call no earlier assistant message made "
            "(a tool message answers a preceding message's tool_calls)",
        )
    return value
