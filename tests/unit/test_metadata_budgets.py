"""Budgets of metadata pairs: a team's budget inside a tenant, a feature's across every tenant.
Each is an account of its own in the ledger, counted from the same events as the tenants', kept
in the snapshot, and checked before a call alongside its tenant's."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.budgets import ledger as ledger_module
from gateway.budgets import snapshot
from gateway.budgets.config import Budget, BudgetSettings, MetadataBudget
from gateway.budgets.ledger import SpendLedger
from gateway.errors import BudgetExceeded
from gateway.settings import Settings
from tests.support.events import usage_event
from tests.support.logs import fields

NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
DECEMBER = ("month", datetime(2026, 12, 1, tzinfo=UTC))
SEARCH = ("acme", (("team", "search"),))


def clock() -> datetime:
    return NOW


def spend(tenant: str, cost: str, metadata: dict[str, str] | None = None, **extra: Any) -> Any:
    return usage_event(tenant, Decimal(cost), NOW, metadata=metadata or {}, **extra)


def settings(*budgets: dict[str, Any], **more: Any) -> BudgetSettings:
    return BudgetSettings(metadata=list(budgets), **more)  # type: ignore[arg-type]


def test_a_metadata_budget_is_read_from_the_environment_and_enables_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLM_GATEWAY_BUDGETS",
        '{"metadata": [{"tenant": "acme", "match": {"team": "search"}, "usd": "10.50", "period": "day"},'
        ' {"match": {"feature": "summarize", "env": "prod"}, "usd": 100}]}',
    )
    budgets = Settings(_env_file=None).budgets  # type: ignore[call-arg]
    assert budgets.enabled and budgets.tenants == {} and budgets.default is None
    team, feature = budgets.metadata
    assert (team.tenant, team.match, team.usd, team.period) == ("acme", {"team": "search"}, Decimal("10.50"), "day")
    assert feature.tenant is None and feature.scope == (None, (("env", "prod"), ("feature", "summarize")))
    assert feature.pairs == "env=prod, feature=summarize" and feature.period == "month"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ({"match": {}, "usd": "1"}, "give the metadata pairs"),
        ({"usd": "1"}, "match\n  Field required"),
        ({"match": {"team": 42}, "usd": "1"}, "valid string"),
        ({"match": {"": "x"}, "usd": "1"}, "keys are 1 to 64"),
        ({"match": {"team": "a\nb"}, "usd": "1"}, "printable"),
        ({"match": {"team": "x" * 513}, "usd": "1"}, "longer than 512"),
        ({"match": {f"k{i}": "v" for i in range(17)}, "usd": "1"}, "at most 16 pairs"),
        ({"match": {"team": "a"}, "tenant": " acme", "usd": "1"}, "not a tenant id"),
        ({"match": {"team": "a"}, "usd": 1.5}, "as a string"),
        ({"match": {"team": "a"}, "usd": "1", "per": "team"}, "Extra inputs"),
    ],
)
def test_a_bad_metadata_budget_is_refused_with_its_reason(given: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        MetadataBudget(**given)


def test_two_budgets_of_the_same_calls_are_refused_whatever_the_order_of_their_pairs() -> None:
    with pytest.raises(
        ValidationError, match="two budgets for the calls of tenant 'acme' with env=prod, team=search: give one"
    ):
        settings(
            {"tenant": "acme", "match": {"team": "search", "env": "prod"}, "usd": "1"},
            {"tenant": "acme", "match": {"env": "prod", "team": "search"}, "usd": "2"},
        )
    # the same pairs of another tenant, or of every tenant, are other budgets
    assert (
        len(settings({"tenant": "acme", "match": {"t": "s"}, "usd": 1}, {"match": {"t": "s"}, "usd": 1}).metadata) == 2
    )


def test_an_attempt_counts_in_its_tenants_budget_and_in_each_metadata_budget_it_matches() -> None:
    ledger = SpendLedger(
        settings(
            {"tenant": "acme", "match": {"team": "search"}, "usd": "1"},
            {"tenant": "acme", "match": {"team": "search", "env": "prod"}, "usd": "1"},
            {"match": {"feature": "summarize"}, "usd": "1"},
            default=Budget(usd=100),
        ),
        clock=clock,
    )
    ledger.observe(spend("acme", "0.1", {"team": "search"}))
    ledger.observe(spend("acme", "0.2", {"team": "search", "env": "prod", "feature": "summarize"}))
    ledger.observe(spend("acme", "0.4", {"team": "ads", "feature": "summarize"}))
    ledger.observe(spend("globex", "0.8", {"team": "search", "env": "prod", "feature": "summarize"}))
    ledger.observe(spend("acme", "1.6", {"TEAM": "search", "env": "prod "}))  # not the budgets' pairs
    spent = {(s.tenant, json.dumps(s.metadata)): s.spent for s in ledger.scoped_standings(None)}
    assert spent == {
        ("acme", '{"team": "search"}'): Decimal("0.3"),
        ("acme", '{"team": "search", "env": "prod"}'): Decimal("0.2"),
        (None, '{"feature": "summarize"}'): Decimal("1.4"),  # every tenant's together
    }
    assert ledger.standing("acme").spent == Decimal("2.3")  # type: ignore[union-attr]
    assert ledger.standing("globex").spent == Decimal("0.8")  # type: ignore[union-attr]
    assert [s.metadata for s in ledger.scoped_standings("acme")] == [
        {"team": "search"},
        {"team": "search", "env": "prod"},
    ]
    assert ledger.scoped_standings("globex") == [] and ledger.tenants() == ["acme", "globex"]


def test_a_spent_metadata_budget_refuses_only_the_calls_it_covers() -> None:
    ledger = SpendLedger(settings({"tenant": "acme", "match": {"team": "search"}, "usd": "0.5"}), clock=clock)
    ledger.observe(spend("acme", "0.5", {"team": "search", "feature": "x"}))
    for refused in ({"team": "search"}, {"team": "search", "env": "prod"}):
        with pytest.raises(BudgetExceeded) as raised:
            ledger.check("acme", refused)
        assert raised.value.code == "budget_exceeded" and raised.value.client_should_retry is False
        assert raised.value.message == (
            "Tenant 'acme', for calls with metadata 'team=search', has used its monthly budget: $0.500000 spent "
            "of $0.500000. Calls with that metadata are accepted again from 2027-01-01T00:00:00Z, or once the "
            "gateway runs with a higher budget."
        )
    for served in ({"team": "ads"}, {}, None, {"team": "Search"}):
        ledger.check("acme", served)
    ledger.check("globex", {"team": "search"})  # another tenant's team of that name
    assert ledger.standing("acme") is None  # the tenant itself has no budget


def test_a_budget_of_every_tenant_does_not_tell_one_tenant_what_the_others_spent() -> None:
    ledger = SpendLedger(settings({"match": {"feature": "summarize"}, "usd": "1", "period": "day"}), clock=clock)
    ledger.observe(spend("acme", "0.75", {"feature": "summarize"}))
    ledger.check("globex", {"feature": "summarize"})
    ledger.observe(spend("globex", "0.25", {"feature": "summarize"}))
    with pytest.raises(BudgetExceeded) as raised:
        ledger.check("globex", {"feature": "summarize"})
    assert raised.value.message == (
        "Every tenant together, for calls with metadata 'feature=summarize', has used its daily budget of "
        "$1.000000. Calls with that metadata are accepted again from 2026-12-16T00:00:00Z, or once the gateway "
        "runs with a higher budget."
    )


def test_a_zero_metadata_budget_refuses_its_calls_before_any_spend() -> None:
    ledger = SpendLedger(
        settings(
            {"tenant": "acme", "match": {"env": "dev"}, "usd": "0"},
            {"match": {"env": "dev"}, "usd": "0", "period": "day"},
            tenants={"frozen": Budget(usd=0)},
        ),
        clock=clock,
    )
    with pytest.raises(BudgetExceeded) as raised:
        ledger.check("acme", {"env": "dev"})
    # no "accepted again from" a reset that accepts nothing
    assert raised.value.message == (
        "Tenant 'acme', for calls with metadata 'env=dev', has a monthly budget of $0: no call is accepted until "
        "the gateway runs with a higher one."
    )
    with pytest.raises(BudgetExceeded) as raised:
        ledger.check("globex", {"env": "dev"})
    assert raised.value.message == (
        "Every tenant together, for calls with metadata 'env=dev', has a daily budget of $0: no call is accepted "
        "until the gateway runs with a higher one."
    )
    with pytest.raises(BudgetExceeded) as raised:
        ledger.check("frozen", {})
    assert raised.value.message == (
        "Tenant 'frozen' has a monthly budget of $0: no call is accepted until the gateway runs with a higher one."
    )
    ledger.check("acme", {"env": "prod"})


def test_the_tenants_budget_is_checked_first_and_still_holds_for_calls_of_a_metadata_budget() -> None:
    ledger = SpendLedger(
        settings({"tenant": "acme", "match": {"team": "search"}, "usd": "10"}, tenants={"acme": Budget(usd="1")}),
        clock=clock,
    )
    ledger.observe(spend("acme", "1", {"team": "ads"}))
    with pytest.raises(BudgetExceeded, match=r"^Tenant 'acme' has used its monthly budget: "):
        ledger.check("acme", {"team": "search"})


def test_own_attempts_of_a_metadata_budget_are_confirmed_when_the_log_brings_them_back() -> None:
    ledger = SpendLedger(
        settings({"tenant": "acme", "match": {"team": "search"}, "usd": "10"}, default=Budget(usd=10)), clock=clock
    )
    own, later = spend("acme", "1.5", {"team": "search"}), spend("acme", "0.5", {"team": "search"})
    ledger.observe(own)
    ledger.observe(later)
    assert ledger.confirmed() == {}
    ledger.observe_record(own.to_json())
    ledger.observe_record(spend("acme", "2", {"team": "search"}).to_json())  # another replica's
    ledger.observe_record(spend("acme", "4", {"team": "ads"}).to_json())
    assert ledger.confirmed() == {"acme": {DECEMBER: Decimal("7.5")}, SEARCH: {DECEMBER: Decimal("3.5")}}
    assert [s.spent for s in ledger.scoped_standings("acme")] == [Decimal(4)]  # pending included


def test_a_snapshot_keeps_the_metadata_budgets_spend(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.budgets")
    config = settings(
        {"tenant": "acme", "match": {"team": "search", "env": "prod"}, "usd": "10"},
        {"match": {"feature": "x"}, "usd": "10", "period": "day"},
        default=Budget(usd=10),
    )
    ledger = SpendLedger(config, clock=clock)
    ledger.follows_log = False
    ledger.observe(spend("acme", "1.25", {"team": "search", "env": "prod", "feature": "x"}))
    ledger.observe(spend("globex", "2", {"feature": "x"}))
    path = tmp_path / snapshot.FILE
    snapshot.save(path, snapshot.Snapshot("sqlite", {0: 2}, ledger.confirmed()), config)
    body = json.loads(path.read_text())
    assert body["scoped"] == [
        ["acme", [["env", "prod"], ["team", "search"]], "month", "2026-12-01T00:00:00+00:00", "1.25"],
        [None, [["feature", "x"]], "day", "2026-12-15T00:00:00+00:00", "3.25"],
    ]
    loaded = snapshot.load(path, config, "sqlite")
    assert loaded is not None and loaded.spent == ledger.confirmed()
    restored = SpendLedger(config, clock=clock)
    restored.restore(loaded.spent)
    assert [s.spent for s in restored.scoped_standings(None)] == [Decimal("1.25"), Decimal("3.25")]
    assert caplog.messages[-1] == (
        "budgets: the snapshot gave 2 tenants' spend of their periods, $3.250000 in all, and the spend of 2 "
        "metadata budgets"
    )
    # a budget added since: the snapshot is not used (its spend was not counted)
    more = settings(*config.metadata, {"match": {"feature": "y"}, "usd": "1"}, default=Budget(usd=10))
    assert snapshot.load(path, more, "sqlite") is None
    # one hand-edited to a spend that is no amount is not used
    body["scoped"][0][4] = "NaN"
    path.write_text(json.dumps(body))
    assert snapshot.load(path, config, "sqlite") is None


def test_the_fingerprint_of_budgets_without_metadata_is_the_one_earlier_versions_wrote() -> None:
    """An upgrade keeps its snapshot: the field's coming does not make every gateway read its
    periods from the log again."""
    config = BudgetSettings(tenants={"acme": Budget(usd="50")}, default=Budget(usd=5, period="day"))
    earlier = '{"tenants":{"acme":{"usd":"50","period":"month"}},"default":{"usd":"5","period":"day"}}'
    assert snapshot.fingerprint(config) == hashlib.sha256(earlier.encode()).hexdigest()[:32]


def test_the_refusals_of_a_metadata_budget_are_logged_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    ledger = SpendLedger(settings({"tenant": "acme", "match": {"team": "search"}, "usd": "0"}), clock=clock)
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            ledger.check("acme", {"team": "search"})
    ledger.refusals.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.budgets"]
    assert lines == [
        "budget exceeded: tenant acme's team=search spent $0.000000 of its monthly $0.000000; its calls are "
        "refused until 2027-01-01T00:00:00Z",
        "budget exceeded: tenant acme's team=search: 2 more calls refused, in the 0 s after the last such line",
    ]
    assert fields(caplog, "gateway.budgets") == [
        {
            "tenantId": "acme",
            "metadata": {"team": "search"},
            "period": "month",
            "spentUsd": "0.000000",
            "limitUsd": "0.000000",
            "resetsAt": "2027-01-01T00:00:00Z",
            "more": 0,
        },
        {"tenantId": "acme", "metadata": {"team": "search"}, "count": 2},
    ]


def test_the_log_retention_must_cover_a_metadata_budgets_month(tmp_path: Path) -> None:
    budgets = {"metadata": [{"match": {"team": "a"}, "usd": "1"}]}
    with pytest.raises(ValidationError, match="give at least 32"):
        Settings(_env_file=None, data_dir=tmp_path, log_retention_days=7, budgets=budgets)  # type: ignore[call-arg]


class SteppedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_periods_follow_the_clock_forward_and_back() -> None:
    """The ledger keeps the clock's periods until the clock leaves them, either way (a clock
    stepped back by NTP): each attempt still counts in the period of its own time."""
    eve, new_year = datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    clock = SteppedClock(eve)
    ledger = SpendLedger(
        settings({"match": {"team": "a"}, "usd": "10", "period": "day"}, default=Budget(usd=10, period="day")),
        clock=clock,
    )

    def spent() -> tuple[Decimal, Decimal]:
        [team] = ledger.scoped_standings(None)
        return ledger.standing("acme").spent, team.spent  # type: ignore[union-attr]

    ledger.observe(usage_event("acme", Decimal(1), eve, metadata={"team": "a"}))
    ledger.observe(usage_event("acme", Decimal(2), new_year, metadata={"team": "a"}))  # a minute ahead: tomorrow's
    ledger.observe(usage_event("acme", Decimal(4), datetime(2027, 1, 2, 0, 1, tzinfo=UTC), metadata={"team": "a"}))
    assert spent() == (Decimal(1), Decimal(1))
    clock.now = new_year
    assert spent() == (Decimal(2), Decimal(2))
    ledger.observe(usage_event("acme", Decimal(8), datetime(2027, 1, 2, 0, 1, tzinfo=UTC), metadata={"team": "a"}))
    ledger.observe(usage_event("acme", Decimal(16), eve, metadata={"team": "a"}))  # yesterday's: no budget of now
    clock.now = eve  # stepped back
    ledger.observe(usage_event("acme", Decimal(32), eve, metadata={"team": "a"}))
    assert spent() == (Decimal(32), Decimal(32))
    clock.now = datetime(2027, 1, 2, 12, 0, tzinfo=UTC)
    assert spent() == (Decimal(8), Decimal(8))


def test_a_call_under_several_budgets_is_refused_by_any_one_of_them_used_up() -> None:
    """Budgets of the same pairs for two tenants and for every tenant, and one of other keys:
    each counts its own calls, and the call must fit all of those it falls under."""
    ledger = SpendLedger(
        settings(
            {"tenant": "acme", "match": {"team": "search"}, "usd": "10"},
            {"tenant": "globex", "match": {"team": "search"}, "usd": "10"},
            {"match": {"team": "search"}, "usd": "10"},
            {"match": {"feature": "summarize"}, "usd": "1"},
        ),
        clock=clock,
    )
    ledger.observe(spend("acme", "1", {"team": "search", "feature": "summarize"}))
    ledger.observe(spend("globex", "2", {"team": "search"}))
    ledger.observe(spend("initech", "4", {"team": "search"}))
    spent = {(s.tenant, *s.metadata.items()): s.spent for s in ledger.scoped_standings(None)}
    assert spent == {
        ("acme", ("team", "search")): Decimal(1),
        ("globex", ("team", "search")): Decimal(2),
        (None, ("team", "search")): Decimal(7),
        (None, ("feature", "summarize")): Decimal(1),
    }
    ledger.check("acme", {"team": "search"})  # its team's budgets have room
    with pytest.raises(BudgetExceeded, match="'feature=summarize'"):
        ledger.check("acme", {"team": "search", "feature": "summarize"})  # the last one it falls under is spent


def test_an_attempt_pending_across_a_day_is_confirmed_in_each_budget_of_its_own_period() -> None:
    """A daily metadata budget under a monthly tenant budget: an own attempt of yesterday comes
    back from the log after midnight, once today's is counted; each budget confirms what is in
    its current period."""
    clock = SteppedClock(datetime(2026, 12, 15, 23, 59, tzinfo=UTC))
    ledger = SpendLedger(
        settings({"tenant": "acme", "match": {"team": "a"}, "usd": "10", "period": "day"}, default=Budget(usd=10)),
        clock=clock,
    )
    yesterday = usage_event("acme", Decimal(1), clock.now, metadata={"team": "a"})
    ledger.observe(yesterday)
    clock.now = datetime(2026, 12, 16, 0, 1, tzinfo=UTC)
    today = usage_event("acme", Decimal(2), clock.now, metadata={"team": "a"})
    ledger.observe(today)
    team = ("acme", (("team", "a"),))
    assert ledger.confirmed() == {}
    ledger.observe_record(yesterday.to_json())
    assert ledger.confirmed() == {"acme": {DECEMBER: Decimal(1)}}
    ledger.observe_record(today.to_json())
    assert ledger.confirmed() == {
        "acme": {DECEMBER: Decimal(3)},
        team: {("day", datetime(2026, 12, 16, tzinfo=UTC)): Decimal(2)},
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scoped", [["acme", [["team", "a"]], "month", "2026-12-01T00:00:00+00:00", "1e1000000"]]),
        ("scoped", [["acme", {"team": "a"}, "month", "2026-12-01T00:00:00+00:00", "1"]]),
        ("scoped", [["acme", [["team"]], "month", "2026-12-01T00:00:00+00:00", "1"]]),
        ("scoped", [[7, [["team", "a"]], "month", "2026-12-01T00:00:00+00:00", "1"]]),
        ("scoped", [["acme", [["team", 4]], "month", "2026-12-01T00:00:00+00:00", "1"]]),
        ("scoped", None),
        ("scoped", {"acme": 1}),
        ("spent", [["acme", "month", "2026-12-01T00:00:00+00:00", "1e1000000"]]),
        ("spent", [["acme", "month", "2026-12-01T00:00:00+00:00", 1e308]]),
        ("positions", {"0": float("inf")}),
        ("positions", {"0": 1e300}),
        ("positions", {"0": -1}),
        ("positions", {"0": True}),
    ],
)
def test_a_hand_edited_snapshot_is_not_used_and_the_start_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: Any
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.budgets")
    config = settings({"tenant": "acme", "match": {"team": "a"}, "usd": "10"}, default=Budget(usd=10))
    path = tmp_path / snapshot.FILE
    snapshot.save(path, snapshot.Snapshot("sqlite", {0: 2}, {"acme": {DECEMBER: Decimal(1)}}), config)
    body = json.loads(path.read_text())
    body[field] = value
    path.write_text(json.dumps(body))
    assert snapshot.load(path, config, "sqlite") is None
    assert "not used (unreadable" in caplog.text


def test_a_snapshot_nested_past_the_parsers_depth_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / snapshot.FILE
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert snapshot.load(path, BudgetSettings(default=Budget(usd=1)), "sqlite") is None


def test_the_fingerprint_of_metadata_budgets_is_their_content_not_their_order() -> None:
    """Reordered budgets or pairs are the same budgets: the snapshot stays in use; a changed
    amount, period or tenant is not."""
    first = {"tenant": "acme", "match": {"team": "a", "env": "prod"}, "usd": "1"}
    second = {"match": {"feature": "x"}, "usd": "2"}
    reordered = {"tenant": "acme", "match": {"env": "prod", "team": "a"}, "usd": "1"}
    same = snapshot.fingerprint(settings(first, second))
    assert snapshot.fingerprint(settings(second, reordered)) == same
    for changed in (
        settings(first, {**second, "usd": "3"}),
        settings(first, {**second, "period": "day"}),
        settings(first, {**second, "tenant": "acme"}),
        settings(first),
        settings(first, second, default=Budget(usd=1)),
    ):
        assert snapshot.fingerprint(changed) != same


def test_a_refusal_by_a_budget_of_every_tenant_names_the_tenant_refused(caplog: pytest.LogCaptureFixture) -> None:
    ledger = SpendLedger(settings({"match": {"feature": "x"}, "usd": "0"}), clock=clock)
    with pytest.raises(BudgetExceeded):
        ledger.check("globex", {"feature": "x"})
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.budgets"]
    assert line == (
        "budget exceeded: every tenant's feature=x spent $0.000000 of its monthly $0.000000; its calls are refused "
        "until 2027-01-01T00:00:00Z (a call of tenant globex)"
    )
    [logged] = fields(caplog, "gateway.budgets")
    assert logged["tenantId"] is None and logged["callerTenantId"] == "globex"


def test_a_named_pipe_or_a_directory_in_place_of_the_snapshot_is_not_read(tmp_path: Path) -> None:
    """A pipe blocked the start on its read (a re-test)."""
    import os

    config = BudgetSettings(default=Budget(usd=1))
    os.mkfifo(tmp_path / snapshot.FILE)
    assert snapshot.load(tmp_path / snapshot.FILE, config, "sqlite") is None
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / snapshot.FILE).mkdir()
    assert snapshot.load(tmp_path / "dir" / snapshot.FILE, config, "sqlite") is None


def test_a_snapshots_ids_past_what_the_ledger_keeps_are_not_all_kept() -> None:
    ledger = SpendLedger(BudgetSettings(default=Budget(usd=1)), clock=clock)
    ledger.restore({}, [str(n) for n in range(ledger_module.RECENT_IDS + 500)])
    assert len(ledger.recent) == ledger_module.RECENT_IDS and next(iter(ledger.recent)) == "500"


KEYS = ["team", "env", "feature", "region"]
VALUES = ["a", "b"]
TENANTS = ["acme", "globex"]
pairs = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), min_size=1, max_size=3)
budgets = st.lists(
    st.fixed_dictionaries({"tenant": st.sampled_from([None, *TENANTS]), "match": pairs}),
    max_size=12,
    unique_by=lambda b: (b["tenant"], tuple(sorted(b["match"].items()))),
)
calls = st.lists(
    st.tuples(st.sampled_from(TENANTS), st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=4)),
    max_size=20,
)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(given_budgets=budgets, given_calls=calls)
def test_each_budget_counts_exactly_the_calls_whose_tenant_and_pairs_it_covers(
    given_budgets: list[dict[str, Any]], given_calls: list[tuple[str, dict[str, str]]]
) -> None:
    """Against the rule itself: the budget's tenant (or every tenant), and each of its pairs in
    the call's metadata with its value. Call ``n`` costs ``2**n``, so each sum names its calls."""
    config = settings(*({**b, "usd": "1000000000"} for b in given_budgets))
    ledger = SpendLedger(config, clock=clock)
    for n, (tenant, metadata) in enumerate(given_calls):
        ledger.observe(spend(tenant, str(2**n), metadata))
    for standing in ledger.scoped_standings(None):
        budget = standing.budget
        assert isinstance(budget, MetadataBudget)
        covered = [
            n
            for n, (tenant, metadata) in enumerate(given_calls)
            if budget.tenant in (None, tenant) and all(metadata.get(k) == v for k, v in budget.match.items())
        ]
        assert standing.spent == sum((Decimal(2**n) for n in covered), Decimal(0)), (budget, covered)
    # and a call is refused exactly when a budget it falls under is spent: each budget's limit at
    # what its calls cost, a call's check refused iff some budget covering it counted a call
    spent = {s.budget.scope: s.spent for s in ledger.scoped_standings(None)}  # type: ignore[attr-defined]
    at_limit = settings(*({**b, "usd": str(spent[MetadataBudget(**b, usd=1).scope] or 1)} for b in given_budgets))
    full = SpendLedger(at_limit, clock=clock)
    for n, (tenant, metadata) in enumerate(given_calls):
        full.observe(spend(tenant, str(2**n), metadata))
    for tenant, metadata in given_calls:
        covering = [
            b
            for b in at_limit.metadata
            if b.tenant in (None, tenant) and all(metadata.get(k) == v for k, v in b.match.items())
        ]
        if any(spent[b.scope] for b in covering):
            with pytest.raises(BudgetExceeded):
                full.check(tenant, metadata)
        else:
            full.check(tenant, metadata)


