"""Try providers in order: retry rate limits on one, fall back to the next, record every attempt."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Generic, Protocol, TypeVar, cast

from gateway import errors
from gateway.embedding import EmbeddingRequest, EmbeddingResult
from gateway.events import UsageEvent
from gateway.providers.base import BatchStreaming, Embeddings, FinalBatch, Provider
from gateway.providers.upstream_http import CLIENT_GONE, QUEUED, WIRE, Wire
from gateway.routing.catalog import Candidate, ModelCatalog, family_of
from gateway.routing.retry import RetryBudget, RetryPolicy, Sleep, call_with_retry
from gateway.types import ChatRequest, ChatResult, StreamChunk, Usage
from gateway.usage import CANCELLED_CALL, AttemptFacts, CallContext, UsageRecorder

log = logging.getLogger(__name__)

T = TypeVar("T")
#: what a call asks: a chat or text completion, or embeddings
Q = TypeVar("Q", ChatRequest, EmbeddingRequest)
#: what a call's serving attempt hands back
R = TypeVar("R", ChatResult, EmbeddingResult)

_CANDIDATE_CACHE_SIZE = 1024


class Circuits(Protocol):
    """The providers' circuit breakers as the router asks them (``HealthView``)."""

    def gate(self, provider: str) -> bool:
        """May an attempt be sent to ``provider`` now? False skips it (an open circuit); in
        half-open, True takes the one probe's place."""
        ...

    def peek(self, provider: str) -> bool:
        """What :meth:`gate` would say now, taking nothing."""
        ...

    def reopens_in(self, provider: str) -> float | None:
        """Seconds until an open circuit lets a probe through; None when it is not open."""
        ...


class _NoCircuits:
    """Every provider may always be tried (no health view)."""

    def gate(self, provider: str) -> bool:
        return True

    def peek(self, provider: str) -> bool:
        return True

    def reopens_in(self, provider: str) -> float | None:
        return None


#: when every attempt failed the same way, the answer is that failure's (OpenAI's status and
#: code: an SDK raises RateLimitError for 429, NotFoundError for 404); otherwise 502, or 503
#: when every failure was a rate limit or an overload
_ALL_FAILED: dict[frozenset[str], tuple[int, str | None, str | None]] = {
    frozenset({"rate_limited"}): (429, "rate_limit_exceeded", "rate_limit_error"),
    frozenset({"quota_exhausted"}): (429, "insufficient_quota", "insufficient_quota"),
    # some out of credit, the others rate limited (a Gemini model's daily quota): a wait helps
    frozenset({"quota_exhausted", "rate_limited"}): (429, "rate_limit_exceeded", "rate_limit_error"),
    frozenset({"model_not_found"}): (404, "model_not_found", "invalid_request_error"),
    frozenset({"timeout"}): (504, None, None),
}
_THROTTLED = frozenset({"rate_limited", "overloaded"})
#: how a 400 names a need (``ChatRequest.needs``) that is not just a field being set
_NEED_WORDS = {
    "temperature": "'temperature' above 1",
    "tool_choice": "'tool_choice' required (or a forced function)",
    "parallel_tool_calls": "'parallel_tool_calls' false",
    "images": "An image ('image_url' part)",
    "image_urls": "An image by http(s) URL (send its bytes as a data URL instead)",
    "gif_images": "A GIF image (send it as PNG, JPEG or WebP)",
    "large_images": "An image of more than 5 MiB of base64",
    "tool_names": "A function name starting with a digit or '-'",
    "blank_content": "An empty or whitespace-only user message (or prompt)",
    "blank_stop": "A stop sequence that is empty or only whitespace",
    "temperature_with_top_p": "'temperature' with 'top_p' (set only one)",
    "sampling": "'temperature' or 'top_p' other than 1",
    "sampling_with_reasoning": "'temperature' or 'top_p' other than 1 with 'reasoning_effort'",
    "reasoning_effort_level": "A 'reasoning_effort' other than none, minimal, low, medium, high or xhigh",
    "embeddings": "Making embeddings",
    "embedding_tokens": "Input as token ids (send the text instead)",
    "tools_with_response_format": "A JSON 'response_format' together with 'tools'",
}
#: the request field a need is about, where it is not a field of its own name
_NEED_PARAMS = {
    "images": "messages", "image_urls": "messages", "gif_images": "messages", "large_images": "messages",
    "tool_names": "tools", "blank_content": "messages",
    "blank_stop": "stop", "temperature_with_top_p": "top_p", "sampling": "temperature",
    "sampling_with_reasoning": "temperature", "reasoning_effort_level": "reasoning_effort",
    "embeddings": "model", "embedding_tokens": "input", "tools_with_response_format": "response_format",
}  # fmt: skip
#: failures that may pass: a client's retry later can succeed
_TRANSIENT = frozenset(
    {"rate_limited", "overloaded", "timeout", "connection_error", "upstream_error", "malformed_response", "stream_cut"}
)
#: what ends an attempt before it is sent: the adapter cannot put the request to its vendor
#: (the client's error, which the API's checks let pass), every connection to the provider was
#: busy (the next is tried), the client left (the call ends)
_NOT_SENT = (errors.InvalidRequest, errors.ConnectionsBusy, errors.ClientGone)


