"""Retry and fallback: exact attempt sequences, honoured waits, one event per attempt."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from gateway import errors
from gateway.eventlog.memory import MemoryEventLog
from gateway.routing.catalog import ModelCatalog
from gateway.routing.retry import RetryPolicy
from gateway.routing.router import Router
from gateway.types import ChatRequest, ChatResult, Message, StreamChunk, Usage
from gateway.usage import CallContext, UsageRecorder
from tests.support.fakes import FixedPriceBook, ManualClock, RecordingSleep, ScriptedProvider, ok, rate_limited

PRIORITY = ["openai", "azure", "anthropic", "google", "ollama"]


class _Gate:
    """Circuits that only say which providers may be tried (they hold no probe places)."""

    def __init__(self, gate) -> None:
        self.gate = self.peek = gate

    def reopens_in(self, provider: str) -> float | None:
        return None


def make_router(*providers: ScriptedProvider, policy: RetryPolicy | None = None, gate=None, circuits=None):
    log = MemoryEventLog()
    sleep = RecordingSleep()
    recorder = UsageRecorder(log, FixedPriceBook(), clock=ManualClock())
    kwargs = {"circuits": circuits or (_Gate(gate) if gate else None)}
    router = Router(
        {p.name: p for p in providers},
        ModelCatalog(),
        recorder,
        priority=PRIORITY,
        policy=policy
        or RetryPolicy(attempts=3, initial_wait=0.5, max_wait=8.0, max_server_wait=20.0, budget_seconds=30.0),
        sleep=sleep,
        rng=random.Random(1),
        **kwargs,
    )
    return router, log, sleep


def ctx(model: str = "gpt-4", stream: bool = False) -> CallContext:
    return CallContext("req_1", "tenant_123", None, "chat.completions", stream, model)


TEMPLATE = ChatRequest(model="gpt-4", messages=[Message("user", "hi")])


async def test_success_first_try_records_one_priced_event() -> None:
    router, log, sleep = make_router(ScriptedProvider("openai", ok(prompt=1000, completion=500)))
    served = await router.complete(ctx(), TEMPLATE)
    assert (served.provider, served.attempts) == ("openai", 1)
    assert served.cost == Decimal("0.06")
    [event] = log.events
    assert (event.outcome, event.attempt, event.cost_usd, event.billable) == ("success", 1, Decimal("0.06"), True)
    assert event.tenant_id == "tenant_123" and event.request_id == "req_1"
    assert sleep.waits == []


async def test_rate_limit_retried_with_server_wait_then_succeeds() -> None:
    openai = ScriptedProvider("openai", rate_limited("openai", 2.0), rate_limited("openai", 0.25), ok())
    router, log, sleep = make_router(openai)
    served = await router.complete(ctx(), TEMPLATE)
    assert served.attempts == 3 and served.provider == "openai"
    assert sleep.waits == [2.0, 0.25]
    assert [e.outcome for e in log.events] == ["rate_limited", "rate_limited", "success"]
    assert [e.attempt for e in log.events] == [1, 2, 3]
    assert {e.request_id for e in log.events} == {"req_1"}


async def test_backoff_is_exponential_without_server_wait() -> None:
    openai = ScriptedProvider("openai", rate_limited("openai"), rate_limited("openai"), ok())
    router, _, sleep = make_router(openai, policy=RetryPolicy(attempts=3, initial_wait=0.5, max_wait=8.0))
    await router.complete(ctx(), TEMPLATE)
    assert sleep.waits == [0.5, 1.0]


async def test_backoff_stays_at_the_cap_past_a_thousand_attempts() -> None:
    # retry_attempts has no upper bound: 2 ** 1024 overflowed a float and the 1,025th wait
    # raised OverflowError out of the router
    from gateway.routing.retry import RetryBudget, call_with_retry

    policy = RetryPolicy(attempts=1100, initial_wait=0.001, max_wait=0.002, budget_seconds=10.0)
    sleep = RecordingSleep()

    async def limited() -> None:
        raise rate_limited("openai", None)

    with pytest.raises(errors.RateLimited):
        await call_with_retry(limited, policy=policy, budget=RetryBudget(10.0), sleep=sleep, rng=random.Random(1))
    assert len(sleep.waits) == 1099 and sleep.waits[0] == 0.001 and set(sleep.waits[1:]) == {0.002}


async def test_exhausted_retries_fall_back_in_priority_order() -> None:
    openai = ScriptedProvider("openai", default=rate_limited("openai", 1.0))
    anthropic = ScriptedProvider("anthropic", ok(model="claude-3-opus-20240229"))
    router, log, sleep = make_router(openai, anthropic)
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "anthropic" and served.attempts == 4
    assert [(e.provider, e.outcome) for e in log.events] == [
        ("openai", "rate_limited"),
        ("openai", "rate_limited"),
        ("openai", "rate_limited"),
        ("anthropic", "success"),
    ]
    assert anthropic.calls[0].model == "claude-3-opus-20240229"
    assert sleep.waits == [1.0, 1.0]


async def test_quota_exhausted_falls_back_at_once() -> None:
    quota = errors.QuotaExhausted("openai: out of credit", provider="openai", http_status=429)
    router, log, sleep = make_router(ScriptedProvider("openai", quota), ScriptedProvider("azure"))
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "azure" and sleep.waits == []
    assert [e.outcome for e in log.events] == ["quota_exhausted", "success"]


@pytest.mark.parametrize(
    "error",
    [
        errors.UpstreamServerError("boom", provider="openai", http_status=500),
        errors.UpstreamTimeout("slow", provider="openai"),
        errors.UpstreamConnectionError("refused", provider="openai"),
        errors.UpstreamAuthError("bad key", provider="openai", http_status=401),
        errors.MalformedResponse("junk", provider="openai", http_status=200),
    ],
)
async def test_server_side_failures_fall_back_without_retry(error: errors.ProviderError) -> None:
    router, log, sleep = make_router(ScriptedProvider("openai", error), ScriptedProvider("anthropic"))
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "anthropic" and sleep.waits == []
    assert log.events[0].outcome == error.outcome


async def test_client_error_is_returned_at_once() -> None:
    bad = errors.UpstreamBadRequest("openai: context too long", provider="openai", http_status=400)
    anthropic = ScriptedProvider("anthropic")
    router, log, _ = make_router(ScriptedProvider("openai", bad), anthropic)
    with pytest.raises(errors.UpstreamBadRequest):
        await router.complete(ctx(), TEMPLATE)
    assert anthropic.calls == []
    assert [e.outcome for e in log.events] == ["client_error"]


async def test_server_wait_longer_than_allowed_falls_back_immediately() -> None:
    openai = ScriptedProvider("openai", rate_limited("openai", 600.0))
    router, _, sleep = make_router(openai, ScriptedProvider("azure"))
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "azure" and sleep.waits == []


async def test_retry_budget_bounds_total_waiting() -> None:
    openai = ScriptedProvider("openai", default=rate_limited("openai", 4.0))
    azure = ScriptedProvider("azure", default=rate_limited("azure", 4.0))
    policy = RetryPolicy(attempts=3, max_server_wait=20.0, budget_seconds=10.0)
    router, _log, sleep = make_router(openai, azure, policy=policy)
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    assert sum(sleep.waits) <= 10.0
    assert sleep.waits == [4.0, 4.0]
    assert info.value.status == 429  # every provider rate-limited: OpenAI's status (RateLimitError)


async def test_the_budget_judges_the_jittered_wait_that_is_slept() -> None:
    """With real jitter (no rng), the stop test and the sleep must see the same delay: tenacity
    asks for the wait and the stop separately, and a second draw let 15% of these runs wait past
    the budget (up to 0.44 s over 2 s)."""
    from gateway.routing.retry import RetryBudget, call_with_retry

    policy = RetryPolicy(attempts=6, initial_wait=0.5, max_wait=8.0, budget_seconds=2.0)
    over = []
    for _ in range(300):
        budget = RetryBudget(policy.budget_seconds)
        sleep = RecordingSleep()

        async def limited() -> None:
            raise rate_limited("openai", None)

        with pytest.raises(errors.RateLimited):
            await call_with_retry(limited, policy=policy, budget=budget, sleep=sleep, rng=None)
        if sum(sleep.waits) > policy.budget_seconds:
            over.append(sleep.waits)
    assert over == []


async def test_all_failed_names_each_attempt() -> None:
    router, log, _ = make_router(
        ScriptedProvider("openai", default=errors.UpstreamServerError("x", provider="openai", http_status=500)),
        ScriptedProvider("anthropic", default=errors.UpstreamTimeout("y", provider="anthropic")),
    )
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    message = info.value.message
    assert "openai: upstream_error HTTP 500" in message and "anthropic: timeout" in message
    assert info.value.status == 502
    assert len(log.events) == 2 and all(e.cost_usd == 0 and not e.billable for e in log.events)


async def test_all_failed_says_what_each_provider_said() -> None:
    """ "client_error HTTP 400" alone hid Ollama's reason ("does not support tools")."""
    refusal = errors.ModelCannotServe(
        "ollama: registry.ollama.ai/library/llama3:latest does not support tools", provider="ollama", http_status=400
    )
    long = errors.UpstreamServerError("openai: \x1b[31m" + "z" * 500 + "\x07", provider="openai", http_status=500)
    router, _, _ = make_router(ScriptedProvider("openai", default=long), ScriptedProvider("ollama", default=refusal))
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    message = info.value.message
    assert "ollama: client_error HTTP 400 (registry.ollama.ai/library/llama3:latest does not support tools)" in message
    assert f"openai: upstream_error HTTP 500 ([31m{'z' * 156}...)" in message


