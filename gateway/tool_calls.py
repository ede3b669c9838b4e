"""Function calling, vendor-neutral: the tools a request offers, the calls a model makes.

OpenAI's shapes are the reference: a tool is a function with a JSON Schema for its parameters;
a call has an id, the function's name and its arguments as JSON text; a tool result goes back
as a ``tool`` message naming the call's id. Each adapter maps these to its vendor's shapes
(Anthropic ``tool_use``/``tool_result`` blocks, Gemini ``functionCall``/``functionResponse``
parts, Ollama ``tool_calls`` with argument objects) and says it carries ``"tools"`` in
``Provider.options``; a request with tools is never sent to a provider that does not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: ``tool_choice`` as a mode; a forced function is ``ToolSpec.function``
ToolMode = Literal["none", "auto", "required"]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    #: JSON Schema of the arguments object (None: no parameters)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    #: a prompt-cache breakpoint after this tool (``gateway.prompt_cache``): ``(ttl,)``, ttl None
    #: for the default 5 minutes; empty: none
    cache: tuple[str | None, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``."""

    tools: tuple[Tool, ...]
    #: None: the vendor's default (auto when tools are given)
    mode: ToolMode | None = None
    #: ``tool_choice: {"type": "function", "function": {"name": ...}}``: this one must be called
    function: str | None = None
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete call: in an assistant message of the history, or in an answer."""

    id: str
    name: str
    #: the arguments object as JSON text (OpenAI's shape; vendors with objects are re-encoded)
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A piece of a streamed call: the first piece of call ``index`` carries its id and name,
    the following ones more of its ``arguments`` text (OpenAI's ``delta.tool_calls``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf: past a double's range (1e400)
        raise ValueError(f"{text} is past a double's range")
    return value


def load_json(text: str) -> Any:
    """Arguments or a result as JSON that can be sent on as it was meant: integers exact past 64
    bits (Python's parser; orjson reads them as floats), and refused (``ValueError``) what Python's parser
    takes and no vendor body can carry: ``NaN``, ``Infinity`` and numbers past a double's range
    (they went as ``null``), and a lone surrogate (``"\\udfff"``: the body could not be encoded,
    which counted as the provider's connection error)."""
    value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    if "\\u" in text:  # only an escape makes a surrogate (the text itself is valid Unicode)
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate is not Unicode text") from None
    return value


#: the deepest JSON value the adapters re-encode (arguments, schemas, results): past orjson's 255
#: levels a body falls back to Python's encoder, which gives up near 1,000
MAX_JSON_DEPTH = 64


def nests_deeper(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


#: a function without parameters, for vendors that want a schema anyway
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def declaration(
    tool: Tool, *, schema_key: str, empty: dict[str, Any] | None = None, strict: bool = False, typed: bool = False
) -> dict[str, Any]:
    """A function as a vendor declares it: its name, description and parameters schema under
    ``schema_key`` (``empty`` when it has none and the vendor wants one), ``strict`` where the
    vendor has it (OpenAI and Azure). ``typed``: the vendor wants the schema's root to say
    ``type: object`` (Anthropic's 400 "input_schema.type: Field required" for ``{}`` or a schema
    of ``properties`` alone, which OpenAI takes): added when it says no type (the API refuses
    any type but object)."""
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    parameters = tool.parameters if tool.parameters is not None else empty
    if parameters is not None:
        if typed and "type" not in parameters:
            parameters = {"type": "object", **parameters}
        out[schema_key] = parameters
    if strict and tool.strict is not None:
        out["strict"] = tool.strict
    return out


def whole_call_parts(calls: Sequence[ToolCall], first_index: int) -> tuple[ToolCallPart, ...]:
    """Calls that come whole in a stream (Gemini, Ollama) as its pieces: one a call, with its
    id, name and all its arguments, indexed from ``first_index`` (the calls streamed before)."""
    return tuple(ToolCallPart(first_index + k, call.id, call.name, call.arguments) for k, call in enumerate(calls))


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def openai_tool_call_part(part: ToolCallPart) -> dict[str, Any]:
    out: dict[str, Any] = {"index": part.index}
    function: dict[str, Any] = {"arguments": part.arguments}
    if part.id is not None:
        out["id"] = part.id
        out["type"] = "function"
    if part.name is not None:
        function["name"] = part.name
    out["function"] = function
    return out
