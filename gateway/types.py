"""Normalised, vendor-neutral request and result types shared by the API and every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, TypeGuard

from gateway.images import Image
from gateway.tool_calls import ToolCall, ToolCallPart, ToolSpec

Role = Literal["system", "developer", "user", "assistant", "tool"]

#: OpenAI finish reasons every adapter maps to
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Message:
    role: Role
    content: str
    #: an assistant message's calls (its content may then be empty)
    tool_calls: tuple[ToolCall, ...] | None = None
    #: a ``tool`` message: the call it answers
    tool_call_id: str | None = None
    #: who says it (OpenAI's participant ``name``; the other vendors have no such field)
    name: str | None = None
    #: a user message with images: its parts in order, text and images (``content`` is then
    #: its text alone)
    parts: tuple[str | Image, ...] | None = None
    #: prompt-cache breakpoints (``gateway.prompt_cache``): (index in ``pieces``, or ``WHOLE``
    #: for the message's last block; ttl, None for 5 minutes). Anthropic alone reads them
    cache: tuple[tuple[int, str | None], ...] = ()
    #: the content parts as the client sent them, when it marked one (text and images)
    pieces: tuple[str | Image, ...] | None = None


#: the generation options past the common ones, by their OpenAI names (see ``Options``)
OPTION_NAMES = ("seed", "presence_penalty", "frequency_penalty", "response_format", "reasoning_effort")
#: what a request may need that not every vendor carries (``Provider.options``): the options,
#: ``temperature`` above 1 (OpenAI's range is 0 to 2, Anthropic's 0 to 1), ``tools`` (tools
#: offered, or calls and their results in the conversation), ``tool_choice`` (a call required,
#: or of one function), ``parallel_tool_calls`` (false: at most one call), ``images`` (images in
#: the conversation), ``image_urls`` (an image by http(s) URL, for the vendor to fetch),
#: ``gif_images`` (a GIF: Gemini refuses it), ``large_images`` (an image's base64 over 5 MiB:
#: Anthropic refuses it),
#: ``tool_names`` (a function name starting with a digit or '-': OpenAI's rule takes it, Gemini's
#: not), ``blank_content`` (a user message or prompt that is empty or only whitespace: OpenAI
#: answers it, Anthropic and Gemini refuse it) and ``blank_stop`` (a stop sequence that is empty
#: or only whitespace, such as the common ``"\n"``: Anthropic refuses it) and
#: ``temperature_with_top_p`` (both set, neither at its default of 1: the later Claude models
#: refuse the pair), ``sampling`` (``temperature`` or ``top_p`` set to other than 1, their
#: default: OpenAI's reasoning models refuse it) and ``sampling_with_reasoning`` (that with a
#: ``reasoning_effort`` other than ``none``: gpt-5.1 and later refuse the pair), and
#: ``reasoning_effort_level`` (a ``reasoning_effort`` none of :data:`REASONING_LEVELS`: OpenAI's
#: API takes it as sent and answers for itself; a vendor that maps the levels has no value for it),
#: ``tools_with_response_format`` (tools offered with a JSON ``response_format``: Gemini before 3
#: refuses the pair, "Tool use with a response mime type: 'application/json' is unsupported")
CAPABILITIES = (
    *OPTION_NAMES,
    "reasoning_effort_level",
    "temperature",
    "temperature_with_top_p",
    "sampling",
    "sampling_with_reasoning",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "images",
    "image_urls",
    "gif_images",
    "large_images",
    "tool_names",
    "blank_content",
    "blank_stop",
    "tools_with_response_format",
)


#: the ``reasoning_effort`` levels OpenAI names (a vendor that maps them maps these)
REASONING_LEVELS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


@dataclass(frozen=True, slots=True)
class Options:
    """Generation options only some vendors' wire formats carry, by their OpenAI names. A
    request that sets one is sent only to the providers that carry it (``Provider.options``):
    never silently dropped on the way."""

    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name", "schema",
    #: "strict"?, "description"?}}`` as the client sent it (``"text"``, the default, is no option)
    response_format: dict[str, Any] | None = None
    #: how hard a reasoning model thinks (``minimal``, ``low``, ``medium``, ``high``, ...): OpenAI
    #: and Azure take it as sent, Gemini 2.5 and later as a ``thinkingConfig`` (google_thinking)
    reasoning_effort: str | None = None

    def names(self) -> list[str]:
        """The options set, in a fixed order."""
        return [name for name in OPTION_NAMES if getattr(self, name) is not None]

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must follow (``json_schema`` mode with a schema), else None
        (JSON, of no set shape)."""
        spec = self.response_format
        if spec is None or spec.get("type") != "json_schema":
            return None
        schema: dict[str, Any] | None = spec["json_schema"].get("schema")
        return schema