@dataclass(slots=True)
class Served(Generic[R]):
    """A finished non-streaming call."""

    result: R
    provider: str
    provider_model: str
    attempts: int
    event: UsageEvent
    #: what the failed attempts before it cost (see ``_Attempts.billed``)
    before: _Billed | None = None

    @property
    def cost(self) -> Decimal | None:
        """The call's cost: the serving attempt's, plus what earlier attempts the providers bill
        cost (None, unpriced, when any of them is unknown)."""
        return _total(self.event.cost_usd, self.before)


@dataclass(slots=True)
class _Billed:
    """What a call's failed attempts cost that their providers bill (a stream cut after the
    provider started, a 200 answer that could not be read, ...): the known costs' sum, and
    whether any is unknown. The headers and the cost line showed the serving attempt's cost
    alone."""

    known: Decimal = Decimal(0)
    unknown: bool = False

    def add(self, event: UsageEvent) -> None:
        """Count a billable attempt's cost."""
        if event.cost_usd is None:
            self.unknown = True
        else:
            self.known += event.cost_usd


def _total(cost: Decimal | None, before: _Billed | None) -> Decimal | None:
    if before is None:
        return cost
    if cost is None or before.unknown:
        return None
    return cost + before.known


@dataclass(slots=True)
class _Attempts:
    count: int = 0
    failures: list[errors.ProviderError] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: the failed attempts' billed costs (None while none was billed)
    billed: _Billed | None = None
    #: a cancelled attempt wrote the call's cost line
    cancel_logged: bool = False
    #: the call's cost when an attempt in flight was cancelled (that attempt's unknown cost in it)
    cancel_cost: Decimal | None = Decimal(0)

    def charge(self, exc: errors.GatewayError) -> None:
        """``exc`` ends the call: it carries what the billed attempts cost and how many there were."""
        exc.call_cost = _total(Decimal(0), self.billed)
        exc.call_attempts = self.count