def test_own_attempts_past_the_pending_limit_are_counted_again_in_every_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING own attempts the oldest is forgotten with what it added to each budget,
    and counted a second time when the log brings it back (too much, never too little)."""
    monkeypatch.setattr(ledger_module, "MAX_PENDING", 1)
    ledger = SpendLedger(
        settings({"tenant": "acme", "match": {"team": "search"}, "usd": "10"}, default=Budget(usd=10)), clock=clock
    )
    first, second = spend("acme", "1", {"team": "search"}), spend("acme", "2", {"team": "search"})
    ledger.observe(first)
    ledger.observe(second)  # ``first`` is forgotten, in both accounts
    assert ledger.confirmed() == {"acme": {DECEMBER: Decimal(1)}, SEARCH: {DECEMBER: Decimal(1)}}
    ledger.observe_record(first.to_json())
    ledger.observe_record(second.to_json())
    assert ledger.confirmed() == {"acme": {DECEMBER: Decimal(4)}, SEARCH: {DECEMBER: Decimal(4)}}


def test_a_snapshots_spend_of_a_budget_no_longer_given_is_dropped() -> None:
    ledger = SpendLedger(settings({"tenant": "acme", "match": {"team": "search"}, "usd": "10"}), clock=clock)
    ledger.restore(
        {
            SEARCH: {DECEMBER: Decimal(2)},
            ("acme", (("team", "ads"),)): {DECEMBER: Decimal(4)},  # removed from the budgets
            (None, (("team", "search"),)): {DECEMBER: Decimal(8)},  # of every tenant: another budget
        }
    )
    assert ledger.confirmed() == {SEARCH: {DECEMBER: Decimal(2)}}