@dataclass(slots=True)
class ChatRequest:
    """What an adapter sends upstream. ``model`` is already the provider's model name."""

    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    user: str | None = None
    stream: bool = False
    #: adapters with a legacy text endpoint (OpenAI / Azure ``/completions``) use it when set
    prompt: str | None = None
    options: Options | None = None
    tools: ToolSpec | None = None
    #: the conversation holds tool calls or tool results (a provider must carry ``tools``)
    tool_history: bool = False
    #: what its messages' content needs (``CAPABILITIES``): ``images``, ``image_urls`` when one is
    #: an http(s) URL, ``blank_content``; found once, as the messages are validated
    content_needs: tuple[str, ...] = ()

    def for_provider(self, model: str, stream: bool) -> ChatRequest:
        """This request as one provider is asked it: its model name, streamed or not (what
        ``dataclasses.replace`` does, without looking the fields up on every call: 1.1% of the
        served gateway's time in py-spy)."""
        return ChatRequest(
            model,
            self.messages,
            self.temperature,
            self.top_p,
            self.max_tokens,
            self.stop,
            self.user,
            stream,
            self.prompt,
            self.options,
            self.tools,
            self.tool_history,
            self.content_needs,
        )

    def needs(self) -> list[str]:
        """The ``CAPABILITIES`` this request needs from a provider (most requests: none)."""
        needs = self.options.names() if self.options is not None else []
        if self.options is not None:
            effort = self.options.reasoning_effort
            if effort is not None and effort not in REASONING_LEVELS:
                needs.append("reasoning_effort_level")
        if self.temperature is not None and self.temperature > 1:
            needs.append("temperature")
        tempered = self.temperature is not None and self.temperature != 1
        nucleus = self.top_p is not None and self.top_p != 1
        if tempered or nucleus:
            needs.append("sampling")
            if tempered and nucleus:
                needs.append("temperature_with_top_p")
            effort = self.options.reasoning_effort if self.options is not None else None
            if effort is not None and effort != "none":
                needs.append("sampling_with_reasoning")
        if self.tools is not None or self.tool_history:
            needs.append("tools")
            # a function name Gemini refuses, offered or in the conversation's calls (those
            # went to Gemini: a review)
            offered = (tool.name for tool in self.tools.tools) if self.tools is not None else ()
            called = (call.name for m in self.messages if m.tool_calls for call in m.tool_calls)
            if any(not (name[:1].isalpha() or name[:1] == "_") for name in chain(offered, called)):
                needs.append("tool_names")
        if self.tools is not None:
            if self.options is not None and self.options.response_format is not None:
                needs.append("tools_with_response_format")
            if self.tools.mode == "required":  # a forced function is "required" too
                needs.append("tool_choice")
            if self.tools.parallel is False and self.tools.mode != "none":  # "none": no call at all
                needs.append("parallel_tool_calls")
        if self.content_needs:
            needs.extend(self.content_needs)
        if self.stop and any(not stop.strip() for stop in self.stop):
            needs.append("blank_stop")
        return needs

    def system_text(self) -> str | None:
        """System and developer messages joined, for vendors with a separate system field."""
        parts = [m.content for m in self.messages if m.role in ("system", "developer")]
        return "\n\n".join(parts) if parts else None


