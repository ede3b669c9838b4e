"""Repricing recorded events (the pure function) and the replayer over a fake log and an
in-memory DuckDB: unpriced events become priced once a price exists, exactly; failed attempts
stay at 0; the diff is exact; a second replay is a no-op; a replay without --reprice restores the
recorded costs; dry runs write nothing; ``full`` drops rows the log no longer has."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from analytics.store import AnalyticsStore
from consumers.replay import ProgressBar, Replayer, ReplayError, ReplayOptions, decode, render_report, store_money
from consumers.replay_http import options_from_body
from consumers.replay_sources import ReplayStart
from consumers.sinks.base import DistinctEvents, RejectedEvents, SinkError, latest_by_id
from consumers.sinks.duckdb import DuckDBSink
from gateway.errors import InvalidRequest
from gateway.eventlog.base import LogRecord, epoch_ms
from gateway.eventlog.memory import MemoryEventLog
from gateway.events import UsageEvent
from gateway.pricing.book import CompositePriceBook, book_from_document, load_price_book
from gateway.pricing.pricefile import load_price_file, price_document
from gateway.pricing.reprice import price_event, price_events, quote_models
from gateway.types import Usage
from gateway.usage import AttemptFacts, CallContext, UsageRecorder

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

PRICES = """\
version: ops-1
prices:
  - model: acme-llm-1
    input_per_1k: "0.0021"
    output_per_1k: "0.0063"
    cached_input_per_1k: 0.0005
"""

#: (tenant, tokens (prompt, completion, cached), exact cost with PRICES)
ACME_CALLS = [
    ("acme", (1000, 200, 0), Decimal("0.00336")),
    ("acme", (500, 100, 0), Decimal("0.00168")),
    ("acme", (123, 45, 0), Decimal("0.0005418")),
    ("globex", (2000, 300, 1000), Decimal("0.00449")),
    ("globex", (2000, 300, 1000), Decimal("0.00449")),
]


def price_file(tmp_path: Path, text: str = PRICES) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def record_scenario(recorder: UsageRecorder) -> None:
    """Calls of an unpriced model (acme-llm-1), a priced one, a rate-limited attempt and a stream
    cut before any usage, recorded the way the gateway records them."""
    for i, (tenant, (prompt, completion, cached), _) in enumerate(ACME_CALLS):
        ctx = CallContext(f"req_{i}", tenant, None, "chat.completions", False, "acme-llm-1")
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
        recorder.record(
            ctx, AttemptFacts(1, "openai", "acme-llm-1", "success", 120.0, served_model="acme-llm-1", usage=usage)
        )
    ctx = CallContext("req_gpt", "acme", None, "chat.completions", False, "gpt-4o")
    recorder.record(
        ctx,
        AttemptFacts(1, "openai", "gpt-4o", "success", 90.0, served_model="gpt-4o-2024-08-06", usage=Usage(1000, 100)),
    )
    ctx = CallContext("req_429", "globex", None, "chat.completions", False, "acme-llm-1")
    recorder.record(ctx, AttemptFacts(1, "openai", "acme-llm-1", "rate_limited", 15.0, http_status=429))
    ctx = CallContext("req_cut", "globex", None, "chat.completions", True, "acme-llm-1")
    recorder.record(ctx, AttemptFacts(1, "openai", "acme-llm-1", "stream_cut", 300.0, incomplete=True))


def scenario_events(book: CompositePriceBook | None = None) -> list[UsageEvent]:
    log = MemoryEventLog()
    record_scenario(UsageRecorder(log, book or load_price_book(None), clock=Clock()))
    return log.events


# --- the pure function --------------------------------------------------------------------------


def test_recorded_at_call_time_without_a_price_the_model_is_unpriced() -> None:
    events = scenario_events()
    acme = [e for e in events if e.outcome == "success" and e.provider_model == "acme-llm-1"]
    assert len(acme) == 5
    assert all(e.cost_usd is None and e.billable for e in acme)
    gpt = next(e for e in events if e.request_id == "req_gpt")
    assert gpt.cost_usd == Decimal("0.0035")  # built-in gpt-4o-2024-08-06: 1000 * 0.0025/1K + 100 * 0.01/1K


def test_price_event_prices_unpriced_events_exactly(tmp_path: Path) -> None:
    book = load_price_book(price_file(tmp_path))
    events = scenario_events()
    acme = [e for e in events if e.outcome == "success" and e.provider_model == "acme-llm-1"]

    repriced = price_events(acme, book)

    assert [e.cost_usd for e in repriced] == [cost for *_, cost in ACME_CALLS]
    assert all(e.price_version == book.version for e in repriced)
    assert book.version.endswith(load_price_file(price_file(tmp_path)).version)
    # the input is untouched: the log is immutable
    assert all(e.cost_usd is None for e in acme)
    # a priced event repriced with the same book is the same object (nothing to write)
    assert price_event(repriced[0], book) is repriced[0]


def test_failed_and_usage_less_attempts_keep_their_cost(tmp_path: Path) -> None:
    book = load_price_book(price_file(tmp_path))
    events = {e.request_id: e for e in scenario_events()}

    limited = price_event(events["req_429"], book)
    cut = price_event(events["req_cut"], book)

    assert limited is events["req_429"] and limited.cost_usd == Decimal(0) and not limited.billable
    # billed without counts, of a model the book prices: unknown still, with the version consulted
    assert (cut.cost_usd, cut.billable, cut.price_version) == (None, True, book.version)
    assert price_event(cut, book) is cut


LLAMA_PRICED = """\
version: ops-2
prices:
  - provider: ollama
    model: llama3
    input_per_1k: "0.0001"
    output_per_1k: "0.0002"