class Router:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        catalog: ModelCatalog,
        recorder: UsageRecorder,
        *,
        priority: list[str],
        policy: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        circuits: Circuits | None = None,
        first_content_timeout: float | None = None,
    ) -> None:
        """``first_content_timeout``: how long a stream may take to its first content (the
        request timeout; None: no limit). ``circuits``: the providers' circuit breakers (the
        health view sets its own, ``gateway.health.plugin``); none: every provider may be tried."""
        self._starts = _StartWatch(first_content_timeout)
        self.providers = providers
        self.catalog = catalog
        self.recorder = recorder
        self.priority = priority
        self.policy = policy
        self._sleep = sleep
        self._rng = rng
        self.circuits: Circuits = circuits or _NoCircuits()
        self.native_first = True
        self._candidates: dict[tuple[object, ...], list[Candidate]] = {}

    @property
    def first_content_timeout(self) -> float | None:
        """How long a stream may take to its first content (None: no limit)."""
        return self._starts.seconds

    @first_content_timeout.setter
    def first_content_timeout(self, seconds: float | None) -> None:
        self._starts.seconds = seconds

    def candidates(self, model: str, pinned: str | None) -> list[Candidate]:
        """The catalog's answer, memoised: it depends only on the arguments, the priority, the
        configured providers and ``native_first`` (all part of the key), and the catalog's
        groups, which never change after start-up. Errors are not cached."""
        key = (model, pinned, self.native_first, tuple(self.priority), tuple(self.providers))
        found = self._candidates.get(key)
        if found is None:
            listed = self.catalog.candidates(
                model, priority=self.priority, configured=self.providers, pinned=pinned, native_first=self.native_first
            )
            found = [self._as_asked(candidate) for candidate in listed]
            if len(self._candidates) >= _CANDIDATE_CACHE_SIZE:  # model names come from clients
                self._candidates.clear()
            self._candidates[key] = found
        return list(found)

    def admit(self, model: str, pinned: str | None, providers: frozenset[str], *, same_model: bool = False) -> None:
        """Raise what :meth:`_route` would for a key that may use only ``providers``: checked before
        the budget and rate-limit checks, so such a refusal spends neither (a review)."""
        candidates = self.candidates(model, pinned)
        _within(_same_model(candidates, model) if same_model else candidates, providers, model)

    def _as_asked(self, candidate: Candidate) -> Candidate:
        """The candidate with the name its vendor is asked (``Deployments``: ``gpt-4o`` -> Azure's
        ``prod-gpt4o``), which its events name as those of a model group naming the deployment:
        a review found a price-file entry for the deployment ignored (billed at the built-in
        rate, 13x) and no event saying which deployment served."""
        # Deployments, looked up without isinstance (a runtime protocol check costs ~1 µs)
        deployment: Callable[[str], str] | None = getattr(self.providers[candidate.provider], "deployment", None)
        if deployment is None:
            return candidate
        name = deployment(candidate.model)
        return candidate if name == candidate.model else Candidate(candidate.provider, candidate.model, name)

    # --- the attempt loop shared by both kinds of call ---------------------------------------------
    async def _route(
        self,
        ctx: CallContext,
        template: Q,
        pinned: str | None,
        attempt: Callable[[CallContext, Provider, Q, Candidate, _Attempts], Awaitable[T]],
        *,
        stream: bool,
        same_model: bool = False,
    ) -> T:
        """Try candidates in order (skipping open circuits), each with retries; fall back on
        errors that allow it; raise one error naming every attempt when all fail.
        ``same_model``: only the candidates that serve the model asked for (``_same_model``)."""
        candidates = self.candidates(ctx.requested_model, pinned)
        if same_model:
            candidates = _same_model(candidates, ctx.requested_model)
        if ctx.providers is not None:  # the key's providers only (``gateway/api/access.py``)
            candidates = _within(candidates, ctx.providers, ctx.requested_model)
        needs = template.needs()
        if needs:
            candidates = self._carrying(candidates, needs, ctx)
        if template.max_tokens is not None:
            candidates = self._within_limits(candidates, template.max_tokens, ctx.requested_model)
        budget = RetryBudget(self.policy.budget_seconds)
        attempts = _Attempts()
        for candidate in candidates:
            if not self.circuits.gate(candidate.provider):
                attempts.skipped.append(candidate.provider)
                continue
            provider = self.providers[candidate.provider]
            request = template.for_provider(candidate.model, stream)

            one_attempt = partial(attempt, ctx, provider, request, candidate, attempts)
            try:
                return await call_with_retry(
                    one_attempt,
                    policy=self.policy,
                    budget=budget,
                    sleep=self._sleep,
                    rng=self._rng,
                    # a retry asks the circuit again: before its wait (it may have opened on this
                    # very error), and when it is sent (it may have opened during the wait, and
                    # in half-open a retry must be the one probe, or give way to it)
                    keep_going=partial(self._may_retry, candidate.provider),
                    may_send=partial(self.circuits.gate, candidate.provider),
                )
            except errors.ProviderError as exc:
                if not exc.fallback:
                    attempts.charge(exc)
                    raise
            except errors.InvalidRequest as exc:
                if attempts.count:  # the fallback's adapter cannot put it: the attempts before it cost
                    attempts.charge(exc)
                    UsageRecorder.log_cost(ctx, candidate.provider, candidate.called, exc.call_cost)
                raise
            except errors.ClientGone:
                log.info("request %s: the client left before attempt %d was sent", ctx.request_id, attempts.count + 1)
                UsageRecorder.log_cost(ctx, candidate.provider, candidate.called, _total(Decimal(0), attempts.billed))
                raise
            except asyncio.CancelledError:
                if not attempts.cancel_logged:
                    # cancelled between attempts (a stop during a retry's wait): no attempt to
                    # record, but the call's one cost line, what its attempts cost (a review
                    # found such calls with no line and nothing saying they were cut off)
                    log.info("request %s cancelled between attempts, after %d", ctx.request_id, attempts.count)
                    UsageRecorder.log_cost(
                        ctx, candidate.provider, candidate.called, _total(Decimal(0), attempts.billed)
                    )
                if (note := CANCELLED_CALL.get()) is not None:
                    cancelled = attempts.cancel_logged
                    note.cost = attempts.cancel_cost if cancelled else _total(Decimal(0), attempts.billed)
                    note.attempts = attempts.count
                    note.billed = cancelled or attempts.billed is not None
                raise
        failed = self._all_failed(ctx, candidates, attempts)
        failed.cost = _total(Decimal(0), attempts.billed)
        raise failed

    def _carrying(self, candidates: list[Candidate], needs: list[str], ctx: CallContext) -> list[Candidate]:
        """The candidates whose provider carries all the request needs (``Provider.options``): an
        option is never dropped or bent on the way; a request none of them can carry is a 400."""
        able = [c for c in candidates if not self._lacks(c, needs)]
        if able or not candidates:
            return able
        missing = next(n for n in needs if any(n in self._lacks(c, needs) for c in candidates))
        serving = ", ".join(dict.fromkeys(c.provider for c in candidates))
        what = _NEED_WORDS.get(missing) or f"'{missing}'"
        param = _NEED_PARAMS.get(missing, missing)
        if param == "messages" and ctx.endpoint == "completions":  # the legacy endpoint's are its prompt
            param, what = "prompt", what.replace("user message (or prompt)", "prompt")
        raise errors.InvalidRequest(
            f"{what} is not supported by the providers that serve model {ctx.requested_model!r} here ({serving})",
            param=param,
            code="unsupported_parameter",
        )

    def _lacks(self, candidate: Candidate, needs: list[str]) -> set[str]:
        """What of ``needs`` the candidate's provider does not carry (``Provider.options``), or
        its model does not take (``ModelOptions``)."""
        provider = self.providers[candidate.provider]
        lacking = set(needs).difference(provider.options)
        # ModelOptions, looked up without isinstance (a runtime protocol check costs ~1 µs)
        model_lacks: Callable[[str], frozenset[str]] | None = getattr(provider, "model_lacks", None)
        if model_lacks is not None:
            lacking.update(model_lacks(candidate.model).intersection(needs))
        return lacking

    def _within_limits(self, candidates: list[Candidate], max_tokens: int, model: str) -> list[Candidate]:
        """The candidates whose model may be asked for ``max_tokens`` (``OutputLimits``): a vendor
        that refuses more than its model writes is not asked, and the request is never cut down
        to fit; a request none of them takes is a 400."""
        able = []
        for candidate in candidates:
            # OutputLimits, looked up without isinstance (a runtime protocol check costs ~1 µs)
            limits: Callable[[str], int | None] | None = getattr(
                self.providers[candidate.provider], "max_output_tokens", None
            )
            limit = limits(candidate.model) if limits is not None else None
            if limit is None or max_tokens <= limit:
                able.append(candidate)
        if able or not candidates:
            return able
        serving = ", ".join(dict.fromkeys(c.provider for c in candidates))
        raise errors.InvalidRequest(
            f"'max_tokens' {max_tokens} is above what the models that serve {model!r} here can write ({serving})",
            param="max_tokens",
            code="unsupported_value",
        )

    def _may_retry(self, provider: str) -> bool:
        """Whether a request may try ``provider`` again, asked before the retry's wait: its
        circuit, with the attempt that just failed counted (its event may still wait for the next
        loop turn to reach the health view); without taking a half-open probe's place, which the
        retry takes when it is sent (``Circuits.gate``)."""
        self.recorder.flush_observers()
        return self.circuits.peek(provider)

    # --- non-streaming ---------------------------------------------------------------------------
    async def complete(self, ctx: CallContext, template: ChatRequest, pinned: str | None = None) -> Served[ChatResult]:
        return await self._route(ctx, template, pinned, self._attempt, stream=False)

    async def _attempt(
        self, ctx: CallContext, provider: Provider, request: ChatRequest, candidate: Candidate, attempts: _Attempts
    ) -> Served[ChatResult]:
        return await self._call(ctx, partial(provider.complete, request), candidate, attempts)

    # --- embeddings --------------------------------------------------------------------------------
    async def embed(
        self, ctx: CallContext, template: EmbeddingRequest, pinned: str | None = None
    ) -> Served[EmbeddingResult]:
        """An embedding call: the providers that serve the model itself (``gateway.embedding``)."""
        return await self._route(ctx, template, pinned, self._embed_attempt, stream=False, same_model=True)

    async def _embed_attempt(
        self,
        ctx: CallContext,
        provider: Provider,
        request: EmbeddingRequest,
        candidate: Candidate,
        attempts: _Attempts,
    ) -> Served[EmbeddingResult]:
        embeds: Embeddings = cast(Embeddings, provider)  # it names "embeddings" in its options
        return await self._call(ctx, partial(embeds.embed, request), candidate, attempts)

    async def _call(
        self, ctx: CallContext, call: Callable[[], Awaitable[R]], candidate: Candidate, attempts: _Attempts
    ) -> Served[R]:
        """One non-streaming attempt, recorded whatever its end."""
        _client_still_there()
        attempts.count += 1
        number = attempts.count
        started = time.monotonic()
        QUEUED.set(0.0)
        try:
            result = await call()
        except BaseException as exc:
            failure = self._failed(ctx, number, candidate, exc, started, attempts)
            if failure is exc:
                raise
            raise failure from exc
        latency = _latency_ms(started)
        event = self.recorder.record(
            ctx,
            AttemptFacts(
                number=number,
                provider=candidate.provider,
                provider_model=candidate.called,
                outcome="success",
                latency_ms=latency,
                ttft_ms=latency,
                http_status=200,
                served_model=result.model,
                usage=result.usage,
            ),
        )
        return Served(result, candidate.provider, candidate.called, number, event, attempts.billed)

    # --- streaming ---------------------------------------------------------------------------------
    async def open_stream(self, ctx: CallContext, template: ChatRequest, pinned: str | None = None) -> StreamSession:
        """Find a provider whose stream starts; fall back freely until then."""
        return await self._route(ctx, template, pinned, self._start_stream, stream=True)

    async def _start_stream(
        self, ctx: CallContext, provider: Provider, request: ChatRequest, candidate: Candidate, attempts: _Attempts
    ) -> StreamSession:
        _client_still_there()
        attempts.count += 1
        number = attempts.count
        started = time.monotonic()
        QUEUED.set(0.0)
        WIRE.set(wire := Wire())
        iterator = _batches(provider, request)
        head: list[StreamChunk] = []
        deadline = self._starts.begin()
        try:
            # hold back empty role/filter chunks: nothing reaches the client before real content
            while True:
                batch = await iterator.__anext__()
                head = batch if not head else type(batch)(head + batch)  # a FinalBatch stays one
                if any(chunk.says_something() for chunk in batch):
                    break
                if deadline is not None and any(chunk.thinking for chunk in batch):
                    self._starts.end(deadline)  # the model writes: no deadline for its first content
                    deadline = None
        except StopAsyncIteration:
            pass
        except BaseException as exc:
            error: BaseException = exc
            if deadline is not None and deadline.expired(exc):
                error = _first_content_timeout(candidate.provider, self.first_content_timeout or 0.0, wire)
            await _aclose(iterator)
            failure = self._failed(ctx, number, candidate, error, started, attempts)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self._starts.end(deadline)
        started += QUEUED.get()  # the wait for a free connection is the gateway's
        ttft = (time.monotonic() - started) * 1000.0
        if (note := CANCELLED_CALL.get()) is not None:
            note.stream_open = True
        return StreamSession(self.recorder, ctx, candidate, number, started, ttft, head, iterator, attempts.billed)

    # --- helpers -------------------------------------------------------------------------------------
    def _failed(
        self,
        ctx: CallContext,
        number: int,
        candidate: Candidate,
        exc: BaseException,
        started: float,
        attempts: _Attempts,
    ) -> BaseException:
        """Record a failed attempt's event and return what to raise: the ProviderError it means,
        or the cancellation itself (the caller went away mid-call; the provider may still bill,
        so the attempt is recorded as cancelled and unpriced, never dropped)."""
        if isinstance(exc, _NOT_SENT):  # no attempt was made: no event, not counted
            attempts.count -= 1
            if isinstance(exc, errors.ConnectionsBusy):  # the next provider is tried
                attempts.failures.append(exc)
            return exc
        latency = _latency_ms(started)
        if isinstance(exc, asyncio.CancelledError):
            facts = AttemptFacts(
                number=number, provider=candidate.provider, provider_model=candidate.called,
                outcome="cancelled", latency_ms=latency, incomplete=True,
            )  # fmt: skip
            event = self.recorder.record(ctx, facts)
            # the call's one cost line (a stop's timeout cancelled a non-streaming call without
            # it: a docs review); a stream already open logs its own (api/completions.py)
            attempts.cancel_cost = _total(event.cost_usd, attempts.billed)
            UsageRecorder.log_cost(ctx, candidate.provider, candidate.called, attempts.cancel_cost)
            attempts.cancel_logged = True
            return exc
        error = _as_provider_error(exc, candidate.provider)
        event = self.recorder.record(
            ctx,
            AttemptFacts(
                number=number,
                provider=candidate.provider,
                provider_model=candidate.called,
                outcome=error.outcome,  # type: ignore[arg-type]
                latency_ms=latency,
                usage=error.usage,
                billed=error.billed_unseen,
                served_model=error.served_model,
                # a stream cut before its first content ended before the provider finished, as
                # one cut later does (it was not, and v_cost_daily's incomplete_calls missed it)
                incomplete=isinstance(error, errors.StreamCut),
                http_status=error.http_status,
                error_code=error.recorded_code,
                error_message=error.message,
            ),
        )
        attempts.failures.append(error)
        if event.billable:
            attempts.billed = attempts.billed or _Billed()
            attempts.billed.add(event)
        return error

    def _all_failed(
        self, ctx: CallContext, candidates: list[Candidate], attempts: _Attempts
    ) -> errors.AllProvidersFailed:
        parts = []
        for error in attempts.failures:
            status = f" HTTP {error.http_status}" if error.http_status else ""
            parts.append(f"{error.provider}: {error.outcome}{status}{_why(error)}")
        parts += [f"{p}: skipped (circuit open)" for p in attempts.skipped]
        summary = "; ".join(parts) or "no attempt was made"
        outcomes = {e.outcome for e in attempts.failures}
        http_status, code, kind = _ALL_FAILED.get(frozenset(outcomes), (502, None, None))
        if attempts.failures and all(isinstance(e, errors.ConnectionsBusy) for e in attempts.failures):
            code = errors.ConnectionsBusy.code  # nothing was sent: the gateway's own limit
        elif attempts.failures and all(isinstance(e, errors.ToolCallFailed) for e in attempts.failures):
            code = errors.ToolCallFailed.code  # the model's failed tool calls: not the providers'
        if http_status == 502 and (outcomes <= _THROTTLED if outcomes else attempts.skipped):
            http_status = 503  # throttled everywhere, or every circuit open: unavailable for now
        cannot = attempts.failures and all(isinstance(e, errors.ModelCannotServe) for e in attempts.failures)
        if cannot and not attempts.skipped:
            # every model tried lacks what the request asks ("llama3 does not support tools"):
            # the request's own 400, not a 502 the SDKs take for a server error and retry (a review)
            http_status, code, kind = 400, errors.ModelCannotServe.code, errors.ModelCannotServe.type
        failed = errors.AllProvidersFailed(
            f"All providers failed for model {ctx.requested_model!r} after {attempts.count} attempts: {summary}",
            attempts=attempts.failures,
            status=http_status,
            code=code,
            type=kind,
            # every provider refused for good (quota, keys, model), or the gateway has retried
            # or fallen back already (two attempts or more reached providers): a client's retry
            # on top multiplies the calls, and what the vendors bill of them (the OpenAI SDKs
            # retried every such 429, 502 and 504 twice: a review counted 45 upstream calls for
            # one create() with every provider rate limited). Nor after an attempt its provider
            # bills (a timeout after it had the whole request, an answer that could not be read,
            # a stream cut): the SDKs' two retries of one such 504 billed three calls (a
            # review). One free attempt that reached its provider (a 5xx blip of a model only
            # one provider serves, which the gateway does not retry there), or nothing sent
            # (connections refused or busy, circuits open): the client may come back, after
            # ``retry-after`` when known
            client_should_retry=(
                False
                if (_permanent(outcomes) and not attempts.skipped)
                or _sent(attempts.failures) >= 2
                or _costs(attempts.billed)
                else None
            ),
        )
        if cannot:
            failed.param = next((e.param for e in attempts.failures if e.param), None)
        # every circuit open: the client may come back when the first lets a probe through (the
        # 503 said nothing, and the SDK retried at 0.5 to 8 s into a 30 s cool-down: review)
        if not attempts.failures:
            waits = [w for p in attempts.skipped if (w := self.circuits.reopens_in(p)) is not None]
            failed.retry_after = min(waits, default=None)
        return failed


