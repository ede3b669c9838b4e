"""What an attempt costs when its provider reported no token counts: the provider may still bill
it, so it is billable with its cost unknown (``None``, unpriced), never free; unless the model
costs nothing whatever it uses (a local Ollama model), then $0, known."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.eventlog.memory import MemoryEventLog
from gateway.events import UsageEvent
from gateway.pricing.book import load_price_book
from gateway.types import Usage
from gateway.usage import AttemptFacts, CallContext, UsageRecorder

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def record(
    provider: str,
    model: str,
    outcome: str,
    *,
    usage: Usage | None = None,
    incomplete: bool = False,
    billed: bool = False,
) -> UsageEvent:
    recorder = UsageRecorder(MemoryEventLog(), load_price_book(None), clock=lambda: NOW)
    ctx = CallContext("req_1", "acme", None, "chat.completions", True, model)
    facts = AttemptFacts(1, provider, model, outcome, 120.0, usage=usage, incomplete=incomplete, billed=billed)  # type: ignore[arg-type]
    return recorder.record(ctx, facts)


@pytest.mark.parametrize(
    ("outcome", "incomplete"),
    [
        ("success", False),  # served, but the stream carried no usage (an api-version without stream_options)
        ("stream_cut", False),  # cut before any content reached the client: the provider had started
        ("stream_cut", True),  # cut after content reached the client
        ("cancelled", True),  # the client went away mid-stream
    ],
)
def test_no_usage_seen_is_billable_at_an_unknown_cost(outcome: str, incomplete: bool) -> None:
    event = record("openai", "gpt-4o", outcome, incomplete=incomplete)
    assert (event.billable, event.cost_usd, event.incomplete) == (True, None, incomplete)


@pytest.mark.parametrize(("outcome", "incomplete"), [("success", False), ("stream_cut", False), ("cancelled", True)])
def test_no_usage_seen_on_a_free_model_costs_nothing_known(outcome: str, incomplete: bool) -> None:
    event = record("ollama", "llama3", outcome, incomplete=incomplete)
    assert (event.billable, event.cost_usd) == (True, Decimal(0))
    assert event.price_version == load_price_book(None).version


@pytest.mark.parametrize("outcome", ["rate_limited", "upstream_error", "timeout", "connection_error", "cancelled"])
def test_attempts_the_provider_refused_or_never_answered_cost_nothing(outcome: str) -> None:
    event = record("openai", "gpt-4o", outcome)
    assert (event.billable, event.cost_usd) == (False, Decimal(0))


def test_a_timeout_after_the_provider_had_the_request_is_billable_at_an_unknown_cost() -> None:
    event = record("openai", "gpt-4o", "timeout", billed=True)  # ``UpstreamTimeout.billed_unseen``
    assert (event.outcome, event.billable, event.cost_usd) == ("timeout", True, None)


def test_reported_usage_is_priced_and_zero_tokens_reported_is_free() -> None:
    priced = record("openai", "gpt-4o", "success", usage=Usage(1000, 100))
    assert priced.billable and priced.cost_usd is not None and priced.cost_usd > 0
    empty = record("openai", "gpt-4o", "success", usage=Usage(0, 0))
    assert (empty.billable, empty.cost_usd) == (False, Decimal(0))


@pytest.mark.parametrize(
    "usage",
    [
        Usage(1000, 10**15),  # an upstream's 10**15 output tokens was recorded at $1.25 billion
        # three counts of 2**62 - 1 each: their sum passed a BIGINT, the event failed validation
        # and the attempt had no event at all
        Usage(3 * (2**62 - 1), 0, cached_tokens=2**62 - 1, cache_creation_tokens=2**62 - 1),
        Usage(10**9, 1),  # the total alone
    ],
)
def test_an_impossible_usage_is_recorded_as_usage_unknown(usage: Usage, caplog: pytest.LogCaptureFixture) -> None:
    event = record("anthropic", "claude-3-haiku", "success", usage=usage)
    assert (event.billable, event.cost_usd, event.prompt_tokens, event.completion_tokens) == (True, None, 0, 0)
    assert "impossible usage" in caplog.text
    assert record("anthropic", "claude-3-haiku", "success", usage=Usage(10**9 - 1, 1)).cost_usd is not None
