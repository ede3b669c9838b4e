"""Budgets: the settings (exact amounts, periods), and the ledger that derives each tenant's
spend of the current period from usage events."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.budgets import ledger as ledger_module
from gateway.budgets import snapshot
from gateway.budgets.config import Budget, BudgetSettings
from gateway.budgets.ledger import SpendLedger
from gateway.errors import BudgetExceeded
from gateway.event_json import event_id_of
from gateway.eventlog.retention import trim
from gateway.eventlog.sqlite import ensure_log_table, epoch_ms, first_seq_since
from gateway.settings import Settings
from tests.support.events import usage_event


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def spend(tenant: str, cost: str | None, at: datetime, event_id: str | None = None) -> Any:
    extra: dict[str, Any] = {"event_id": event_id} if event_id else {}
    return usage_event(tenant, None if cost is None else Decimal(cost), at, **extra)


@pytest.mark.parametrize(
    ("given", "exact"),
    [
        ("49.99", Decimal("49.99")),
        ("12345678.123456789", Decimal("12345678.123456789")),
        (50, Decimal(50)),
        ("0", Decimal(0)),
    ],
)
def test_amounts_are_exact_whatever_their_spelling(given: Any, exact: Decimal) -> None:
    budget = Budget(usd=given)
    assert budget.usd == exact and str(budget.usd) == str(exact)


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ({"usd": "-1"}, "not an amount"),
        ({"usd": "NaN"}, "not an amount"),
        ({"usd": "Infinity"}, "not an amount"),
        ({"usd": "1000000000.01"}, "from 0 to"),
        ({"usd": "fifty"}, "not an amount"),
        ({"usd": "1_000"}, "not an amount"),
        ({"usd": " 5"}, "not an amount"),
        ({"usd": "1e3"}, "not an amount"),
        ({"usd": -1}, "from 0 to"),
        ({"usd": 1000000001}, "from 0 to"),
        # a number with a fraction was a float before it reached us: 12345678.12345679
        ({"usd": 12345678.123456789}, "as a string"),
        ({"usd": 1000000000.0000000001}, "as a string"),
        ({"usd": True}, "as a string or an integer"),
        ({"usd": "5", "period": "week"}, "'day' or 'month'"),
        ({"usd": "5", "every": "day"}, "Extra inputs"),
    ],
)
def test_a_bad_budget_is_refused_with_its_reason(given: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Budget(**given)


def test_budgets_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLM_GATEWAY_BUDGETS", '{"tenants": {"acme": {"usd": "12.50", "period": "day"}}, "default": {"usd": 3}}'
    )
    budgets = Settings(_env_file=None).budgets  # type: ignore[call-arg]
    assert budgets.enabled
    assert budgets.for_tenant("acme") == Budget(usd=Decimal("12.50"), period="day")
    assert budgets.for_tenant("anyone else") == Budget(usd=Decimal(3), period="month")


def test_no_budget_is_the_default() -> None:
    assert not Settings(_env_file=None).budgets.enabled  # type: ignore[call-arg]


@pytest.mark.parametrize("tenant", [" acme", "acme ", "tab\tx", "line\nbreak", "", "x" * 513])
def test_a_tenant_id_no_call_could_bill_is_refused(tenant: str) -> None:
    with pytest.raises(ValidationError, match="not a tenant id"):
        BudgetSettings(tenants={tenant: Budget(usd=1)})


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        ("day", "2026-12-31T23:59:59+00:00", "2026-12-31T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("month", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("month", "2027-02-14T08:00:00+00:00", "2027-02-01T00:00:00+00:00", "2027-03-01T00:00:00+00:00"),
        # a time given in another zone is placed by its UTC instant
        ("day", "2026-12-01T20:00:00-05:00", "2026-12-02T00:00:00+00:00", "2026-12-03T00:00:00+00:00"),
    ],
)
def test_periods_are_utc_calendar_days_and_months(period: str, at: str, start: str, end: str) -> None:
    budget = Budget(usd=1, period=period)  # type: ignore[arg-type]
    began = budget.period_start(datetime.fromisoformat(at))
    assert began == datetime.fromisoformat(start)
    assert budget.period_end(began) == datetime.fromisoformat(end)


NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def test_the_ledger_sums_a_tenants_priced_events_of_the_period_exactly() -> None:
    ledger = SpendLedger(BudgetSettings(tenants={"acme": Budget(usd="0.3")}), clock=Clock(NOW))
    for cost in ("0.1", "0.1", None, "0"):  # unpriced and free attempts add nothing
        ledger.observe(spend("acme", cost, NOW))
    ledger.observe(spend("acme", "5", NOW - timedelta(days=30)))  # last month's
    ledger.observe(spend("other", "5", NOW))  # no budget: not tracked
    standing = ledger.standing("acme")
    assert standing is not None
    assert (standing.spent, standing.remaining, standing.exceeded) == (Decimal("0.2"), Decimal("0.1"), False)
    ledger.check("acme")
    ledger.observe(spend("acme", "0.1", NOW))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.check("acme")
    assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota" and refused.value.client_should_retry is False
    assert "$0.300000 spent of $0.300000" in refused.value.message
    assert "2027-01-01T00:00:00Z" in refused.value.message
    assert ledger.standing("other") is None and ledger.tenants() == ["acme"]
    ledger.check("other")


def test_a_new_period_starts_from_nothing_and_an_event_ahead_of_the_clock_waits_for_it() -> None:
    clock = Clock(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=1, period="day")), clock=clock)
    ledger.observe(spend("acme", "1", clock.now))
    # a replica whose clock is a minute ahead: its call belongs to tomorrow
    ledger.observe(spend("acme", "0.25", datetime(2027, 1, 1, 0, 0, 30, tzinfo=UTC)))
    # a clock a year ahead is no budget of now
    ledger.observe(spend("acme", "100", datetime(2028, 1, 1, tzinfo=UTC)))
    with pytest.raises(BudgetExceeded):
        ledger.check("acme")
    clock.now = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    ledger.check("acme")
    standing = ledger.standing("acme")
    assert standing is not None and standing.spent == Decimal("0.25")


def test_a_budget_of_zero_refuses_every_call() -> None:
    ledger = SpendLedger(BudgetSettings(tenants={"frozen": Budget(usd=0)}), clock=Clock(NOW))
    with pytest.raises(BudgetExceeded):
        ledger.check("frozen")


def test_own_events_coming_back_from_the_log_count_once_and_only_the_log_confirms() -> None:
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=100)), clock=Clock(NOW))
    own, later = spend("acme", "1.5", NOW), spend("acme", "0.5", NOW)
    ledger.observe(own)
    ledger.observe(later)
    assert ledger.confirmed() == {}  # counted, not yet on the log
    ledger.observe_record(own.to_json())  # its record: known by its id
    ledger.observe_record(spend("acme", "2", NOW).to_json())  # another replica's
    ledger.observe_record(b'{"schema_version":1,"event_id":"x","tenant_id":')  # unreadable
    ledger.observe_record(None)  # a tombstone
    ledger.observe(spend("acme", "1", NOW, event_id="own-2"))
    ledger.observe_record(b'{"schema_version":1,"event_id":"own-2","cut here')  # known by its id: not decoded
    standing = ledger.standing("acme")
    assert standing is not None and standing.spent == Decimal("5")
    assert ledger.unreadable == 1
    key = ("month", datetime(2026, 12, 1, tzinfo=UTC))
    assert ledger.confirmed() == {"acme": {key: Decimal("4.5")}}  # ``later`` is still pending
    # a record the log holds twice (a spool sent again after a crash) counts once
    ledger.observe_record(own.to_json())
    twice = spend("acme", "7", NOW)
    ledger.observe_record(twice.to_json())
    ledger.observe_record(twice.to_json())
    assert ledger.confirmed() == {"acme": {key: Decimal("11.5")}} and ledger.duplicates == 2


def test_a_record_sent_again_after_a_restart_counts_once_through_the_snapshots_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger_module, "RECENT_IDS", 3)
    monkeypatch.setattr(ledger_module, "SNAPSHOT_IDS", 2)
    config = BudgetSettings(default=Budget(usd=100))
    before = SpendLedger(config, clock=Clock(NOW))
    records = [spend("acme", "1", NOW).to_json() for _ in range(4)]
    for raw in records:
        before.observe_record(raw)
    assert len(before.recent) == 3 and before.recent_ids() == [event_id_of(r) for r in records[-2:]]
    after = SpendLedger(config, clock=Clock(NOW))
    after.restore(before.confirmed(), before.recent_ids())
    after.observe_record(records[-1])  # the last one, sent again
    after.observe_record(records[0])  # one past the ids kept: counted a second time (documented)
    assert after.standing("acme").spent == Decimal(5)  # type: ignore[union-attr]


def test_without_a_log_to_follow_own_events_are_not_kept_pending() -> None:
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=100)), clock=Clock(NOW))
    ledger.follows_log = False
    ledger.observe(spend("acme", "1", NOW))
    assert ledger.confirmed() == {"acme": {("month", datetime(2026, 12, 1, tzinfo=UTC)): Decimal(1)}}


def test_a_restored_snapshot_adds_only_the_current_periods_of_each_budget(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.budgets")
    ledger = SpendLedger(
        BudgetSettings(tenants={"daily": Budget(usd=9, period="day")}, default=Budget(usd=9)), clock=Clock(NOW)
    )
    ledger.observe(spend("acme", "1", NOW))
    december, november = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    ledger.restore(
        {
            "acme": {("month", december): Decimal("2"), ("month", november): Decimal("50")},
            # its budget was monthly when the snapshot was made: December 1st is not today
            "daily": {("month", december): Decimal("7"), ("day", datetime(2026, 12, 15, tzinfo=UTC)): Decimal("3")},
        }
    )
    assert [ledger.standing(t).spent for t in ("acme", "daily")] == [Decimal(3), Decimal(3)]  # type: ignore[union-attr]
    # taken as written: what it gave is said (a hand-edited file's spend can be traced to it)
    assert "budgets: the snapshot gave 2 tenants' spend of their periods, $5.000000 in all" in caplog.messages


def test_a_snapshot_is_used_only_for_its_log_and_its_budgets(tmp_path: Path) -> None:
    config = BudgetSettings(default=Budget(usd=9))
    spent = {"acme": {("month", datetime(2026, 12, 1, tzinfo=UTC)): Decimal("0.0000125")}}
    path = tmp_path / "budgets.json"
    saved = snapshot.Snapshot("sqlite", {0: 42}, spent, {0: "evt-42"}, ["evt-41", "evt-42"])
    snapshot.save(path, saved, config)
    assert path.stat().st_mode & 0o777 == 0o600  # taken as written: the gateway user's alone
    assert snapshot.load(path, config, "sqlite") == saved
    assert snapshot.load(path, config, "kafka:llm.usage") is None
    assert snapshot.load(path, BudgetSettings(default=Budget(usd=10)), "sqlite") is None
    assert snapshot.load(tmp_path / "none.json", config, "sqlite") is None
    path.write_text('{"version": 1, "config": "' + snapshot.fingerprint(config) + '", "log": "sqlite"}')
    assert snapshot.load(path, config, "sqlite") is None  # no positions: unreadable
    path.write_text("{not json")
    assert snapshot.load(path, config, "sqlite") is None

    # an amount no snapshot writes made the start raise (NaN), or refused a tenant (Infinity)
    def written(amount: str, start: str = "2026-12-01T00:00:00+00:00") -> dict[str, Any]:
        return {
            "version": snapshot.VERSION,
            "config": snapshot.fingerprint(config),
            "log": "sqlite",
            "positions": {"0": 42},
            "checks": {"0": "e"},
            "recent": [],
            "spent": [["acme", "month", start, amount]],
        }

    for amount in ("NaN", "Infinity", "-1", "0"):
        path.write_text(json.dumps(written(amount)))
        assert snapshot.load(path, config, "sqlite") is None, amount
    path.write_text(json.dumps(written("1", "2026-12-01T00:00:00")))
    assert snapshot.load(path, config, "sqlite") is None  # a period start without its zone
    path.write_text(json.dumps(written("1")))
    assert snapshot.load(path, config, "sqlite") is not None


def test_the_first_record_of_a_period_is_found_by_bisection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "log.sqlite3")
    ensure_log_table(conn, "events")
    assert first_seq_since(conn, 1000) is None
    conn.executemany("INSERT INTO events (seq, value, ts) VALUES (?, x'00', ?)", [(s, s * 10) for s in range(5, 400)])
    assert first_seq_since(conn, 1000) == 100
    assert first_seq_since(conn, 0) == 5
    assert first_seq_since(conn, 10_000) == 399  # past the end: the last record, read and judged


def test_the_refusals_are_logged_once_a_window_per_tenant(caplog: pytest.LogCaptureFixture) -> None:
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=0)), clock=Clock(NOW))
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            ledger.check("acme")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.budgets"]
    assert lines == [
        "budget exceeded: tenant acme spent $0.000000 of its monthly $0.000000; its calls are refused "
        "until 2027-01-01T00:00:00Z"
    ]
    ledger.refusals.flush()
    assert "2 more calls refused" in caplog.records[-1].getMessage()
    # JSON logs: the values as fields (money as text)
    from tests.support.logs import fields

    assert fields(caplog, "gateway.budgets") == [
        {
            "tenantId": "acme",
            "period": "month",
            "spentUsd": "0.000000",
            "limitUsd": "0.000000",
            "resetsAt": "2027-01-01T00:00:00Z",
            "more": 0,
        },
        {"tenantId": "acme", "count": 2},
    ]


async def test_a_log_trimmed_past_the_periods_start_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An earlier, shorter log retention deleted part of the month: the spend before the log's
    first record cannot be counted, and the start says so (a review saw a quarter of it counted)."""
    from gateway.budgets.follow import SqliteBudgetFollower

    caplog.set_level(logging.WARNING, logger="gateway.budgets")
    path = tmp_path / "events.sqlite3"
    conn = sqlite3.connect(path)
    ensure_log_table(conn, "events")
    for day in (2, 10, 14):  # a 10-day retention took December 2nd
        event = spend("acme", "1", datetime(2026, 12, day, tzinfo=UTC))
        conn.execute(
            "INSERT INTO events (key, value, ts) VALUES ('acme', ?, ?)", (event.to_json(), epoch_ms(event.created_at))
        )
    conn.execute("CREATE TABLE positions (group_id TEXT PRIMARY KEY, position INTEGER NOT NULL)")
    conn.execute("INSERT INTO positions VALUES ('g', 3)")
    conn.commit()
    conn.close()
    assert trim(path, datetime(2026, 12, 5, tzinfo=UTC)).deleted == 1
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=100)), clock=Clock(NOW))
    follower = SqliteBudgetFollower(path, ledger)
    await follower.catch_up(None)
    await follower.close()
    assert ledger.standing("acme").spent == Decimal(2)  # type: ignore[union-attr]
    assert any(
        "deleted its records before 2026-12-05T00:00:00Z" in m and "2026-12-01T00:00:00Z" in m for m in caplog.messages
    )


def test_a_record_written_as_text_counts_as_the_projector_counts_it() -> None:
    """A row holding text raised TypeError in the start's read (a bytes pattern over a str)."""
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=100)), clock=Clock(NOW))
    ledger.observe_record(spend("acme", "1.5", NOW).to_json().decode())  # type: ignore[arg-type]
    ledger.observe_record(2**62)  # type: ignore[arg-type]
    ledger.observe_record(b'{"deep": ' * 10_000)
    assert ledger.standing("acme").spent == Decimal("1.5")  # type: ignore[union-attr]
    assert ledger.unreadable == 2