def _within(candidates: list[Candidate], providers: frozenset[str], model: str) -> list[Candidate]:
    """The candidates of ``providers``; ProviderNotAllowed when none is."""
    allowed = [c for c in candidates if c.provider in providers]
    if not allowed:
        raise errors.ProviderNotAllowed(f"No provider this API key may use serves the model {model!r}", param="model")
    return allowed


def _same_model(candidates: list[Candidate], model: str) -> list[Candidate]:
    """The candidates that serve ``model`` itself, or a dated snapshot of it (or it of theirs): a
    vector is compared only with vectors of its own model, so an embedding call never goes to
    another model of a group (``claude-3-haiku`` to OpenAI's ``gpt-3.5-turbo``). Not two members
    of one family (``text-embedding-004`` for ``-005``: a diff review). An Azure deployment of it
    (``deployments``) is the model itself (``Candidate.deployment``)."""
    same = [c for c in candidates if c.model == model or family_of(c.model) == model or family_of(model) == c.model]
    if not same:
        raise errors.ModelNotFound(f"no configured provider serves the model {model!r} itself", param="model")
    return same


def _costs(billed: _Billed | None) -> bool:
    """Whether failed attempts cost money their providers bill: an unknown amount, or more
    than $0 (a free model's timeout leaves the client its retry)."""
    return billed is not None and (billed.unknown or billed.known > 0)


