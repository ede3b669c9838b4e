"""Google Gemini adapter: ``models/{m}:generateContent`` / ``:streamGenerateContent?alt=sse``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from gateway import errors
from gateway.embedding import EMBEDDINGS, EmbeddingRequest, EmbeddingResult
from gateway.providers import embedding_wire
from gateway.providers import google_wire as wire
from gateway.providers.base import Timeouts
from gateway.providers.embedding_batches import embed_in_batches
from gateway.providers.google_thinking import effort_lacks, json_with_tools_lacks
from gateway.providers.http import (
    malformed,
    parse_json,
    post,
    post_json,
    read_error_body,
    read_json,
    with_billed_usage,
)
from gateway.providers.sse import iter_sse
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Response, Timeout
from gateway.settings import ProviderSettings
from gateway.tool_calls import whole_call_parts
from gateway.types import CAPABILITIES, ChatRequest, ChatResult, FinishReason, StreamChunk, Usage

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"
#: the most inputs one ``batchEmbedContents`` call takes
EMBED_BATCH = 100


def models_url(base_url: str | None, api_version: str | None = None) -> str:
    """``{base}/{version}/models``; a base that already ends in ``/v1`` or ``/v1beta`` is kept."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    last = base.rsplit("/", 1)[-1]
    if last in ("v1", "v1beta", "v1alpha"):
        return f"{base}/models"
    return f"{base}/{api_version or DEFAULT_API_VERSION}/models"