async def test_pinned_provider_goes_first_then_priority() -> None:
    google = ScriptedProvider("google", errors.UpstreamServerError("x", provider="google", http_status=500))
    openai = ScriptedProvider("openai")
    router, log, _ = make_router(openai, google)
    served = await router.complete(ctx(), TEMPLATE, pinned="google")
    assert served.provider == "openai"
    assert [e.provider for e in log.events] == ["google", "openai"]
    assert google.calls[0].model == "gemini-pro"


async def test_unknown_or_unconfigured_provider_is_a_client_error() -> None:
    router, _, _ = make_router(ScriptedProvider("openai"))
    with pytest.raises(errors.InvalidRequest, match="unknown provider"):
        await router.complete(ctx(), TEMPLATE, pinned="bedrock")
    with pytest.raises(errors.InvalidRequest, match="not configured"):
        await router.complete(ctx(), TEMPLATE, pinned="anthropic")


async def test_a_pin_cannot_reach_a_provider_the_priority_leaves_out() -> None:
    """The operator's priority names the providers calls may go to: a pin on another one (Ollama
    needs no key, so it always counts as configured) sent the call there anyway."""
    openai, ollama = ScriptedProvider("openai"), ScriptedProvider("ollama")
    router, log, _ = make_router(openai, ollama)
    router.priority = ["openai"]
    with pytest.raises(errors.InvalidRequest, match="not in its priority") as info:
        await router.complete(ctx("llama3"), TEMPLATE, pinned="ollama")
    assert info.value.param == "provider" and ollama.calls == [] and log.events == []
    with pytest.raises(errors.ModelNotFound):
        await router.complete(ctx("llama3"), TEMPLATE)  # unpinned: nobody in the priority serves it
    served = await router.complete(ctx("gpt-4"), TEMPLATE, pinned="openai")
    assert served.provider == "openai"


