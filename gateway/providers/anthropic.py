"""Anthropic Messages API adapter: ``POST {base}/v1/messages`` (providers.md section 3).

The mapping (body, response, stream events, errors) is in ``anthropic_wire``; this module
only talks HTTP.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from gateway import errors
from gateway.providers import anthropic_wire as wire
from gateway.providers.base import Provider, Timeouts
from gateway.providers.http import let_body_finish, post, read_error_body, read_json, with_billed_usage
from gateway.providers.sse import iter_sse
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Response
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest, ChatResult, StreamChunk

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


#: the most output tokens a model's answer may ask for (Anthropic's model table; a larger
#: ``max_tokens`` is its 400: "max_tokens: 16384 > 4096, which is the maximum allowed number of
#: output tokens"), by name prefix, the longest first; 3.7 Sonnet's 128k needs a beta header
#: the gateway does not send. Unknown models are not checked.
MAX_OUTPUT_TOKENS: tuple[tuple[str, int], ...] = tuple(
    sorted(
        {
            "claude-3-haiku": 4096,
            "claude-3-sonnet": 4096,
            "claude-3-opus": 4096,
            "claude-3-5-haiku": 8192,
            "claude-3-5-sonnet": 8192,
            "claude-3-7-sonnet": 64000,
            "claude-sonnet-4": 64000,
            "claude-haiku-4": 64000,
            "claude-opus-4": 32000,
            "claude-opus-4-5": 64000,
        }.items(),
        key=lambda item: -len(item[0]),
    )
)


#: a Claude model of the newer naming (``claude-sonnet-4-5``, ``claude-opus-4-1-20250805``) and
#: its version (4.0 for ``claude-sonnet-4-20250514``: a date is no minor version)
_VERSIONED = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:-|@|$)")
#: from this version on, Claude refuses ``temperature`` and ``top_p`` together ("`temperature`
#: and `top_p` cannot both be specified for this model. Please use only one."): Opus 4.1,
#: Sonnet and Haiku 4.5 and the models after them
_ONE_SAMPLING_KNOB = (4, 1)
_LACKS_NOTHING: frozenset[str] = frozenset()
_LACKS_THE_PAIR = frozenset({"temperature_with_top_p"})


def sampling_lacks(model: str) -> frozenset[str]:
    """``ModelOptions.model_lacks``: the pair of ``temperature`` and ``top_p`` for the models that
    refuse it; models of other names (the Claude 3 ones, a deployment's own name) take it."""
    found = _VERSIONED.match(model)
    if found is None:
        return _LACKS_NOTHING
    version = (int(found.group(1)), int(found.group(2) or 0))
    return _LACKS_THE_PAIR if version >= _ONE_SAMPLING_KNOB else _LACKS_NOTHING


def output_cap(model: str) -> int | None:
    """The model's cap from :data:`MAX_OUTPUT_TOKENS`, None when not known."""
    for prefix, limit in MAX_OUTPUT_TOKENS:
        if model.startswith(prefix):
            return limit
    return None


class AnthropicProvider:
    name = wire.PROVIDER
    #: tools, a forced call (``any`` / ``tool``) and one call at most (``disable_parallel_tool_use``);
    #: images, as base64 or URL sources; the Messages API has no seed, no penalties and no JSON
    #: mode, and its temperature is 0 to 1; blank text and blank stop sequences are its 400
    #: ("text content blocks must contain non-whitespace text", "each stop sequence must
    #: contain non-whitespace"), and so is an image of more than 5 MiB of base64 ("image exceeds
    #: 5 MB maximum"): not carried. ``temperature`` with ``top_p``: by the older models only
    #: (``model_lacks``)
    options: frozenset[str] = frozenset({
        "tools", "tool_choice", "parallel_tool_calls", "images", "image_urls", "gif_images", "tool_names",
        "temperature_with_top_p", "sampling", "sampling_with_reasoning",
    })  # fmt: skip

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        # ANTHROPIC_BASE_URL is the host (the SDK appends /v1); accept one that already has it
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._headers = {
            "x-api-key": settings.api_key or "",
            "anthropic-version": settings.api_version or API_VERSION,
            "accept": "application/json",
            **settings.headers,  # the operator's (anthropic-beta flags; a version pinned)
        }
        self._session = session
        self._timeouts = timeouts
        self._default_max_tokens = settings.default_max_tokens or wire.DEFAULT_MAX_TOKENS

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The Messages body; a request without ``max_tokens`` gets the configured default, within
        the model's cap (4,096 for the Claude 3 models: a larger one is their 400)."""
        default = min(self._default_max_tokens, output_cap(request.model) or self._default_max_tokens)
        return wire.build_body(request, stream=stream, default_max_tokens=default)

    def max_output_tokens(self, model: str) -> int | None:  # OutputLimits
        return output_cap(model)

    def model_lacks(self, model: str) -> frozenset[str]:  # ModelOptions
        return sampling_lacks(model)

    async def complete(self, request: ChatRequest) -> ChatResult:
        async with post(
            self._session,
            self.name,
            self._url,
            headers=self._headers,
            body=self._body(request, stream=False),
            timeout=self._timeouts.non_streaming(),
            classify=wire.classify,
        ) as resp:
            body = await read_json(resp, self.name, exact_if=b'"tool_use"')
            try:
                return wire.parse_message(body, request.model, resp.headers.get("request-id"))
            except errors.MalformedResponse as exc:
                raise with_billed_usage(exc, lambda: wire.usage_from(body["usage"]), lambda: body["model"]) from None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        parser = wire.StreamParser(request.model)
        started = False
        try:
            async with post(
                self._session,
                self.name,
                self._url,
                headers={**self._headers, "accept": "text/event-stream"},
                body=self._body(request, stream=True),
                timeout=self._timeouts.streaming(),
                classify=wire.classify,
            ) as resp:
                if "event-stream" not in resp.headers.get("content-type", "text/event-stream"):
                    raise await _not_a_stream(resp)
                async for event in iter_sse(resp.content):
                    chunk = parser.feed(event.event, event.data)
                    if chunk is not None:
                        started = True
                        yield chunk
                    if parser.done:
                        let_body_finish(resp)
                        return
        except (errors.UpstreamTimeout, errors.UpstreamConnectionError) as exc:
            if not started:
                raise
            raise errors.StreamCut(f"{self.name}: stream broke: {exc.message}", provider=self.name) from exc
        raise errors.StreamCut(f"{self.name}: stream ended without message_stop", provider=self.name, http_status=200)


async def _not_a_stream(resp: Response) -> errors.ProviderError:
    """A 200 answer to a streaming call that is not SSE: an error object, or garbage."""
    body, raw = await read_error_body(resp)
    if wire.error_type(body) is not None:
        return wire.classify(resp.status, resp.headers, body, raw)
    ctype = resp.headers.get("content-type")
    return errors.MalformedResponse(
        f"{wire.PROVIDER}: streaming answer is {ctype}, not text/event-stream: {raw[:200]!r}",
        provider=wire.PROVIDER,
        http_status=resp.status,
    )


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> Provider | None:
    """The Anthropic provider, or None without an API key (or when disabled)."""
    if not settings.api_key or settings.enabled is False:
        return None
    return AnthropicProvider(settings, session, timeouts)