#: a BIGINT: the bound of an upstream's counts this module reads (what the stores hold is less:
#: ``gateway.events.STORED_INT``; a count past PLAUSIBLE_TOKENS is usage unknown before that)
MAX_TOKENS = 2**63 - 1
#: the largest count taken from an upstream: a prompt and a completion count add up to a total
MAX_UPSTREAM_TOKENS = MAX_TOKENS // 2
#: the most tokens one call can use, with a wide margin (the largest context windows hold 10**7):
#: a usage report beyond it is an upstream's error, recorded as usage unknown (``Usage.plausible``)
PLAUSIBLE_TOKENS = 10**9


def is_token_count(value: Any) -> TypeGuard[int]:
    """An upstream's token count we can take: an integer (not a bool), 0 to MAX_UPSTREAM_TOKENS."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UPSTREAM_TOKENS


class UnreadableUsage(ValueError):
    """A usage report with a count that is missing or not a token count (negative, a float, a
    string): the usage is unknown. Reading it as 0 recorded a billed answer as free."""


def token_count(raw: Mapping[str, Any], key: str, *, required: bool = False) -> int:
    """``raw[key]`` as a token count; 0 when absent or null unless ``required``."""
    value = raw.get(key)
    if value is None:
        if required:
            raise UnreadableUsage(f"{key} is missing")
        return 0
    if not is_token_count(value):
        raise UnreadableUsage(f"{key} is {value!r}")
    return value


@dataclass(slots=True)
class Usage:
    """Raw token counts, normalised to OpenAI semantics.

    ``prompt_tokens`` includes cached and cache-creation tokens; ``completion_tokens`` includes
    reasoning (thinking) tokens. The details are subsets used for pricing.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    #: of ``cache_creation_tokens``, those written to a cache that lives an hour (Anthropic's
    #: ``ttl: "1h"``, billed at 2x the input rate instead of the 5-minute write's 1.25x)
    cache_creation_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def plausible(self) -> bool:
        """Whether the counts could be a call's (every one, and the total, at most
        :data:`PLAUSIBLE_TOKENS`): an upstream that reported 10**15 output tokens was recorded at
        $1.25 billion, and counts whose sum passed a BIGINT made the event fail validation, so
        the attempt had no event at all."""
        limit = PLAUSIBLE_TOKENS
        return (
            0 <= self.prompt_tokens <= limit
            and 0 <= self.completion_tokens <= limit
            and self.total_tokens <= limit
            and 0 <= self.cached_tokens <= limit
            and 0 <= self.cache_creation_tokens <= limit
            and 0 <= self.cache_creation_1h_tokens <= limit
            and 0 <= self.reasoning_tokens <= limit
        )

    def to_openai(self) -> dict[str, object]:
        """OpenAI's usage object, its details always there (as OpenAI sends them: clients read
        ``usage.prompt_tokens_details.cached_tokens`` without checking for null)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclass(slots=True)
class ChatResult:
    text: str
    finish_reason: FinishReason
    #: None: the provider reported no usage (it may still bill: the cost is unknown, not zero)
    usage: Usage | None
    #: the model the provider says actually served the call (authoritative for billing)
    model: str
    upstream_request_id: str | None = None
    #: the calls the model made (``finish_reason`` "tool_calls"); ``text`` may then be empty
    tool_calls: tuple[ToolCall, ...] = ()
    #: the model declined (OpenAI's ``message.refusal``); ``text`` is then empty
    refusal: str | None = None


@dataclass(slots=True)
class StreamChunk:
    """One piece of a streamed answer. Usage, when known, arrives on the last chunks."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None
    tool_calls: tuple[ToolCallPart, ...] | None = None
    #: a piece of a refusal (OpenAI's ``delta.refusal``)
    refusal: str | None = None
    #: the model has begun to think (a vendor that streams its thinking: Ollama's
    #: ``message.thinking``). Never sent to the client and not content (a cut before the answer
    #: still falls back), but the model is writing: the first-content deadline no longer applies
    #: (a model thinking past the request timeout was failed for "no content", at an unknown
    #: cost, while it wrote all along: a review)
    thinking: bool = False

    def says_something(self) -> bool:
        """Content, a call, a refusal, an end or usage: not an empty role, filter or thinking chunk."""
        return bool(self.text or self.finish_reason or self.usage or self.tool_calls or self.refusal)