def _sent(failures: list[errors.ProviderError]) -> int:
    """How many of the failed attempts reached their provider: it answered (an HTTP status), or
    had the whole request when the wait for its answer ran out. A busy pool, a connection
    refused or a name that does not resolve sent nothing, and cost nothing."""
    return sum(e.http_status is not None or e.billed_unseen for e in failures)


def _permanent(outcomes: set[str]) -> bool:
    """Every provider refused for good: no retry of the client's can help."""
    return bool(outcomes) and not outcomes & _TRANSIENT


#: the most of a provider's own words an all-failed message repeats per attempt
WHY_CHARS = 160


def _why(error: errors.ProviderError) -> str:
    """`` (the provider's message)``, short: "client_error HTTP 400" alone hid Ollama's "llama3
    does not support tools" (review)."""
    words = error.message.removeprefix(f"{error.provider}: ").split()
    text = "".join(ch for ch in " ".join(words) if ch.isprintable())  # no ESC or BEL from a vendor
    if not text:
        return ""
    return f" ({text[:WHY_CHARS]}{'...' if len(text) > WHY_CHARS else ''})"


#: a stream the upstream cut after the client kept a write waiting this long is the client's
#: (see ``StreamSession.batches``); a client reading at network speed never waits a second
SLOW_CLIENT_SECONDS = 2.0
#: how long after such a wait a cut is still the client's (an upstream's send timeout, about)
SLOW_CLIENT_WINDOW = 60.0