async def test_unknown_model_is_404() -> None:
    router, _, _ = make_router(ScriptedProvider("openai"))
    with pytest.raises(errors.ModelNotFound):
        await router.complete(ctx("no-such-model"), TEMPLATE)


async def test_unpriced_model_is_recorded_as_unpriced() -> None:
    router, log, _ = make_router(ScriptedProvider("openai", ok(model="gpt-9")))
    router.recorder._prices = FixedPriceBook(unpriced=frozenset({"gpt-9", "gpt-4"}))
    served = await router.complete(ctx(), TEMPLATE)
    assert served.cost is None
    assert log.events[0].cost_usd is None and log.events[0].billable


async def test_open_circuit_is_skipped() -> None:
    openai = ScriptedProvider("openai")
    router, _log, _ = make_router(openai, ScriptedProvider("azure"), gate=lambda p: p != "openai")
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "azure" and openai.calls == []


async def test_stream_falls_back_before_first_chunk_only() -> None:
    openai = ScriptedProvider("openai", errors.Overloaded("busy", provider="openai", http_status=503, retry_after=0.1))
    router, log, sleep = make_router(openai)
    session = await router.open_stream(ctx(stream=True), TEMPLATE)
    text = "".join([c.text async for c in session.chunks()])
    session.finish()
    assert text == "hello from openai" and session.attempts == 2 and sleep.waits == [0.1]
    assert [e.outcome for e in log.events] == ["overloaded", "success"]
    assert log.events[-1].prompt_tokens == 10


async def test_stream_cut_after_first_chunk_is_not_fallen_back() -> None:
    cut = errors.StreamCut("gone", provider="openai")
    openai = ScriptedProvider("openai", [StreamChunk(text="Hel"), StreamChunk(text="lo"), cut])
    azure = ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    session = await router.open_stream(ctx(stream=True), TEMPLATE)
    seen = []
    with pytest.raises(errors.StreamCut):
        async for chunk in session.chunks():
            seen.append(chunk.text)
    assert seen == ["Hel", "lo"] and azure.calls == []
    [event] = log.events
    assert event.outcome == "stream_cut" and event.incomplete and event.cost_usd is None


