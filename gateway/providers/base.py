"""The provider port: a normalised request in, a normalised result or stream out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.embedding import EmbeddingRequest, EmbeddingResult
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Timeout
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest, ChatResult, StreamChunk


@dataclass(frozen=True, slots=True)
class Timeouts:
    request: float = 120.0
    connect: float = 5.0
    stream_idle: float = 60.0

    def non_streaming(self) -> Timeout:
        return Timeout(total=self.request, connect=self.connect)

    def streaming(self) -> Timeout:
        # the headers are part of the first content's wait (the request timeout, as the router's
        # start watch has it), not a silence inside the stream: an upstream that answered them
        # late (Ollama loading its model) was failed over at the idle timeout (a review)
        return Timeout(total=None, connect=self.connect, read=self.stream_idle, head=self.request)


class Provider(Protocol):
    """One upstream vendor. Errors raised are ``gateway.errors.ProviderError`` subclasses."""

    name: str
    #: what its wire format carries of ``gateway.types.CAPABILITIES``: a request that needs
    #: anything else (``ChatRequest.needs``) is not sent to this provider
    options: frozenset[str]

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One non-streaming call."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """A streaming call: an async iterator of chunks; the last ones carry finish and usage.

        Errors before the first chunk raise the same ProviderError classes as ``complete``;
        a failure after chunks were yielded raises ``StreamCut`` (or the vendor's in-stream
        error translated).
        """
        ...


@runtime_checkable
class Embeddings(Protocol):
    """Optional: a provider that makes embeddings (``POST /v1/embeddings``); it names
    ``embeddings`` in its ``options``. Errors as ``Provider.complete``'s."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One embedding call: a vector per input, in their order."""
        ...


@runtime_checkable
class OutputLimits(Protocol):
    """Optional: a provider whose models cap the tokens an answer may ask for, and that refuses a
    larger ``max_tokens`` with a 400 (which does not fall back) rather than writing less. A
    request asking for more than the candidate model's cap is not sent to it (``max_tokens``)."""

    def max_output_tokens(self, model: str) -> int | None:
        """The cap of ``model`` (the name the provider is asked), None when not known."""
        ...


@runtime_checkable
class ModelOptions(Protocol):
    """Optional: a provider some of whose models refuse, with a 400 that does not fall back, what
    its wire format carries for the others. A request that needs one of them is not sent to
    such a model."""

    def model_lacks(self, model: str) -> frozenset[str]:
        """What of ``Provider.options`` the model (the name the provider is asked) does not take."""
        ...


@runtime_checkable
class Deployments(Protocol):
    """Optional: a provider whose vendor is asked for a model by another name of the operator's
    (an Azure deployment, ``deployments`` in the config file). The adapter is still asked for the
    model (it maps the name itself); the attempt's event, its price (a price-file entry for the
    deployment), its health track and its cost line name what was called, as when a model group
    names the deployment (``Candidate.called``)."""

    def deployment(self, model: str) -> str:
        """The name the vendor is asked for ``model`` (``model`` itself when nothing maps it)."""
        ...


class FinalBatch(list[StreamChunk]):
    """A batch of ``BatchStreaming.stream_batches`` after which the stream ends normally (the
    upstream's end marker came in the same read): the gateway writes it with the end of its
    response, in one write."""

    __slots__ = ()


@runtime_checkable
class BatchStreaming(Protocol):
    """Optional: a provider that can hand over a stream a network read at a time.

    ``stream_batches`` yields the same chunks as ``stream``, with the same errors, grouped in
    non-empty lists (one per upstream read), so the gateway answers a read with one write. The
    last batch may be a ``FinalBatch`` when the adapter knows nothing but the end follows."""

    def stream_batches(self, request: ChatRequest) -> AsyncIterator[list[StreamChunk]]: ...


class ProviderFactory(Protocol):
    """Builds a provider from its settings, or says it is not configured (returns None)."""

    def __call__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> Provider | None: ...