"""


def test_an_attempt_billed_without_counts_costs_what_its_model_costs_now(tmp_path: Path) -> None:
    """A stream of a free model (a local Ollama) cut before its usage is $0; once a price file
    prices the model, a reprice makes it unknown, as the recorder would now: it stayed $0, a
    free billable call of unknown usage (review). Back to free, it is $0 again."""
    free = load_price_book(None)
    log = MemoryEventLog()
    ctx = CallContext("req_llama", "acme", None, "chat.completions", True, "llama3")
    UsageRecorder(log, free, clock=Clock()).record(
        ctx, AttemptFacts(1, "ollama", "llama3", "stream_cut", 300.0, incomplete=True)
    )
    [recorded] = log.events
    assert (recorded.cost_usd, recorded.billable) == (Decimal(0), True)

    priced = load_price_book(price_file(tmp_path, LLAMA_PRICED))
    unknown = price_event(recorded, priced)
    assert (unknown.cost_usd, unknown.billable, unknown.price_version) == (None, True, priced.version)
    again = price_event(unknown, free)
    assert (again.cost_usd, again.price_version) == (Decimal(0), recorded.price_version)
    assert price_event(recorded, free) is recorded  # nothing changed


def test_a_recorded_cost_is_never_replaced_by_unpriced() -> None:
    book = load_price_book(None)
    event = scenario_events()[0].model_copy(update={"cost_usd": Decimal("0.5"), "price_version": "old"})
    assert price_event(event, book) is event


@pytest.mark.parametrize(
    ("prompt", "completion", "recorded"),
    [(-5, 100, Decimal("0.00033")), (-50, 100, Decimal("-0.00144")), (-5, 100, None), (-5, 0, Decimal("-0.0001"))],
)
def test_impossible_counts_an_older_gateway_recorded_reprice_as_unpriced(
    tmp_path: Path, prompt: int, completion: int, recorded: Decimal | None
) -> None:
    """Gateways before c1a6653 recorded an upstream's -5 prompt tokens as they came: a reprice
    priced the negative tokens, lowering the cost or making it negative money."""
    book = load_price_book(price_file(tmp_path))
    event = next(e for e in scenario_events() if e.request_id == "req_gpt")
    update = {"prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": recorded, "price_version": "old"}
    old = event.model_copy(update=update)
    repriced = price_event(old, book)
    assert repriced.cost_usd is None and repriced.billable


def test_each_source_prices_the_served_model_first_then_the_provider_model(tmp_path: Path) -> None:
    """Sources first, then models: the operator's entry for the model the gateway asked for (an
    Azure deployment, a custom name) beats the built-in rate of the model the vendor says served
    it. The served model was tried through every source first, so ``prod-gpt4o`` priced in the
    file was billed at the built-in gpt-4o rate when Azure answered ``gpt-4o-2024-08-06``."""
    book = load_price_book(price_file(tmp_path))
    usage = Usage(1000, 0)
    asked = quote_models(book, "openai", ["gpt-4o-2024-08-06", "acme-llm-1"], usage, T0)
    served = quote_models(book, "openai", ["acme-llm-1", "gpt-4o-2024-08-06"], usage, T0)
    builtin = quote_models(book, "openai", ["gpt-4o-2024-08-06", "unknown-model-x"], usage, T0)
    fallback = quote_models(book, "openai", [None, "unknown-model-x", "acme-llm-1"], usage, T0)
    nothing = quote_models(book, "openai", [None, ""], usage, T0)

    assert (asked.cost, asked.source) == (Decimal("0.0021"), "file")
    assert (served.cost, served.source) == (Decimal("0.0021"), "file")
    assert (builtin.cost, builtin.source) == (Decimal("0.0025"), "builtin")
    assert (fallback.cost, fallback.source) == (Decimal("0.0021"), "file")
    # past the file, the served model first through every source: the built-in rate of the
    # deployment's name (gpt-4) billed a gpt-4o-mini call 120x over (a diff review)
    mini = quote_models(book, "azure", ["gpt-4o-mini-2024-07-18", "gpt-4"], Usage(1000, 1000), T0)
    assert mini.source == "genai-prices" and mini.cost == (1000 * Decimal("0.15") + 1000 * Decimal("0.6")) / 1_000_000
    assert (nothing.cost, nothing.source, nothing.price_version) == (None, "unpriced", book.version)
    # a local model priced in the file by its name beats "free", whatever tag the server names
    ollama = quote_models(book, "ollama", ["acme-llm-1:latest", "acme-llm-1"], usage, T0)
    assert (ollama.cost, ollama.source) == (Decimal("0.0021"), "file")
    assert quote_models(book, "ollama", ["llama3:latest", "llama3"], usage, T0).source == "free"


def test_prices_apply_at_the_events_time(tmp_path: Path) -> None:
    events = [e for e in scenario_events() if e.provider_model == "acme-llm-1" and e.outcome == "success"]
    later = PRICES + f'    effective_from: "{events[2].created_at.isoformat()}"\n'
    book = load_price_book(price_file(tmp_path, later))

    costs = [price_event(e, book).cost_usd for e in events]

    assert costs[:2] == [None, None]
    assert costs[2:] == [cost for *_, cost in ACME_CALLS[2:]]


# --- decoding -----------------------------------------------------------------------------------


def test_decode_matches_from_json_and_refuses_what_it_refuses() -> None:
    for event in scenario_events():
        assert decode(event.to_json()) == UsageEvent.from_json(event.to_json())
    raw = scenario_events()[0].to_json()
    with pytest.raises(ValueError, match="float"):
        decode(raw.replace(b'"cost_usd":null', b'"cost_usd":0.1'))
    with pytest.raises(ValueError, match="schema_version"):
        decode(raw.replace(b'"schema_version":1', b'"schema_version":99'))
    with pytest.raises(ValueError, match="schema_version"):
        decode(raw.replace(b'{"schema_version":1,', b"{"))
    with pytest.raises(ValueError, match="timezone"):
        decode(raw.replace(b'+00:00"', b'"', 1).replace(b'Z"', b'"', 1))


# --- the price file travels to the service as a document ---------------------------------------


def test_price_document_round_trips_to_the_same_version(tmp_path: Path) -> None:
    other = '  - model: other\n    provider: anthropic\n    input_per_1m: 3\n    output_per_1m: "15"\n'
    text = PRICES + "    effective_from: 2026-01-01\n" + other
    original = load_price_file(price_file(tmp_path, text))

    book = book_from_document(price_document(original))

    assert isinstance(book, CompositePriceBook) and book.file_prices is not None
    assert book.file_prices.version == original.version
    assert book.file_prices.entries == original.entries


def test_request_body_validation() -> None:
    options = options_from_body({"since": "2026-03-01T00:00:00Z", "reprice": True})
    assert options.since == datetime(2026, 3, 1, tzinfo=UTC) and options.reprice
    assert options_from_body({"prices": {"prices": []}}).reprice
    with pytest.raises(InvalidRequest, match=r"^'full' rebuilds from the beginning"):  # the body's words
        options_from_body({"full": True, "since": "2026-03-01"})
    with pytest.raises(InvalidRequest, match=r"^give 'since' or 'fromPosition', not both$"):
        options_from_body({"since": "2026-03-01", "fromPosition": "3"})
    with pytest.raises(InvalidRequest):
        options_from_body({"reprice": "yes"})
    with pytest.raises(InvalidRequest):
        options_from_body({"unknown": 1})


# --- the replayer -------------------------------------------------------------------------------


class FakeSource:
    """A log of events in memory, read as the replay sources read: a fixed range, no group."""

    def __init__(self, events: Sequence[UsageEvent], *, committed: int | None = None) -> None:
        self.records = [
            LogRecord(str(i + 1), e.to_json(), e.tenant_id, epoch_ms(e.created_at)) for i, e in enumerate(events)
        ]
        self.committed = len(self.records) if committed is None else committed
        self.total = 0
        self.first = self.last = "-"
        self.trimmed: str | None = None
        self._pending: list[LogRecord] = []
        self.opened = self.closed = 0

    async def open(self, start: ReplayStart) -> None:
        self.opened += 1
        records = self.records
        if start.since is not None:
            records = [r for r in records if r.timestamp is not None and r.timestamp >= start.since]
        self._pending = list(records)
        self.total = len(records)
        self.first, self.last = "seq 1", f"seq {len(self.records)}"

    async def fetch(self, max_records: int) -> list[bytes]:
        batch, self._pending = self._pending[:max_records], self._pending[max_records:]
        return [record.value for record in batch]

    async def behind(self, group_id: str) -> int:
        return len(self.records) - self.committed

    async def close(self) -> None:
        self.closed += 1


async def facts(store: AnalyticsStore) -> list[tuple[Any, ...]]:
    return await store.fetchall(
        "SELECT event_id, tenant_id, outcome, cost_usd, price_version FROM usage_facts ORDER BY event_id"
    )


async def cost_of(store: AnalyticsStore, tenant: str, model: str) -> tuple[Decimal, int]:
    rows = await store.fetchall(
        "SELECT coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL AND billable) "
        "FROM llm_usage WHERE tenant_id = ? AND model = ?",
        [tenant, model],
    )
    return rows[0][0], rows[0][1]


def replayer(source: FakeSource, store: AnalyticsStore, book: CompositePriceBook | None = None, **kw: Any) -> Replayer:
    return Replayer(source, store, [DuckDBSink(store)], price_book=book, batch_size=3, **kw)


async def test_reprice_makes_unpriced_events_priced_and_a_second_replay_is_a_no_op(
    store: AnalyticsStore, tmp_path: Path
) -> None:
    events = scenario_events()
    source = FakeSource(events)
    recorded = await replayer(source, store).run(ReplayOptions())
    assert (recorded.added, recorded.unpriced_after) == (len(events), 6)
    assert await cost_of(store, "acme", "acme-llm-1") == (Decimal(0), 3)

    book = load_price_book(price_file(tmp_path))
    report = await replayer(source, store, book).run(ReplayOptions(reprice=True))

    assert await cost_of(store, "acme", "acme-llm-1") == (Decimal("0.0055818"), 0)
    assert await cost_of(store, "globex", "acme-llm-1") == (Decimal("0.00898"), 1)  # the cut stream stays unpriced
    assert await cost_of(store, "acme", "gpt-4o-2024-08-06") == (Decimal("0.0035"), 0)
    # gpt-4o: the same cost, a new version; the cut stream: unknown still, stamped with the version consulted
    assert (report.repriced, report.cost_changed, report.added) == (7, 5, 0)
    # the summary says which changes are a price version alone (an upgrade review read "changed
    # 446" where every delta was +0)
    assert report.version_changed == 2 and report.changed == 7
    text = render_report(report.to_dict())
    assert "same cost at a new price version 2" in text
    # the table lists the pairs whose money changed: gpt-4o's cost stayed (its version alone
    # changed), and the table still listed it with a delta of +0 (re-test)
    assert "1 tenant/model pairs changed no cost" in text
    table = text.split("cost changes by tenant and model (USD):")[1]
    assert "gpt-4o-2024-08-06" not in table and "acme-llm-1" in table
    assert (report.unpriced_before, report.unpriced_after) == (6, 1)
    assert report.price_version == book.version
    diff = {(d.tenant_id, d.model): d for d in report.diff}
    assert set(diff) == {("acme", "acme-llm-1"), ("globex", "acme-llm-1"), ("acme", "gpt-4o-2024-08-06")}
    acme = diff[("acme", "acme-llm-1")]
    assert (acme.old_cost, acme.new_cost, acme.delta) == (Decimal(0), Decimal("0.0055818"), Decimal("0.0055818"))
    assert (acme.unpriced_before, acme.unpriced_after, acme.changed) == (3, 0, 3)
    gpt = diff[("acme", "gpt-4o-2024-08-06")]
    assert (gpt.old_cost, gpt.new_cost, gpt.changed) == (Decimal("0.0035"), Decimal("0.0035"), 1)
    prices = await store.fetchall(
        "SELECT DISTINCT price_version FROM usage_facts WHERE billable AND cost_usd IS NOT NULL"
    )
    assert prices == [(book.version,)]
    text = render_report(report.to_dict())
    assert "acme-llm-1" in text and "+0.0055818" in text and "3 -> 0" in text

    before = await facts(store)
    again = await replayer(source, store, book).run(ReplayOptions(reprice=True))

    assert await facts(store) == before
    assert (again.changed, again.diff, again.events_applied) == (0, [], len(events))
    assert again.repriced == 7  # relative to the log, which still says unpriced
    assert "no cost changes" in render_report(again.to_dict())


async def test_a_replay_without_reprice_restores_the_recorded_costs(store: AnalyticsStore, tmp_path: Path) -> None:
    source = FakeSource(scenario_events())
    book = load_price_book(price_file(tmp_path))
    await replayer(source, store, book).run(ReplayOptions(reprice=True))

    report = await replayer(source, store).run(ReplayOptions())

    assert await cost_of(store, "acme", "acme-llm-1") == (Decimal(0), 3)
    assert report.cost_changed == 5
    assert any("recorded on the log" in w for w in report.warnings)


async def test_a_dry_run_writes_nothing_and_reports_the_diff(store: AnalyticsStore, tmp_path: Path) -> None:
    source = FakeSource(scenario_events())
    await replayer(source, store).run(ReplayOptions())
    before = await facts(store)

    report = await replayer(source, store, load_price_book(price_file(tmp_path))).run(
        ReplayOptions(reprice=True, dry_run=True)
    )

    assert await facts(store) == before
    assert report.events_applied == 0 and report.cost_changed == 5
    assert {(d.tenant_id, d.new_cost) for d in report.diff if d.model == "acme-llm-1"} == {
        ("acme", Decimal("0.0055818")),
        ("globex", Decimal("0.00898")),
    }


async def test_full_rebuild_drops_rows_the_log_no_longer_has_only_when_told(
    store: AnalyticsStore, tmp_path: Path
) -> None:
    """Events the stores hold and the log does not (past Kafka's retention, or another log's after
    a switch between the embedded log and Kafka): ``full`` refuses, changing nothing, unless told
    to drop them (a review's ``--full`` after a switch to Kafka removed 1,860 events' money from
    DuckDB and the platform's table, said ``changed 0`` and exited 0)."""
    events = scenario_events()
    await replayer(FakeSource(events), store).run(ReplayOptions())
    shorter = FakeSource(events[2:])  # retention removed the first two records
    book = load_price_book(price_file(tmp_path))
    for dry_run in (False, True):
        with pytest.raises(ReplayError, match=r"would remove 2 events \(\$0.000000 and 2 unpriced\).*--drop-missing"):
            await replayer(shorter, store, book).run(ReplayOptions(reprice=True, full=True, dry_run=dry_run))
        assert len(await facts(store)) == len(events)  # nothing changed

    dry = await replayer(shorter, store, book).run(
        ReplayOptions(reprice=True, full=True, drop_missing=True, dry_run=True)
    )
    assert "would remove 2 events ($0.000000 and 2 unpriced)" in " ".join(dry.warnings)
    assert len(await facts(store)) == len(events)
    report = await replayer(shorter, store, book).run(ReplayOptions(reprice=True, full=True, drop_missing=True))

    rows = await facts(store)
    assert len(rows) == len(events) - 2
    assert any("removed 2 events" in warning for warning in report.warnings)
    acme = next(d for d in report.diff if (d.tenant_id, d.model) == ("acme", "acme-llm-1"))
    assert (acme.removed, acme.events, acme.new_cost) == (2, 1, Decimal("0.0005418"))
    assert (acme.unpriced_before, acme.unpriced_after) == (3, 0)
    assert await store.fetchall("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'replay_before_%'") == [
        (0,)
    ]


async def test_since_replays_only_later_events(store: AnalyticsStore, tmp_path: Path) -> None:
    events = scenario_events()
    await replayer(FakeSource(events), store).run(ReplayOptions())

    report = await replayer(FakeSource(events), store, load_price_book(price_file(tmp_path))).run(
        ReplayOptions(reprice=True, since=events[3].created_at)
    )

    assert report.events == len(events) - 3
    assert await cost_of(store, "acme", "acme-llm-1") == (Decimal(0), 3)  # before `since`: untouched
    assert await cost_of(store, "globex", "acme-llm-1") == (Decimal("0.00898"), 1)


async def test_full_is_not_refused_for_events_the_live_projector_stores_during_its_check(store: AnalyticsStore) -> None:
    """The check reads the log up to its end when it starts; events appended and projected by the
    live gateway meanwhile are past that end: they were counted as held by the stores and not by
    the log, and a busy gateway's --full was refused (a diff review)."""
    events = scenario_events()
    await replayer(FakeSource(events[:5]), store).run(ReplayOptions())

    class Busy(FakeSource):
        """The log as the gateway appends to it: 5 events when the check opens it, 7 after."""

        async def open(self, start: ReplayStart) -> None:
            await super().open(start)
            if self.opened == 1:
                self._pending, self.total = self._pending[:5], 5

        async def fetch(self, max_records: int) -> list[bytes]:
            if self.opened == 1 and len(self._pending) == 5:  # the check's first read
                await DuckDBSink(store).apply(DistinctEvents(events[5:7]))  # the live projector
            return await super().fetch(max_records)

    report = await replayer(Busy(events[:7]), store).run(ReplayOptions(full=True))
    assert report.events == 7 and not report.warnings


async def test_options_are_checked(store: AnalyticsStore) -> None:
    with pytest.raises(ReplayError, match="--full"):
        await replayer(FakeSource([]), store).run(ReplayOptions(full=True, from_position="3"))
    with pytest.raises(ReplayError, match="--drop-missing goes with --full"):
        await replayer(FakeSource([]), store).run(ReplayOptions(drop_missing=True))
    with pytest.raises(ReplayError, match="price book"):
        await replayer(FakeSource([]), store).run(ReplayOptions(reprice=True))


async def test_a_lagging_live_projector_is_reported(store: AnalyticsStore, tmp_path: Path) -> None:
    events = scenario_events()
    source = FakeSource(events, committed=5)

    report = await replayer(source, store, load_price_book(price_file(tmp_path)), live_group="live").run(
        ReplayOptions(reprice=True)
    )

    assert report.live_behind == len(events) - 5
    # the live projector keeps what the replay stored when it gets there: nothing to warn of
    assert not any("'live'" in w for w in report.warnings)
    assert (source.opened, source.closed) == (1, 1)


class Flaky:
    """A sink that is unavailable for its first ``failures`` applies and refuses one event."""

    name = "flaky"

    def __init__(self, failures: int, refuse: str) -> None:
        self.failures = failures
        self.refuse = refuse
        self.applied: list[str] = []

    async def start(self) -> None:
        return None

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError(self.name, "down")
        if any(e.event_id == self.refuse for e in events):
            raise RejectedEvents(self.name, "out of range")
        self.applied += [e.event_id for e in events]

    async def reset(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_unavailable_sinks_are_retried_and_refused_events_skipped(store: AnalyticsStore) -> None:
    events = scenario_events()
    flaky = Flaky(failures=2, refuse=events[4].event_id)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    report = await Replayer(FakeSource(events), store, [DuckDBSink(store), flaky], batch_size=100, sleep=sleep).run(
        ReplayOptions()
    )

    assert sleeps == [0.5, 1.0]
    assert flaky.applied == [e.event_id for e in events if e.event_id != events[4].event_id]
    assert report.refused == 1 and report.events_applied == len(events) - 1


async def test_a_sink_down_for_good_stops_the_replay(store: AnalyticsStore) -> None:
    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(ReplayError, match="run it again"):
        await Replayer(
            FakeSource(scenario_events()), store, [Flaky(failures=99, refuse="")], retries=2, sleep=sleep
        ).run(ReplayOptions())


def test_progress_bar_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    bar = ProgressBar(quiet)
    bar(5, 10)
    bar.finish()
    assert quiet.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(tty, width=10)
    bar(10, 10)
    bar.finish()
    assert "[##########] 10/10" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_store_money_rounds_like_the_stores() -> None:
    assert store_money(Decimal("0.00000000005")) == Decimal("1E-10")
    assert store_money(Decimal("-0.00000000005")) == Decimal("-1E-10")
    assert store_money(None) is None


class Recording:
    """A sink that records what it was asked to do (stands in for the health-history sink)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []

    async def start(self) -> None:
        return None

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.calls.append(f"apply {len(events)}")

    async def reset(self) -> None:
        self.calls.append("reset")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("options", "calls"),
    [
        (ReplayOptions(), []),
        (ReplayOptions(reprice=True), []),
        (ReplayOptions(health=True), ["apply 8"]),
        (ReplayOptions(full=True), ["reset", "apply 8"]),
        (ReplayOptions(full=True, dry_run=True), []),
        (ReplayOptions(from_position="2"), []),
    ],
)
async def test_the_health_history_is_rebuilt_by_full_or_when_asked(
    store: AnalyticsStore, tmp_path: Path, options: ReplayOptions, calls: list[str]
) -> None:
    health = Recording("health_history")
    book = load_price_book(price_file(tmp_path))

    report = await Replayer(FakeSource(scenario_events()), store, [DuckDBSink(store), health], price_book=book).run(
        options
    )

    assert health.calls == calls
    assert report.health_rebuilt == bool(calls)


def test_health_cannot_be_rebuilt_from_the_middle_nor_left_out_of_a_full_rebuild() -> None:
    with pytest.raises(ReplayError, match="beginning"):
        ReplayOptions(health=True, since=T0).check()
    with pytest.raises(ReplayError, match="--full"):
        ReplayOptions(health=False, full=True).check()


class Keeping(Recording):
    """A sink that keeps the batches it is given."""

    def __init__(self) -> None:
        super().__init__("keeping")
        self.batches: list[Sequence[UsageEvent]] = []

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.batches.append(events)


async def test_an_event_twice_on_the_log_reaches_the_sinks_once_the_last_copy_winning(store: AnalyticsStore) -> None:
    events = scenario_events()
    later = events[2].model_copy(update={"cost_usd": Decimal("0.5"), "price_version": "later"})
    keeping = Keeping()
    sinks = [DuckDBSink(store), keeping]
    report = await Replayer(FakeSource([*events, later]), store, sinks, batch_size=100).run(ReplayOptions())

    [batch] = keeping.batches
    assert isinstance(batch, DistinctEvents)  # the sinks need not check again
    assert latest_by_id(batch) is batch
    assert [e.event_id for e in batch] == [e.event_id for e in events]
    assert batch[2] == later
    assert report.events == report.events_applied == len(events)
    stored = await store.fetchall(
        "SELECT cost_usd, price_version FROM usage_facts WHERE event_id = ?", [later.event_id]
    )
    assert stored == [(Decimal("0.5"), "later")]


@pytest.mark.parametrize("position", ["0", "-3", "\u00b2", "\u0661", "x"])
async def test_an_embedded_replay_position_is_a_record_number_in_ascii_digits(tmp_path: Path, position: str) -> None:
    from consumers.replay_sources import ReplayRangeError, SqliteReplaySource

    with pytest.raises(ReplayRangeError, match="record numbers >= 1"):
        await SqliteReplaySource(tmp_path / "events.sqlite3").open(ReplayStart(from_position=position))


@pytest.mark.parametrize("text", ["0:1,\u00b2:5", "0:\u0661", "0", "a:1"])
def test_kafka_replay_positions_are_ascii_partition_offset_pairs(text: str) -> None:
    from consumers.replay_sources import ReplayRangeError, _kafka_positions

    with pytest.raises(ReplayRangeError, match="partition:offset pairs"):
        _kafka_positions(text)
    assert _kafka_positions(" 0:120, 2:98") == {0: 120, 2: 98}


async def test_a_full_replay_covers_what_a_live_projector_wrote_before_the_stores_were_emptied(
    store: AnalyticsStore,
) -> None:
    """The live gateway keeps logging and projecting while a full replay starts: events it wrote
    after the replay first measured the log, and which the reset then deleted, are replayed."""
    events = scenario_events()
    early, late = events[:5], events[5:]
    source = FakeSource(early)
    duck = DuckDBSink(store)
    reset = duck.reset

    async def live_projector_then_reset() -> None:  # between the first measure and the reset
        source.records += FakeSource(events).records[len(early) :]
        await duck.apply(late)
        await reset()

    duck.reset = live_projector_then_reset  # type: ignore[method-assign]
    report = await Replayer(source, store, [duck], batch_size=3).run(ReplayOptions(full=True))

    rows = await store.fetchall("SELECT event_id FROM usage_facts")
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert report.last == f"seq {len(events)}" and source.opened == 2 == source.closed


def test_the_report_table_lists_the_pairs_whose_stored_rows_were_re_costed() -> None:
    """A pair with new rows only was listed as a cost change (its new rows' cost counted as a
    delta), and one whose re-costed rows offset each other was hidden (re-test)."""
    from consumers.replay_report import KeyDiff, ReplayReport

    report = ReplayReport(events=6)
    report.by_key[("t1", "gpt-4o")] = KeyDiff("t1", "gpt-4o", Decimal("0.3"), Decimal("0.5"), 5, 2, added=2)
    offset = KeyDiff("t2", "haiku", Decimal("0.2"), Decimal("0.2"), 2, 2, cost_changed=2, cost_delta=Decimal(0))
    report.by_key[("t2", "haiku")] = offset
    text = render_report(report.to_dict())
    assert "1 tenant/model pairs changed no cost" in text
    table = text.split("cost changes by tenant and model (USD):")[1]
    assert "t2" in table and "haiku" in table and "t1" not in table
