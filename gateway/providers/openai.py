"""OpenAI adapter: ``POST {base}/chat/completions`` and legacy ``{base}/completions``.

The mapping (body, response, stream chunks, errors) is in ``openai_wire``; this module only
talks HTTP. ``AzureProvider`` (``azure.py``) subclasses this class and changes only where the
request goes (URL, query, auth header) and the name of the chat length cap.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway import errors
from gateway.embedding import EMBEDDING_TOKENS, EMBEDDINGS, EmbeddingRequest, EmbeddingResult
from gateway.providers import embedding_wire
from gateway.providers import openai_wire as wire
from gateway.providers.base import FinalBatch, Provider, Timeouts
from gateway.providers.http import let_body_finish, post, post_json, read_error_body, with_billed_usage
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Response
from gateway.settings import ProviderSettings
from gateway.types import CAPABILITIES, ChatRequest, ChatResult, StreamChunk

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class Target:
    """Where one call goes: URL, query parameters and the JSON body."""

    url: str
    params: Mapping[str, str] | None
    body: dict[str, Any]


#: OpenAI's reasoning models that take no sampling knobs: o1, o3, o4 and gpt-5 (its chat model
#: aside), fine-tunes of them too. ``temperature`` and ``top_p`` only at their default 1, no
#: penalties: any other is their 400 ("Unsupported value: 'temperature' does not support 0.2
#: with this model. Only the default (1) value is supported."), which does not fall back, so a
#: model group starting with one ended every such request there (a review). gpt-5.1 and later
#: take them without reasoning only (``reasoning_effort`` ``none``, their default)
FIXED_SAMPLING = re.compile(r"(?:^|[-_./:])(?:o\d(?:$|[-_./:]|mini|pro)|gpt-?5(?:$|_|-(?!chat)))", re.IGNORECASE)
#: gpt-5.1 and later: the sampling knobs only without reasoning
SAMPLING_IF_NO_REASONING = re.compile(r"(?:^|[-_./:])gpt-?5\.\d", re.IGNORECASE)
#: what those models do not take (``ModelOptions.model_lacks``)
_LACKS_SAMPLING = frozenset({"sampling", "presence_penalty", "frequency_penalty"})
_LACKS_SAMPLING_WITH_REASONING = frozenset({"sampling_with_reasoning"})
_LACKS_NOTHING: frozenset[str] = frozenset()
#: OpenAI's o-series (o1, o3, o4, their mini and pro) refuse ``parallel_tool_calls`` whatever its
#: value ("Unsupported parameter: 'parallel_tool_calls' is not supported with this model."), a 400
#: that does not fall back: ``false`` (at most one call) is not carried to them, ``true`` (the
#: model may make several, its default) is left out of the body (a review)
NO_PARALLEL_TOOL_CALLS = re.compile(r"(?:^|[-_./:])o\d(?:$|[-_./:]|mini|pro)", re.IGNORECASE)
_LACKS_SAMPLING_AND_PARALLEL = _LACKS_SAMPLING | {"parallel_tool_calls"}


class OpenAIProvider:
    name = "openai"
    options = frozenset(CAPABILITIES) | {EMBEDDINGS, EMBEDDING_TOKENS}
    #: what chat calls name the length cap (legacy completions always use ``max_tokens``)
    chat_max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        self._settings = settings
        self._session = session
        # built once: the timeouts are immutable
        self._timeout = timeouts.non_streaming()
        self._stream_timeout = timeouts.streaming()
        self._base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        # built once, as the other adapters' (two dicts a call: the key and the operator's headers)
        auth = {**self.auth_headers(), **settings.headers}
        self._json_headers = {**auth, "accept": "application/json"}
        self._stream_headers = {**auth, "accept": "text/event-stream"}

    # --- what differs between OpenAI and Azure ----------------------------------------------
    def target(self, request: ChatRequest, *, stream: bool) -> Target:
        body = wire.build_body(
            request,
            model=request.model,
            stream=stream,
            chat_max_tokens_field=self.chat_max_tokens_field,
            parallel_tool_calls=self.takes_parallel_tool_calls(request),
        )
        return Target(f"{self._base}/{wire.endpoint(request)}", None, body)

    def embed_target(self, request: EmbeddingRequest) -> Target:
        return Target(f"{self._base}/embeddings", None, embedding_wire.openai_body(request, request.model))

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._settings.api_key or ''}"}

    def model_name(self, model: str) -> str:
        """The name that says which model ``model`` (the name the provider is asked) is."""
        return model

    def takes_parallel_tool_calls(self, request: ChatRequest) -> bool:
        """Whether ``parallel_tool_calls`` may be sent for ``request``'s model (see
        NO_PARALLEL_TOOL_CALLS); looked up only for a request with tools."""
        return request.tools is None or NO_PARALLEL_TOOL_CALLS.search(self.model_name(request.model)) is None

    def model_lacks(self, model: str) -> frozenset[str]:  # ModelOptions
        named = self.model_name(model)
        if FIXED_SAMPLING.search(named):
            return _LACKS_SAMPLING_AND_PARALLEL if NO_PARALLEL_TOOL_CALLS.search(named) else _LACKS_SAMPLING
        return _LACKS_SAMPLING_WITH_REASONING if SAMPLING_IF_NO_REASONING.search(named) else _LACKS_NOTHING

    # --- the port ---------------------------------------------------------------------------
    def _classify(self, status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
        return wire.classify_error(self.name, status, headers, body, raw)

    async def _call(self, target: Target) -> tuple[Any, Mapping[str, str]]:
        """A non-streaming call: its JSON answer and headers."""
        return await post_json(
            self._session,
            self.name,
            target.url,
            headers=self._json_headers,
            body=target.body,
            params=target.params,
            timeout=self._timeout,
            classify=self._classify,
        )

    async def complete(self, request: ChatRequest) -> ChatResult:
        data, headers = await self._call(self.target(request, stream=False))
        try:
            return wire.parse_response(
                data, provider=self.name, requested_model=request.model, request_id=_request_id(headers)
            )
        except errors.MalformedResponse as exc:
            raise with_billed_usage(exc, lambda: wire.parse_usage(data.get("usage")), lambda: data["model"]) from None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:  # Embeddings
        data, _ = await self._call(self.embed_target(request))
        if isinstance(data, dict) and data.get("error") is not None:
            raise wire.classify_inband_error(self.name, data)
        return embedding_wire.read_answer(
            data, request, self.name, embedding_wire.parse_openai, embedding_wire.openai_usage
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        async for batch in self.stream_batches(request):
            for chunk in batch:
                yield chunk

    async def stream_batches(self, request: ChatRequest) -> AsyncIterator[list[StreamChunk]]:
        """``stream`` one network read at a time (see ``BatchStreaming``).

        One generator reads the body and parses each read with ``wire.StreamParser``: no
        generator per layer (SSE framing, event parsing), none left suspended after ``[DONE]``."""
        target = self.target(request, stream=True)
        started = False
        try:
            async with post(
                self._session,
                self.name,
                target.url,
                headers=self._stream_headers,
                body=target.body,
                params=target.params,
                timeout=self._stream_timeout,
                classify=self._classify,
            ) as resp:
                if "event-stream" not in resp.headers.get("content-type", "text/event-stream"):
                    raise await self._not_a_stream(resp)
                parser = wire.StreamParser(self.name)
                content = resp.content
                while True:
                    piece = await content.readany()  # b"" at the end of the body
                    chunks = parser.feed(piece) if piece else parser.end()
                    if parser.done:  # before the last batch: the gateway may close us after it
                        let_body_finish(resp)
                    if chunks:
                        started = True
                        yield FinalBatch(chunks) if parser.done else chunks
                    if parser.error is not None:
                        raise parser.error
                    if parser.done:
                        return
        except (errors.UpstreamTimeout, errors.UpstreamConnectionError) as exc:
            if not started:
                raise
            raise errors.StreamCut(f"{self.name}: stream broke: {exc.message}", provider=self.name) from exc

    async def _not_a_stream(self, resp: Response) -> errors.ProviderError:
        """A 200 answer to a streaming call that is not SSE: an error object, or garbage."""
        body, raw = await read_error_body(resp)
        if isinstance(body, dict) and body.get("error") is not None:
            return wire.classify_inband_error(self.name, body)
        return errors.MalformedResponse(
            f"{self.name}: streaming answer is {resp.headers.get('content-type')}, "
            f"not text/event-stream: {raw[:200]!r}",
            provider=self.name,
            http_status=resp.status,
        )


def _request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id") or headers.get("apim-request-id")


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> Provider | None:
    """The OpenAI provider, or None without an API key (or when disabled)."""
    if not settings.api_key or settings.enabled is False:
        return None
    return OpenAIProvider(settings, session, timeouts)