class GoogleProvider:
    name = wire.PROVIDER
    #: Gemini takes a 32-bit seed: a larger one is its 400 (a client error, not a fallback).
    #: Function calling: tools and tool_choice (required / one function: ``ANY`` mode) are
    #: mapped; ``parallel_tool_calls: false`` is not (Gemini has no switch to keep to one call).
    #: Images as ``inlineData``; an image by URL is not (Gemini fetches no http URL here).
    #: A function name must start with a letter or an underscore at Gemini ("tool_names"); an
    #: empty text part is its 400 ("blank_content"). A GIF is its 400 too: it takes PNG, JPEG,
    #: WebP, HEIC and HEIF ("gif_images"). ``reasoning_effort`` is a ``thinkingConfig`` on Gemini
    #: 2.5 and later, and lacked by the models before (``model_lacks``); so are tools with a JSON
    #: ``response_format`` before Gemini 3.
    options = frozenset(CAPABILITIES) - {
        "parallel_tool_calls", "image_urls", "gif_images", "tool_names", "blank_content", "reasoning_effort_level"
    } | {EMBEDDINGS}  # fmt: skip

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        if not settings.api_key:
            raise ValueError("the google provider needs an API key")
        self._session = session
        self._timeouts = timeouts
        self._models_url = models_url(settings.base_url, settings.api_version)
        self._headers = {"x-goog-api-key": settings.api_key, **settings.headers}

    def model_lacks(self, model: str) -> frozenset[str]:  # ModelOptions
        return effort_lacks(model) | json_with_tools_lacks(model)

    def _url(self, model: str, method: str) -> str:
        bare = quote(model.removeprefix("models/"), safe="/")  # a "#", "?" or space stays in the path
        if any(part in (".", "..") for part in bare.split("/")):
            # a dot segment leaves models/: the server resolves it to another resource, called with
            # this gateway's key (review)
            raise errors.InvalidRequest(
                f"{model!r} is not a model name Gemini takes (a '.' or '..' path segment)",
                param="model",
                code="invalid_value",
            )
        return f"{self._models_url}/{bare}:{method}"

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:  # Embeddings
        """Gemini takes at most :data:`EMBED_BATCH` inputs a call (its 400 "at most 100 requests
        can be in one batch"; OpenAI's clients send up to 2,048): more go in several calls, one
        after the other, within one request timeout, their vectors joined in order; a failure
        after the first is never retried (``embedding_batches``)."""
        return await embed_in_batches(self._embed_batch, request, EMBED_BATCH, self.name, self._timeouts)

    async def _embed_batch(self, request: EmbeddingRequest, timeout: Timeout) -> EmbeddingResult:
        obj, _ = await post_json(
            self._session,
            self.name,
            self._url(request.model, "batchEmbedContents"),
            headers=self._headers,
            body=embedding_wire.gemini_body(request),
            timeout=timeout,
            classify=wire.classify,
        )
        return embedding_wire.read_answer(
            obj, request, self.name, embedding_wire.parse_gemini, embedding_wire.gemini_usage
        )

    async def complete(self, request: ChatRequest) -> ChatResult:
        url = self._url(request.model, "generateContent")
        async with post(
            self._session,
            self.name,
            url,
            headers=self._headers,
            body=wire.build_body(request),
            timeout=self._timeouts.non_streaming(),
            classify=wire.classify,
        ) as resp:
            obj = await read_json(resp, self.name, exact_if=b'"functionCall"')
            request_id = resp.headers.get("x-request-id")
        try:
            if not wire.is_answer(obj):
                raise malformed(self.name, "neither candidates nor promptFeedback.blockReason")
            piece = wire.parse_response(obj)
        except errors.MalformedResponse as exc:
            raise with_billed_usage(
                exc, lambda: wire.map_usage(obj["usageMetadata"]), lambda: obj["modelVersion"]
            ) from None
        if (failed := wire.tool_call_failure(piece, piece.usage, piece.model)) is not None:
            raise failed
        return ChatResult(
            text=piece.text,
            finish_reason=piece.finish() or "stop",
            usage=piece.usage,
            model=piece.model or request.model,
            upstream_request_id=request_id,
            tool_calls=tuple(piece.tool_calls),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        url = self._url(request.model, "streamGenerateContent")
        started = False
        try:
            async with post(
                self._session,
                self.name,
                url,
                headers=self._headers,
                body=wire.build_body(request),
                timeout=self._timeouts.streaming(),
                classify=wire.classify,
                params={"alt": "sse"},
            ) as resp:
                if "event-stream" not in resp.headers.get("content-type", "text/event-stream") or await _json_body(
                    resp
                ):
                    raise await self._not_a_stream(resp)
                async for chunk in self._chunks(resp, request.model):
                    started = True
                    yield chunk
        except (errors.UpstreamTimeout, errors.UpstreamConnectionError) as exc:
            if not started:
                raise
            raise errors.StreamCut(f"{self.name}: stream broke: {exc.message}", provider=self.name) from exc

    async def _not_a_stream(self, resp: Response) -> errors.ProviderError:
        """A 200 answer to ``alt=sse`` that is not SSE: a google.rpc.Status error object (judged
        by its own ``code``, e.g. 429 RESOURCE_EXHAUSTED), or garbage."""
        body, raw = await read_error_body(resp)
        if isinstance(body, list) and len(body) == 1:  # the stream's array form: [{"error": ...}]
            body = body[0]
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else resp.status
            return wire.classify(status, resp.headers, body, raw)
        return malformed(self.name, f"streaming answer is {resp.headers.get('content-type')}, not SSE: {raw[:200]!r}")

    async def _chunks(self, resp: Response, requested: str) -> AsyncIterator[StreamChunk]:
        finish: FinishReason | None = None
        finishing: wire.Piece | None = None
        usage: Usage | None = None
        unreadable = False  # a usage report could not be read: the stream's usage is unknown
        model: str | None = None
        has_call = False
        calls = 0  # the index of the next call: calls are counted across the whole stream
        async for event in iter_sse(resp.content):
            if event.data.strip() == "[DONE]":
                continue
            try:
                obj = parse_json(event.data, exact_if=b'"functionCall"')
            except ValueError as exc:
                raise malformed(self.name, f"stream event is not JSON: {event.data[:200]!r}") from exc
            # every event is the answer's, also after a finishReason: Gemini has put one on every
            # event of a stream, and sends the full usage in the last event, which may follow the
            # finish (providers.md 4.4: the final usageMetadata has the full counts). Once stopped
            # at the first finish, a stream gave the client its first words and billed its prompt
            try:
                piece = wire.parse_response(obj)
            except errors.ProviderError as exc:
                if finishing is None or usage is None:
                    raise
                # the answer had finished, with its usage: an error after it ends the stream,
                # not the answer (it failed the call, unpriced, in a re-test)
                log.warning("%s: an error event after the answer finished ended its stream: %s", self.name, exc)
                break
            model = piece.model or model
            # usage counts are cumulative: a later report with less (a prompt-only one after the
            # full counts) lowered the bill to the prompt in a re-test; the largest is the bill
            if piece.usage is not None and (usage is None or piece.usage.total_tokens >= usage.total_tokens):
                usage = piece.usage
            # the last report decides: an unreadable final one (with the answer's counts) left the
            # prompt-only report of the first event as the bill, the answer's tokens free (a
            # review); an unreadable one before a readable final one changes nothing (a re-test)
            if piece.usage is not None or piece.usage_unreadable:
                unreadable = piece.usage_unreadable
            has_call = has_call or piece.has_function_call
            if piece.raw_finish is not None:
                finishing = piece
            if piece.tool_calls:
                parts = whole_call_parts(piece.tool_calls, calls)  # each functionCall comes whole
                calls += len(parts)
                yield StreamChunk(text=piece.text, model=model or requested, tool_calls=parts)
            elif piece.text:
                yield StreamChunk(text=piece.text, model=model or requested)
        if finishing is not None:
            if (failed := wire.tool_call_failure(finishing, None if unreadable else usage, model)) is not None:
                raise failed
            finish = finishing.finish(has_function_call=has_call)
        if finish is None:
            raise errors.StreamCut(f"{self.name}: stream ended without a finishReason", provider=self.name)
        yield StreamChunk(finish_reason=finish, usage=None if unreadable else usage, model=model or requested)


async def _json_body(resp: Response) -> bool:
    """Whether an answer labelled SSE is a JSON document (``[{"error": {...}}]``, which Google's
    SDK accepts): the SSE framer dropped it as lines without ``data:``, and an overload or a
    quota error became a cut stream, billed at an unknown cost and not retried."""
    first = await resp.content.readany()
    resp.content.unread(first)
    return first.lstrip()[:1] in (b"[", b"{")


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> GoogleProvider | None:
    if settings.enabled is False or not settings.api_key:
        return None
    return GoogleProvider(settings, session, timeouts)