class _Deadline:
    """One stream start waiting for its first content, which must come by ``at`` (loop time):
    past it, :class:`_StartWatch` cancels the waiting task, and ``expired(exc)`` says whether
    ``exc`` is that cancellation (then takes it back from the task). Keep-alive pings reset the
    idle timeout, so without this a stream of pings held the client without a status line for
    good."""

    __slots__ = ("at", "fired", "task")

    def __init__(self, at: float, task: asyncio.Task[object] | None) -> None:
        self.at = at
        self.task = task
        self.fired = False

    def expired(self, exc: BaseException) -> bool:
        if not self.fired or self.task is None:
            return False
        others = self.task.uncancel()  # ours is taken back whatever ended the wait
        return isinstance(exc, asyncio.CancelledError) and others == 0


class _StartWatch:
    """The stream starts waiting for their first content, checked by one timer a second for the
    whole router: a timer per stream (``call_later`` and its cancel, or ``asyncio.timeout``)
    cost the streams 3 to 6% of their throughput in the overhead bench."""

    EVERY = 1.0

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._waiting: set[_Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> _Deadline | None:
        if self.seconds is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop.time() + self.seconds, asyncio.current_task())
        self._waiting.add(deadline)
        if self._timer is None:
            self._timer = loop.call_later(min(self.EVERY, self.seconds), self._check)
        return deadline

    def end(self, deadline: _Deadline | None) -> None:
        if deadline is not None:
            self._waiting.discard(deadline)

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for deadline in [d for d in self._waiting if d.at <= now]:
            self._waiting.discard(deadline)
            deadline.fired = True
            if deadline.task is not None:
                deadline.task.cancel()
        if self._waiting and self.seconds is not None:
            self._timer = loop.call_later(min(self.EVERY, self.seconds), self._check)