async def test_a_cut_after_the_client_held_the_stream_is_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway reads the upstream only as fast as the client takes the stream: an upstream
    that cut a stream while the client had stopped reading did nothing wrong. That cut is
    recorded ``cancelled`` (``client_too_slow``), which health does not count against the
    provider (ten slow readers opened a healthy provider's circuit); a cut while the client
    keeps up is still the provider's ``stream_cut``."""
    from gateway.health.window import classify
    from gateway.routing import router as router_module

    monkeypatch.setattr(router_module, "SLOW_CLIENT_SECONDS", 0.05)
    # the client's write waits per chunk; a slow one first and then quick ones is the re-test's
    # case: what the gateway had buffered goes out quickly once the client is back, then the cut
    cases = (
        ([0.1, 0.1], "cancelled", "client_too_slow"),
        ([0.1, 0.0, 0.0], "cancelled", "client_too_slow"),
        ([0.0, 0.0, 0.0], "stream_cut", "stream_interrupted"),
    )
    for pauses, outcome, code in cases:
        cut = errors.UpstreamConnectionError("reset by peer", provider="openai")
        chunks = [StreamChunk(text="Hel"), StreamChunk(text="lo"), StreamChunk(text="!"), cut]
        openai = ScriptedProvider("openai", chunks)
        router, log, _ = make_router(openai)
        session = await router.open_stream(ctx(stream=True), TEMPLATE)
        with pytest.raises(errors.StreamCut) as info:
            async for _chunk in session.chunks():
                await asyncio.sleep(pauses.pop(0) if pauses else 0.0)
        assert info.value.code == code
        [event] = log.events
        assert (event.outcome, event.error_code, event.incomplete) == (outcome, code, True)
        assert classify(event.outcome) == ("neutral" if outcome == "cancelled" else "failure")


async def test_a_call_costs_what_its_billed_failed_attempts_cost_too() -> None:
    """A stream Anthropic cut after it had started (billed, cost unknown), then served by Azure:
    the call's cost is unknown, not Azure's alone, which the headers, the usage chunk and the
    cost line said; every provider failing that way: the failure's cost is unknown, not 0."""
    cut = errors.StreamCut("anthropic: stream interrupted", provider="openai")
    openai, azure = ScriptedProvider("openai", [cut]), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    session = await router.open_stream(ctx(stream=True), TEMPLATE)
    _ = [chunk async for chunk in session.chunks()]
    session.finish("success")
    first, served = log.events
    assert (first.outcome, first.billable, first.cost_usd) == ("stream_cut", True, None)
    assert served.cost_usd is not None and served.cost_usd > 0
    assert session.cost is None
    clean_router, _log, _ = make_router(ScriptedProvider("openai"))
    clean = await clean_router.open_stream(ctx(stream=True), TEMPLATE)
    _ = [chunk async for chunk in clean.chunks()]
    clean.finish("success")
    assert clean.cost == _log.events[0].cost_usd  # nothing billed before: the attempt's own
    both = make_router(ScriptedProvider("openai", [cut]), ScriptedProvider("azure", [cut]))[0]
    with pytest.raises(errors.AllProvidersFailed) as info:
        await both.open_stream(ctx(stream=True), TEMPLATE)
    assert info.value.cost is None
    failing, _flog, _ = make_router(ScriptedProvider("openai", errors.Overloaded("busy", provider="openai")))
    failing.policy = RetryPolicy(attempts=1, initial_wait=0.1, max_wait=0.1, max_server_wait=1.0, budget_seconds=1.0)
    with pytest.raises(errors.AllProvidersFailed) as info:
        await failing.complete(ctx(), TEMPLATE)
    assert info.value.cost == 0  # attempts refused: nothing billed


async def test_an_unreadable_answer_with_usage_is_billed_then_fallen_back_from() -> None:
    bad = errors.MalformedResponse("openai: malformed response: content is int", provider="openai", http_status=200)
    bad.usage = Usage(1000, 1000)
    openai, azure = ScriptedProvider("openai", bad), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    served = await router.complete(ctx(), TEMPLATE)
    first, second = log.events
    assert (first.outcome, first.billable, first.prompt_tokens) == ("malformed_response", True, 1000)
    assert first.cost_usd is not None and first.cost_usd > 0
    assert served.provider == "azure" and served.cost == first.cost_usd + second.cost_usd


async def test_an_answer_unreadable_in_content_and_usage_is_billed_at_an_unknown_cost() -> None:
    """A 200 answer with content 5 and prompt_tokens -5, or not JSON at all: recorded free
    (billable false, $0) and fallen back from; the provider bills it, so its cost is unknown,
    and so is the call's. Every malformed answer is so unless its usage was read."""
    bad = errors.MalformedResponse("openai: malformed response: content is int", provider="openai", http_status=200)
    router, log, _ = make_router(ScriptedProvider("openai", bad), ScriptedProvider("azure"))
    served = await router.complete(ctx(), TEMPLATE)
    first, second = log.events
    assert (first.outcome, first.billable, first.cost_usd) == ("malformed_response", True, None)
    assert served.provider == "azure" and second.cost_usd is not None and served.cost is None


async def test_a_refusal_after_a_billed_attempt_carries_what_the_call_cost() -> None:
    bad = errors.MalformedResponse("openai: malformed response: content is int", provider="openai", http_status=200)
    bad.usage = Usage(1000, 1000)
    refused = errors.UpstreamBadRequest("azure: bad request", provider="azure", http_status=400)
    router, log, _ = make_router(ScriptedProvider("openai", bad), ScriptedProvider("azure", refused))
    with pytest.raises(errors.UpstreamBadRequest) as info:
        await router.complete(ctx(), TEMPLATE)
    first, second = log.events
    assert first.billable and first.cost_usd is not None and first.cost_usd > 0 and not second.billable
    assert info.value.call_cost == first.cost_usd
    router, _, _ = make_router(ScriptedProvider("openai", errors.UpstreamBadRequest("no", provider="openai")))
    with pytest.raises(errors.UpstreamBadRequest) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.call_cost == 0  # refused at once: nothing billed


async def test_a_fallback_whose_adapter_cannot_put_the_request_answers_what_the_attempts_cost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fallback's adapter that cannot put the request to its vendor (no attempt: Gemini given a
    reasoning level it has no value for, before the router kept such requests from it) after a
    billed attempt elsewhere: the 400 carried neither the attempts nor their cost, and the call
    had no cost line (a re-test). Both are said now; a refusal before any attempt says none."""
    import logging

    from gateway.api.middleware import error_response

    bad = errors.MalformedResponse("openai: malformed response: content is int", provider="openai", http_status=200)
    bad.usage = Usage(1000, 1000)
    cannot = errors.InvalidRequest("azure: cannot put it", param="messages")
    caplog.set_level(logging.INFO, logger="gateway.cost")
    router, log, _ = make_router(ScriptedProvider("openai", bad), ScriptedProvider("azure", cannot))
    with pytest.raises(errors.InvalidRequest) as info:
        await router.complete(ctx(), TEMPLATE)
    [first] = log.events
    assert (info.value.call_attempts, info.value.call_cost) == (1, first.cost_usd) and first.cost_usd
    headers = error_response(info.value, "req_1").headers
    assert (headers["x-llm-attempts"], headers["x-llm-cost-usd"]) == ("1", format(first.cost_usd, "f").ljust(8, "0"))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cost |")]
    assert "provider=azure" in line and f"cost=${headers['x-llm-cost-usd']}" in line
    router, _, _ = make_router(ScriptedProvider("openai", errors.InvalidRequest("openai: cannot put it")))
    with pytest.raises(errors.InvalidRequest) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.call_attempts is None and "x-llm-attempts" not in error_response(info.value, "r").headers


async def test_stream_usage_is_priced() -> None:
    chunks = [StreamChunk(text="a"), StreamChunk(finish_reason="stop", usage=Usage(1000, 1000), model="gpt-4-0613")]
    router, _log, _ = make_router(ScriptedProvider("openai", chunks))
    session = await router.open_stream(ctx(stream=True), TEMPLATE)
    _ = [c async for c in session.chunks()]
    event = session.finish()
    assert event.cost_usd == Decimal("0.09") and event.served_model == "gpt-4-0613"


async def test_adapter_bug_is_recorded_and_fallen_back_from() -> None:
    router, log, _ = make_router(ScriptedProvider("openai", KeyError("oops")), ScriptedProvider("azure"))
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "azure"
    assert log.events[0].outcome == "upstream_error"


async def test_a_vendors_own_model_goes_to_that_vendor_first() -> None:
    openai, anthropic = ScriptedProvider("openai"), ScriptedProvider("anthropic", ok(model="claude-3-haiku-20240307"))
    router, _, _ = make_router(openai, anthropic)
    served = await router.complete(ctx("claude-3-haiku"), TEMPLATE)
    assert served.provider == "anthropic" and openai.calls == []
    assert anthropic.calls[0].model == "claude-3-haiku-20240307"


async def test_an_openai_fine_tune_goes_to_openai_alone() -> None:
    """``ft:gpt-4o-mini-2024-07-18:org::id`` was a 404 ("no provider serves it") unless a model
    group named it (a docs review); only OpenAI holds the fine-tune, so nothing falls back."""
    fine_tune = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
    openai, azure = (
        ScriptedProvider("openai", errors.UpstreamServerError("x", provider="openai")),
        ScriptedProvider("azure"),
    )
    router, _log, _ = make_router(openai, azure)
    with pytest.raises(errors.AllProvidersFailed):
        await router.complete(ctx(fine_tune), TEMPLATE)
    assert [c.model for c in openai.calls] == [fine_tune] and azure.calls == []
    assert router.catalog.is_legacy_completion_model("ft:davinci-002:acme::x")


async def test_native_first_can_be_turned_off_for_strict_priority() -> None:
    openai, anthropic = ScriptedProvider("openai"), ScriptedProvider("anthropic")
    router, _, _ = make_router(openai, anthropic)
    router.native_first = False
    served = await router.complete(ctx("claude-3-haiku"), TEMPLATE)
    assert served.provider == "openai" and openai.calls[0].model == "gpt-3.5-turbo"


class HangingProvider(ScriptedProvider):
    """Never answers: the call only ends when the caller cancels it."""

    async def complete(self, request: ChatRequest) -> ChatResult:  # type: ignore[override]
        self.calls.append(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_cancelled_call_still_records_its_attempt_and_logs_its_cost_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cost line is one per call: a stop's timeout cancelled a non-streaming call without it
    (a docs review)."""
    router, log, _ = make_router(HangingProvider("openai"))
    caplog.set_level("INFO", logger="gateway.cost")
    task = asyncio.create_task(router.complete(ctx(), TEMPLATE))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [event] = log.events
    assert (event.outcome, event.incomplete, event.billable, event.cost_usd) == ("cancelled", True, True, None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cost |")]
    assert lines == ["Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=unpriced"]  # once


async def test_a_call_cancelled_during_a_retry_s_wait_logs_its_cost_line_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop's cancellation that lands in the backoff between attempts (no attempt in flight)
    left the call without its cost line: 10 calls, 0 lines (a review)."""
    router, log, _ = make_router(ScriptedProvider("openai", rate_limited("openai", 15.0), ok()))
    router._sleep = asyncio.sleep  # a real wait, to be cancelled in
    caplog.set_level("INFO", logger="gateway.cost")
    task = asyncio.create_task(router.complete(ctx(), TEMPLATE))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if log.events:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.outcome for e in log.events] == ["rate_limited"]  # no attempt was cut: none made up
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cost |")]
    assert lines == ["Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=$0.000000"]


async def test_a_retry_or_fallback_is_not_sent_once_the_client_has_left(caplog: pytest.LogCaptureFixture) -> None:
    """A client that left during a backoff got its retry sent, answered and billed for nobody
    (a review: 940 of 1,200 calls so, under overload)."""
    from gateway.providers.upstream_http import CLIENT_GONE

    openai, azure = ScriptedProvider("openai", rate_limited("openai", 1.0)), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    router._sleep = asyncio.sleep  # a real wait (1 s asked), to leave in
    caplog.set_level("INFO", logger="gateway.cost")
    here = [True]
    CLIENT_GONE.set(lambda: not here[0])
    try:
        task = asyncio.create_task(router.complete(ctx(), TEMPLATE))
        await asyncio.sleep(0.05)
        here[0] = False  # gone during the first attempt's backoff
        with pytest.raises(errors.ClientGone):
            await task
    finally:
        CLIENT_GONE.set(None)
    assert len(openai.calls) == 1 and azure.calls == []
    assert [e.outcome for e in log.events] == ["rate_limited"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cost |")]
    assert lines == ["Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=$0.000000"]


def busy(provider: str) -> errors.ConnectionsBusy:
    return errors.ConnectionsBusy(f"{provider}: all 256 of the gateway's connections were busy", provider=provider)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_that_found_every_connection_busy_is_no_attempt_and_falls_back(stream: bool) -> None:
    """It never left the gateway: no event (health is not told: a burst opened a healthy
    provider's circuit for every tenant, a review), not counted, and the next provider serves."""
    openai, azure = ScriptedProvider("openai", busy("openai")), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    if stream:
        session = await router.open_stream(ctx(stream=True), TEMPLATE)
        texts = [chunk.text async for chunk in session.chunks()]
        assert texts[0] == "hello"
        provider, attempts = session.provider, session.attempts
    else:
        served = await router.complete(ctx(), TEMPLATE)
        provider, attempts = served.provider, served.attempts
    assert (provider, attempts) == ("azure", 1)
    # a stream's own event comes when it ends (the session's); openai's would be here now
    assert [(e.provider, e.attempt, e.outcome) for e in log.events] == ([] if stream else [("azure", 1, "success")])


async def test_a_client_that_left_while_its_request_waited_gets_no_fallback_sent() -> None:
    """A re-test: 50 clients gone while they waited for a connection were each sent to the
    fallback, answered and billed for nobody."""
    from gateway.providers.upstream_http import CLIENT_GONE

    openai, azure = ScriptedProvider("openai", busy("openai")), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    CLIENT_GONE.set(lambda: len(openai.calls) > 0)  # gone by the time openai's wait ended
    try:
        with pytest.raises(errors.ClientGone):
            await router.complete(ctx(), TEMPLATE)
    finally:
        CLIENT_GONE.set(None)
    assert azure.calls == [] and log.events == []


async def test_busy_everywhere_is_a_503_with_no_event() -> None:
    router, log, _ = make_router(ScriptedProvider("openai", busy("openai")), ScriptedProvider("azure", busy("azure")))
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.status == 503 and "connections were busy" in info.value.message
    assert info.value.code == "gateway_busy"
    assert log.events == []
    from gateway.api.middleware import error_response

    assert error_response(info.value, "req_1").headers["x-llm-attempts"] == "0"  # none was sent


class PingingProvider(ScriptedProvider):
    """A stream that keeps the connection busy and says nothing (keep-alive pings: every read
    resets the idle timeout)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:  # type: ignore[override]
        self.calls.append(request)
        while True:
            await asyncio.sleep(0.01)
            yield StreamChunk(text="")


async def test_a_stream_without_content_by_the_request_timeout_falls_back() -> None:
    """Pings forever before any content held the client without even a status line, for good
    (a review waited 40 s); the first content must now come within the request timeout, or
    the attempt is a timeout and the next provider is tried."""
    openai, azure = PingingProvider("openai"), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure)
    router.first_content_timeout = 0.1
    session = await asyncio.wait_for(router.open_stream(ctx(stream=True), TEMPLATE), 5)
    assert session.provider == "azure" and len(openai.calls) == 1  # a timeout falls back, no retry here
    texts = [chunk.text async for chunk in session.chunks()]
    assert texts[0] == "hello"
    first = log.events[0]
    assert (first.provider, first.outcome, first.billable) == ("openai", "timeout", False)
    assert "no content within 0.1s" in (first.error_message or "")
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # nothing left pending


async def test_the_first_content_deadline_leaves_other_cancellations_alone() -> None:
    openai = PingingProvider("openai")
    router, log, _ = make_router(openai)
    router.first_content_timeout = 30.0
    task = asyncio.create_task(router.open_stream(ctx(stream=True), TEMPLATE))
    await asyncio.sleep(0.05)
    task.cancel()  # the caller went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.outcome for e in log.events] == ["cancelled"]


def test_a_request_for_a_provider_keeps_every_other_field() -> None:
    """``for_provider`` is ``dataclasses.replace`` written out: a field added to ChatRequest and
    not copied there would be dropped silently."""
    from dataclasses import fields, replace

    full = ChatRequest(
        **{f.name: f"v-{f.name}" for f in fields(ChatRequest) if f.name not in ("messages", "stream")},
        messages=[Message("user", "hi")],
        stream=False,
    )
    assert full.for_provider("m2", True) == replace(full, model="m2", stream=True)
    assert full.for_provider("m2", True) is not full


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_that_cannot_carry_what_a_request_needs_is_not_asked(stream: bool) -> None:
    """Tools (offered, or calls in the history): a provider without ``"tools"`` in its options
    is skipped, with no attempt and no event; when no provider can, the request is a 400."""
    from gateway.tool_calls import Tool, ToolCall, ToolSpec

    plain = ScriptedProvider("openai", options=frozenset())
    able = ScriptedProvider("azure")
    router, log, _ = make_router(plain, able)
    with_tools = ChatRequest(model="gpt-4", messages=[Message("user", "hi")], tools=ToolSpec((Tool("f"),)))
    history = ChatRequest(
        model="gpt-4",
        messages=[Message("assistant", "", (ToolCall("c1", "f", "{}"),)), Message("tool", "42", tool_call_id="c1")],
        tool_history=True,
    )
    for request in (with_tools, history):
        if stream:
            session = await router.open_stream(ctx(stream=True), request)
            _ = [chunk async for chunk in session.chunks()]
            session.finish()
            assert session.provider == "azure"
        else:
            assert (await router.complete(ctx(), request)).provider == "azure"
    assert plain.calls == [] and len(able.calls) == 2
    assert {e.provider for e in log.events} == {"azure"}
    lone, _, _ = make_router(ScriptedProvider("openai", options=frozenset()))
    with pytest.raises(errors.InvalidRequest) as info:
        await lone.complete(ctx(), with_tools)
    assert info.value.param == "tools" and info.value.status == 400


async def test_a_request_an_adapter_cannot_put_to_its_vendor_is_the_clients_400() -> None:
    """An adapter's InvalidRequest (a conversation its vendor's shape cannot hold) is not an
    adapter bug: no attempt is recorded, nothing falls back, the client gets the 400."""
    refusing = ScriptedProvider("openai", errors.InvalidRequest("cannot put this", param="messages[1]"))
    other = ScriptedProvider("azure")
    router, log, _ = make_router(refusing, other)
    with pytest.raises(errors.InvalidRequest) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.param == "messages[1]" and other.calls == [] and log.events == []


async def test_every_circuit_open_is_a_503_not_a_502() -> None:
    """No provider was even tried (every circuit open): the service is unavailable for now, a
    503 the SDKs retry later, not a 502 "after 0 attempts" as if providers had failed."""
    router, log, _ = make_router(ScriptedProvider("openai"), ScriptedProvider("azure"), gate=lambda _: False)
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.status == 503 and "skipped (circuit open)" in info.value.message and log.events == []


class _Circuit:
    """A provider's circuit as the router sees it: ``gate`` takes the half-open probe's place,
    ``peek`` takes nothing."""

    def reopens_in(self, provider: str) -> float | None:
        return None

    def __init__(self) -> None:
        self.state = {"openai": "closed"}
        self.probe_taken = False

    def peek(self, provider: str) -> bool:
        state = self.state.get(provider, "closed")
        return state == "closed" or (state == "half_open" and not self.probe_taken)

    def gate(self, provider: str) -> bool:
        if not self.peek(provider):
            return False
        if self.state.get(provider) == "half_open":
            self.probe_taken = True
        return True


@pytest.mark.parametrize("meanwhile", ["open", "half_open with its probe in flight"])
async def test_a_retry_asks_the_circuit_again_when_it_is_sent(meanwhile: str) -> None:
    """A retry asked the circuit before its wait only: a circuit that opened during the wait (other
    calls' failures) still got the retry, and a retry that slept into half-open went beside the
    probe another call had sent (two probes at once). Review: 4 of 10 concurrent calls retried
    into an open circuit."""
    circuit = _Circuit()
    busy = errors.Overloaded("busy", provider="openai", http_status=503, retry_after=2.0)
    openai, azure = ScriptedProvider("openai", busy), ScriptedProvider("azure")
    router, log, _ = make_router(openai, azure, circuits=circuit)

    async def other_calls_meanwhile(seconds: float) -> None:
        if meanwhile == "open":
            circuit.state["openai"] = "open"
        else:
            circuit.state["openai"] = "half_open"
            assert circuit.gate("openai")  # another call is the probe

    router._sleep = other_calls_meanwhile
    served = await router.complete(ctx(), TEMPLATE)
    assert served.provider == "azure" and len(openai.calls) == 1
    assert [e.outcome for e in log.events] == ["overloaded", "success"]


async def test_only_a_call_every_circuit_refused_says_when_one_reopens() -> None:
    """The wait is the first open circuit's when no provider was tried; a call another provider
    failed is not told to come back when a skipped one reopens."""

    class Open(_Gate):
        def reopens_in(self, provider: str) -> float | None:
            return 20.0 if provider == "openai" else None

    failing = ScriptedProvider("azure", errors.UpstreamServerError("boom", provider="azure", http_status=500))
    router, _log, _ = make_router(ScriptedProvider("openai"), failing, circuits=Open(lambda p: p != "openai"))
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    assert info.value.retry_after is None
    router, _log, _ = make_router(ScriptedProvider("openai"), circuits=Open(lambda _: False))
    with pytest.raises(errors.AllProvidersFailed) as info:
        await router.complete(ctx(), TEMPLATE)
    assert (info.value.status, info.value.retry_after) == (503, 20.0)


class _Hanging(ScriptedProvider):
    """A provider whose calls never answer (until cancelled)."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.calls.append(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_cancelled_call_tells_its_server_what_it_cost_and_whether_it_was_billed() -> None:
    """A stop's timeout cancels a call: the HTTP layer answers it (``gateway_stopping``) with what
    its attempts cost and whether one its provider may bill was made (``CANCELLED_CALL``)."""
    from gateway.usage import CANCELLED_CALL, CancelledCall

    async def cancelled(router: Router) -> CancelledCall:
        note = CancelledCall()

        async def call() -> None:
            CANCELLED_CALL.set(note)  # the task's own context, as serve_call sets it
            await router.complete(ctx(), TEMPLATE)

        task = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return note

    # during an attempt: the provider had the request (billable, at an unknown cost)
    router, log, _ = make_router(_Hanging("openai"))
    note = await cancelled(router)
    assert (note.attempts, note.billed, note.cost) == (1, True, None)
    assert [e.outcome for e in log.events] == ["cancelled"]
    # between attempts (a retry's wait): the one attempt made was free, so the client may retry
    rate_limited = errors.RateLimited("slow down", provider="openai", http_status=429, retry_after=5)
    log = MemoryEventLog()
    router = Router(
        {"openai": ScriptedProvider("openai", rate_limited)},
        ModelCatalog(),
        UsageRecorder(log, FixedPriceBook(), clock=ManualClock()),
        priority=PRIORITY,
        policy=RetryPolicy(attempts=3, initial_wait=0.5, max_wait=8.0, max_server_wait=20.0, budget_seconds=30.0),
        sleep=lambda _seconds: asyncio.Event().wait(),
        rng=random.Random(1),
    )
    note = await cancelled(router)
    assert (note.attempts, note.billed, note.cost) == (1, False, Decimal(0))
    assert [e.outcome for e in log.events] == ["rate_limited"]
