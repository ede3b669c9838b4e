"""A cost has the stores' scale (10 decimals) from the moment it is priced, so the call's header,
its cost line, its event and both stores say the same amount, and store sums are exact."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import DuckDBSink
from gateway.eventlog.memory import MemoryEventLog
from gateway.pricing.base import format_usd
from gateway.pricing.book import load_price_book
from gateway.pricing.reprice import COST_DECIMALS, stored_cost
from gateway.types import Usage
from gateway.usage import AttemptFacts, CallContext, UsageRecorder

PRICES = """
version: "fine-1"
prices:
  - provider: openai
    model: gpt-4
    input_per_1m: "0.01875"
    output_per_1m: "0.01875"
"""


def test_stored_cost_rounds_half_up_to_ten_decimals_and_keeps_shorter_amounts_as_they_are() -> None:
    assert stored_cost(Decimal("0.00000020625")) == Decimal("0.0000002063")
    assert stored_cost(Decimal("0.00000020624")) == Decimal("0.0000002062")
    assert stored_cost(Decimal("0.000150")) == Decimal("0.000150")
    assert str(stored_cost(Decimal("0.000150"))) == "0.000150"  # not re-scaled
    assert stored_cost(Decimal("12.5")) == Decimal("12.5")
    assert stored_cost(Decimal(0)) == 0


async def test_a_cost_finer_than_the_stores_is_stored_as_it_was_announced(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES, encoding="utf-8")
    log = MemoryEventLog()
    recorder = UsageRecorder(log, load_price_book(prices), clock=lambda: datetime(2026, 3, 1, tzinfo=UTC))
    for i in range(2):
        ctx = CallContext(f"req_{i}", "tenant_a", None, "chat.completions", False, "gpt-4")
        recorder.record(ctx, AttemptFacts(1, "openai", "gpt-4", "success", 10.0, usage=Usage(5, 6)))
    costs = [event.cost_usd for event in log.events]
    # 11 tokens at 0.01875 per 1M = 0.00000020625, announced (header, cost line) and kept rounded
    assert costs == [Decimal("0.0000002063")] * 2
    assert [format_usd(cost) for cost in costs] == ["0.0000002063"] * 2
    assert all(cost is not None and -cost.as_tuple().exponent <= COST_DECIMALS for cost in costs)

    store = AnalyticsStore(tmp_path / "a.duckdb")
    sink = DuckDBSink(store)
    await sink.start()
    try:
        await sink.apply(log.events)
        [(total, daily)] = await store.fetchall(
            "SELECT (SELECT sum(cost_usd) FROM usage_facts), (SELECT sum(cost_usd) FROM usage_daily)"
        )
    finally:
        await store.close()
    assert total == daily == Decimal("0.0000004126") == sum(costs)


def test_a_cost_no_store_holds_is_recorded_as_unpriced_and_the_call_still_has_its_event(tmp_path: Path) -> None:
    """A price file's slip (a price per token entered as per million): 10**10 USD or more is
    beyond DECIMAL(20, 10) and NUMERIC(20, 10), and the usage event refuses it; built with it,
    the recorder raised and the call failed after it happened."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES.replace('output_per_1m: "0.01875"', 'output_per_1m: "30000000000000"'), encoding="utf-8")
    log = MemoryEventLog()
    recorder = UsageRecorder(log, load_price_book(prices), clock=lambda: datetime(2026, 3, 1, tzinfo=UTC))
    ctx = CallContext("req_big", "tenant_a", None, "chat.completions", False, "gpt-4")
    event = recorder.record(ctx, AttemptFacts(1, "openai", "gpt-4", "success", 10.0, usage=Usage(5, 400)))
    assert (event.cost_usd, event.billable, event.completion_tokens) == (None, True, 400)
    assert log.events == [event]