class StreamSession:
    """A started stream: yields chunks, then records the attempt's event when it ends."""

    def __init__(
        self,
        recorder: UsageRecorder,
        ctx: CallContext,
        candidate: Candidate,
        attempt: int,
        started: float,
        ttft_ms: float,
        head: list[StreamChunk],
        iterator: AsyncIterator[list[StreamChunk]],
        before: _Billed | None = None,
    ) -> None:
        self.recorder = recorder
        self.ctx = ctx
        self.provider = candidate.provider
        self.provider_model = candidate.called
        self.attempts = attempt
        self._started = started
        self.ttft_ms = ttft_ms
        self._head = head
        self._iterator = iterator
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.served_model: str | None = None
        self.event: UsageEvent | None = None
        self.error: errors.ProviderError | None = None
        #: the upstream said the stream is over (a FinalBatch came): only its end follows
        self.complete = False
        #: what the call's failed attempts before this one cost (``Served.before``)
        self.before = before
        self._drained = False  # the provider's iterator ran to its end: nothing to close

    @property
    def cost(self) -> Decimal | None:
        """The call's cost once the attempt is recorded (``Served.cost``); None until then."""
        return None if self.event is None else _total(self.event.cost_usd, self.before)

    @property
    def first_model(self) -> str:
        """The model the stream's first chunk names (the one that serves it: a dated snapshot, an
        Azure deployment's model), else the model asked for."""
        head = self._head
        return (head[0].model if head else None) or self.provider_model

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        """Every chunk; raises ``StreamCut`` (recorded) when the upstream breaks mid-way."""
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncIterator[list[StreamChunk]]:
        """Every chunk, in non-empty lists of what arrived together (one write each). After a
        ``FinalBatch``, ``complete`` is True: only the end of the stream follows.

        The gateway reads the upstream only as fast as the client takes the stream (one write
        per read), so a client that stops reading stops the reads too, and an upstream (or a
        proxy before it) that cannot send for long enough closes the stream. A cut right after
        the client held the stream for :data:`SLOW_CLIENT_SECONDS` or more is the client's:
        recorded ``cancelled`` (``client_too_slow``), not ``stream_cut``, so health does not
        count it against the provider (ten slow readers opened a healthy provider's circuit)."""
        slow = 0.0  # the longest the caller kept a batch (its write to the client)...
        slow_at = -math.inf  # ... and when that ended
        try:
            if self._head:
                self._note(self._head)
                taken = time.monotonic()
                yield self._head
                if (now := time.monotonic()) - taken >= SLOW_CLIENT_SECONDS:
                    slow, slow_at = now - taken, now
            async for batch in self._iterator:
                self._note(batch)
                taken = time.monotonic()
                yield batch
                if (now := time.monotonic()) - taken >= SLOW_CLIENT_SECONDS:
                    slow, slow_at = now - taken, now
            self._drained = True
        except (TimeoutError, errors.ProviderError, OSError) as exc:
            cause = _as_provider_error(exc, self.provider)
            # the upstream cut while the gateway held its reads: what it had buffered meanwhile
            # may still be forwarded after the client came back, so the cut shows a few quick
            # writes later (the last write alone missed half of the slow readers in a re-test)
            client = time.monotonic() - slow_at <= SLOW_CLIENT_WINDOW
            kind: type[errors.StreamCut] = errors.ClientTooSlow if client else errors.StreamCut
            why = f" (the client had read nothing for {slow:.1f} s)" if client else ""
            if isinstance(cause, errors.ToolCallFailed):  # the model's doing: the answer it billed
                kind, why = errors.ToolCallFailedMidStream, ""
                self.usage = cause.usage or self.usage
            cut = kind(
                f"{self.provider}: stream interrupted: {cause.message}{why}",
                provider=self.provider,
                http_status=cause.http_status,
                upstream_code=cause.upstream_code or cause.code,
            )
            cut.billed_unseen = isinstance(cause, errors.ToolCallFailed) and self.usage is None
            self.error = cut
            self.finish(cut.outcome, error=cut)
            raise cut from exc

    def _note(self, batch: list[StreamChunk]) -> None:
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage
            if chunk.finish_reason is not None:
                self.finish_reason = chunk.finish_reason
            if chunk.model:
                self.served_model = chunk.model
        if isinstance(batch, FinalBatch):
            self.complete = True

    def finish(self, outcome: str = "success", *, error: errors.StreamCut | None = None) -> UsageEvent:
        """Record the attempt once (success, stream_cut, or cancelled by the client)."""
        if self.event is not None:
            return self.event
        incomplete = outcome != "success"
        self.event = self.recorder.record(
            self.ctx,
            AttemptFacts(
                number=self.attempts,
                provider=self.provider,
                provider_model=self.provider_model,
                outcome=outcome,  # type: ignore[arg-type]
                latency_ms=(time.monotonic() - self._started) * 1000.0,
                ttft_ms=self.ttft_ms,
                http_status=200,
                error_code=error.recorded_code if error else None,
                error_message=error.message if error else None,
                served_model=self.served_model,
                usage=self.usage,
                incomplete=incomplete,
                billed=error is not None and error.billed_unseen,
            ),
        )
        return self.event

    async def aclose(self) -> None:
        if not self._drained:
            await _aclose(self._iterator)


