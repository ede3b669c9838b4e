"""One embedding attempt in several upstream calls (Gemini takes at most 100 inputs a call): one
deadline for them all, their vectors joined in order, and what a failure after the first means.

A failure after a first call was answered ends the attempt as what it is, the vendor's 400 (the
client's input), 429 or 5xx, as the same failure of a single call would (a 400 among the later
inputs was a ``stream_cut``: a provider failure, and five such calls of one tenant opened the
provider's circuit for every tenant; a 429 reached the client as a 502 without its
``retry-after``: a review). But it is neither retried nor tried elsewhere, which would embed
and bill the first calls' inputs again, and it is billed for what the calls before it embedded,
plus what the failing call's own answer reports (a 200 it could not read), or at an unknown cost
when any of them did not say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from gateway import errors
from gateway.embedding import EmbeddingRequest, EmbeddingResult
from gateway.providers.base import Timeouts
from gateway.providers.http import malformed, with_billed_usage
from gateway.providers.upstream_http import CLIENT_GONE
from gateway.providers.upstream_response import Timeout
from gateway.types import Usage

log = logging.getLogger(__name__)

EmbedBatch = Callable[[EmbeddingRequest, Timeout], Awaitable[EmbeddingResult]]


async def embed_in_batches(
    embed_batch: EmbedBatch, request: EmbeddingRequest, size: int, provider: str, timeouts: Timeouts
) -> EmbeddingResult:
    """``request``'s texts ``size`` at a time, one call after the other, all within the request
    timeout (each call had its own: 21 calls of 2,048 inputs could take 21 times the timeout, and
    the SDK's retries of its own timeout were billed again: a review)."""
    texts = request.texts or ()
    if len(texts) <= size:
        return await embed_batch(request, timeouts.non_streaming())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.request
    results: list[EmbeddingResult] = []
    for start in range(0, len(texts), size):
        part = replace(request, texts=texts[start : start + size])
        try:
            if results and (gone := CLIENT_GONE.get()) is not None and gone():
                # nobody reads the answer: the calls left would be billed for nothing (a client
                # that timed out on 2,048 inputs, and retried, paid for every call each time)
                raise errors.ClientGone(f"{provider}: the client left")
            left = deadline - loop.time()
            if left <= 0:
                raise errors.CallTimedOut(
                    f"{provider}: the request timeout ({timeouts.request:g}s) ran out", provider=provider
                )
            results.append(await embed_batch(part, Timeout(total=left, connect=timeouts.connect)))
        except Exception as exc:
            if not results:
                raise
            end = start + len(part.texts or ())
            cause: errors.ProviderError | errors.ClientGone
            if isinstance(exc, errors.UpstreamTimeout):
                # a later call has what the calls before left of the request timeout, not all of
                # it: the request too large for it, which says nothing of the provider's health
                # (as a ``timeout``, five such calls of one tenant opened its circuit for every call)
                cause = errors.CallTimedOut(
                    f"{provider}: the request timeout ({timeouts.request:g}s) ran out while it waited",
                    provider=provider,
                )
                cause.billed_unseen = exc.billed_unseen  # sent whole: billed at a cost no one saw
            elif not isinstance(exc, errors.ProviderError | errors.ClientGone):  # a bug: the calls made still cost
                log.error("%s: embedding inputs %d to %d failed", provider, start, end - 1, exc_info=exc)
                cause = errors.UpstreamServerError(
                    f"{provider}: adapter failure ({type(exc).__name__})", provider=provider
                )
            else:
                cause = exc
            error = _after_first(cause, provider, start, end, len(texts), results)
            if error is exc:
                raise
            raise error from exc
    usage = _summed([r.usage for r in results])
    vectors = [v for r in results for v in r.vectors]
    if len(set(map(len, vectors))) > 1:  # each call's are of one size, but another call's? (a re-test)
        unequal = malformed(provider, "embeddings of different lengths from one model's calls")
        raise _final(with_billed_usage(unequal, lambda: usage))
    return EmbeddingResult(vectors, usage, results[0].model)


def _summed(usages: list[Usage | None]) -> Usage | None:
    """The calls' input tokens together; None (unknown) when any call did not say."""
    return None if None in usages else Usage(prompt_tokens=sum(u.prompt_tokens for u in usages if u is not None))


def _final(error: errors.ProviderError) -> errors.ProviderError:
    """``error`` ends the call: neither retried nor tried elsewhere, nor left to the SDK's own
    retry (``x-should-retry: false``), as each would embed and bill the first calls' inputs again."""
    error.retryable = False  # type: ignore[misc]
    error.fallback = False  # type: ignore[misc]
    error.client_should_retry = False  # type: ignore[misc]
    return error


def _after_first(
    cause: errors.ProviderError | errors.ClientGone,
    provider: str,
    start: int,
    end: int,
    total: int,
    results: list[EmbeddingResult],
) -> errors.ProviderError:
    what = f"{provider}: inputs {start} to {end - 1} of {total} failed, after the first {start} were embedded"
    error: errors.ProviderError
    if isinstance(cause, errors.ClientGone):
        error = errors.CallStopped(f"{what}: the client left", provider=provider)
    elif isinstance(cause, errors.ConnectionsBusy):  # nothing sent, but the calls before were
        error = errors.CallStopped(f"{what}: {_words(cause, provider)}", provider=provider)
    else:
        error = cause
        error.message = f"{what}: {_words(cause, provider)}"
        error.args = (error.message,)
    # the failing call's own answer: a 200 it could not read is billed at the usage it reports,
    # or at a cost no one saw (its usage unreadable, a timeout after it had the whole request, a
    # body cut: the recorder's own rule for a ``stream_cut``)
    own = cause.usage if isinstance(cause, errors.ProviderError) else None
    unseen = own is None and (error.billed_unseen or error.outcome == "stream_cut")
    usage = None if unseen else _summed([r.usage for r in results] + ([own] if own is not None else []))
    error.usage, error.billed_unseen = usage, usage is None
    return _final(error)


def _words(cause: errors.GatewayError, provider: str) -> str:
    return cause.message.removeprefix(f"{provider}: ")