def _batches(provider: Provider, request: ChatRequest) -> AsyncIterator[list[StreamChunk]]:
    """The provider's stream as lists of chunks: its own batches when it offers them
    (``BatchStreaming``), else one chunk per list."""
    stream_batches = getattr(provider, "stream_batches", None)
    if stream_batches is not None:
        return cast(BatchStreaming, provider).stream_batches(request).__aiter__()
    return _singletons(provider.stream(request))


async def _singletons(chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[list[StreamChunk]]:
    try:
        async for chunk in chunks:
            yield [chunk]
    finally:
        await _aclose(chunks)


async def _aclose(iterator: AsyncIterator[object]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except (TimeoutError, errors.GatewayError, OSError, RuntimeError):
            log.debug("error while closing an upstream stream", exc_info=True)


def _client_still_there() -> None:
    """Before an attempt is sent (a retry, a fallback, one after a wait for a connection): a
    client that left meanwhile is answered by nobody, and the attempt would be billed for
    nothing (a re-test saw 50 such sent to the fallback after their wait)."""
    if (gone := CLIENT_GONE.get()) is not None and gone():
        raise errors.ClientGone("the client left before the next attempt")


def _first_content_timeout(provider: str, seconds: float, wire: Wire) -> errors.ProviderError:
    """What a stream start cut short by the request timeout was: still waiting for a free
    connection, nothing was sent (no attempt: a review saw such waits recorded as the
    provider's timeouts, counted against its health); sent whole, the provider bills it all the
    same (``providers.http.post``), at a cost nobody told us."""
    if wire.state == "queued":
        return errors.ConnectionsBusy(
            f"{provider}: every connection to the provider stayed busy for the request timeout, "
            "the request was not sent",
            provider=provider,
        )
    if wire.state == "answered":  # an error status, its body still coming: the vendor's refusal
        return errors.UpstreamTimeout(
            f"{provider}: an error answer's body did not come within {seconds:g}s", provider=provider
        )
    message = f"{provider}: no content within {seconds:g}s (the request timeout)"
    timed_out = errors.UpstreamTimeout(message, provider=provider)
    timed_out.billed_unseen = wire.state == "sent"
    return timed_out


def _latency_ms(started: float) -> float:
    """An attempt's latency since ``started``, without its wait for a free connection."""
    return (time.monotonic() - started - QUEUED.get()) * 1000.0


def _as_provider_error(exc: BaseException, provider: str) -> errors.ProviderError:
    """Adapters raise ProviderErrors; anything else there is a bug, recorded and fallen back from."""
    if isinstance(exc, errors.ProviderError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return errors.UpstreamTimeout(f"{provider}: timed out", provider=provider)
    if isinstance(exc, OSError):
        return errors.UpstreamConnectionError(f"{provider}: connection failed: {exc}", provider=provider)
    log.error("adapter %s raised an unexpected %s", provider, type(exc).__name__, exc_info=exc)
    return errors.UpstreamServerError(f"{provider}: adapter failure ({type(exc).__name__})", provider=provider)
