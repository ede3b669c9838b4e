"""Rate limits of metadata pairs (``rate_limits.metadata``): a team's bucket inside its tenant's,
a feature's across every tenant. A call is counted in every bucket it falls under, or in none."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import TenantRateLimited
from gateway.limits import limiter as limiter_module
from gateway.limits.config import MetadataRateLimit, RateLimit, RateLimitSettings
from gateway.limits.limiter import RateLimiter
from gateway.settings import Settings
from tests.support.events import usage_event
from tests.support.logs import fields
from tests.unit.test_rate_limits import Clock

SEARCH = {"team": "search"}


def limiter(clock: Clock, *limits: dict[str, Any], **more: Any) -> RateLimiter:
    return RateLimiter(RateLimitSettings(metadata=list(limits), **more), clock=clock)  # type: ignore[arg-type]


def test_metadata_limits_come_from_the_environment_and_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLM_GATEWAY_RATE_LIMITS",
        '{"metadata": [{"tenant": "acme", "match": {"team": "search"}, "requests_per_minute": 10},'
        ' {"match": {"feature": "batch"}, "tokens_per_minute": 1000}]}',
    )
    limits = Settings(_env_file=None).rate_limits  # type: ignore[call-arg]
    assert limits.enabled and limits.tenants == {} and limits.default is None
    team, feature = limits.metadata
    assert (team.tenant, team.match, team.requests_per_minute) == ("acme", SEARCH, 10)
    assert feature.tenant is None and feature.tokens_per_minute == 1000
    for bad, complaint in (
        ({"match": SEARCH}, "give requests_per_minute"),
        ({"match": {}, "requests_per_minute": 1}, "covers, e.g."),
        ({"match": {"team": 4}, "requests_per_minute": 1}, "valid string"),
        ({"match": SEARCH, "tenant": "a\nb", "requests_per_minute": 1}, "not a tenant id"),
    ):
        with pytest.raises(ValidationError, match=complaint):
            MetadataRateLimit(**bad)
    with pytest.raises(ValidationError, match="two rate limits for the calls of every tenant with team=search"):
        RateLimitSettings(metadata=[{"match": SEARCH, "requests_per_minute": 1}] * 2)  # type: ignore[list-item]


def test_a_teams_requests_a_minute_refuse_only_its_calls_and_a_refusal_is_counted_nowhere() -> None:
    clock = Clock()
    limits = limiter(
        clock,
        {"tenant": "acme", "match": SEARCH, "requests_per_minute": 2},
        tenants={"acme": RateLimit(requests_per_minute=5)},
    )
    for _ in range(2):
        headers = limits.admit("acme", {"team": "search", "env": "prod"})
        assert headers is not None and headers["x-ratelimit-limit-requests"] == "5"  # the tenant's
    with pytest.raises(TenantRateLimited) as refused:
        limits.admit("acme", SEARCH)
    error = refused.value
    assert error.message.startswith(
        "Rate limit reached for tenant 'acme', for calls with metadata 'team=search', on requests per min (RPM): "
        "Limit 2. Please try again in 30s."
    )
    assert error.headers is not None and error.headers["x-ratelimit-limit-requests"] == "2"  # the refusing one's
    assert error.headers["retry-after"] == "30"
    # the refusal took none of the tenant's: 3 of its 5 are left, for other teams
    for _ in range(3):
        limits.admit("acme", {"team": "ads"})
    with pytest.raises(TenantRateLimited, match="for tenant 'acme' on requests"):
        limits.admit("acme", {})
    assert limits.admit("globex", SEARCH) is None  # another tenant's team of that name: no limit


def test_a_refusal_by_the_tenant_takes_nothing_from_the_teams_bucket() -> None:
    clock = Clock()
    limits = limiter(
        clock,
        {"tenant": "acme", "match": SEARCH, "requests_per_minute": 3},
        tenants={"acme": RateLimit(requests_per_minute=1)},
    )
    limits.admit("acme", {"team": "ads"})
    for _ in range(3):
        with pytest.raises(TenantRateLimited, match="for tenant 'acme' on requests"):
            limits.admit("acme", SEARCH)
    clock.now += 60
    # the team's 3 are whole (the tenant's refusals did not count there): one now, by the tenant's pace
    headers = limits.admit("acme", SEARCH)
    assert headers is not None and headers["x-ratelimit-remaining-requests"] == "0"


def test_a_limit_of_every_tenant_is_one_bucket_and_its_headers_answer_when_the_tenant_has_none() -> None:
    clock = Clock()
    limits = limiter(clock, {"match": {"feature": "batch"}, "requests_per_minute": 2})
    first = limits.admit("acme", {"feature": "batch"})
    assert first is not None and first["x-ratelimit-remaining-requests"] == "1"
    limits.admit("globex", {"feature": "batch"})
    with pytest.raises(TenantRateLimited) as refused:
        limits.admit("initech", {"feature": "batch", "team": "x"})
    assert refused.value.message.startswith(
        "Rate limit reached for calls with metadata 'feature=batch' of every tenant together, on requests per min"
    )
    assert limits.admit("acme", {"feature": "other"}) is None


def test_calls_at_once_of_a_team_are_released_in_every_bucket() -> None:
    clock = Clock()
    limits = limiter(
        clock,
        {"tenant": "acme", "match": SEARCH, "max_concurrent_requests": 1},
        {"match": {"env": "prod"}, "max_concurrent_requests": 2},
        tenants={"acme": RateLimit(max_concurrent_requests=3)},
    )
    call = {"team": "search", "env": "prod"}
    limits.admit("acme", call)
    with pytest.raises(TenantRateLimited, match=r"metadata 'team=search'.*requests at once"):
        limits.admit("acme", call)
    limits.admit("globex", {"env": "prod"})
    with pytest.raises(TenantRateLimited, match="metadata 'env=prod' of every tenant together"):
        limits.admit("acme", {"env": "prod", "team": "ads"})
    limits.release("acme", call)  # all three buckets get their place back
    limits.admit("acme", call)
    limits.release("acme", call)
    limits.release("globex", {"env": "prod"})
    for _ in range(3):
        limits.admit("acme", {"team": "ads"})
    with pytest.raises(TenantRateLimited, match="for tenant 'acme' on requests at once"):
        limits.admit("acme", {"team": "ads"})


def test_an_attempts_tokens_come_out_of_every_bucket_its_call_counts_in() -> None:
    clock = Clock()
    limits = limiter(
        clock,
        {"tenant": "acme", "match": SEARCH, "tokens_per_minute": 100},
        tenants={"acme": RateLimit(tokens_per_minute=1000)},
    )
    at = datetime(2026, 12, 15, tzinfo=UTC)
    limits.observe(usage_event("acme", None, at, tokens=(80, 40), metadata={"team": "search", "env": "prod"}))
    with pytest.raises(TenantRateLimited) as refused:
        limits.admit("acme", SEARCH)
    assert refused.value.type == "tokens" and "team=search" in refused.value.message
    headers = limits.admit("acme", {"team": "ads"})  # the tenant's bucket holds 880
    assert headers is not None and headers["x-ratelimit-remaining-tokens"] == "880"
    # the headers of an answer: the tenant's bucket, its tokens taken
    limits.observe(usage_event("acme", None, at, tokens=(10, 0), metadata={"team": "ads"}))
    assert limits.current("acme", headers, {"team": "ads"})["x-ratelimit-remaining-tokens"] == "870"


def test_a_teams_refusals_are_logged_once_a_window_naming_its_pairs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.limits")
    limits = limiter(Clock(), {"tenant": "acme", "match": SEARCH, "requests_per_minute": 1})
    limits.admit("acme", SEARCH)
    for _ in range(3):
        with pytest.raises(TenantRateLimited):
            limits.admit("acme", SEARCH)
    limits.refusals.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.limits"]
    assert lines == [
        "rate limit: tenant acme's team=search is over its 1 requests a minute; refused for 1m0s",
        "rate limit: tenant acme's team=search: 2 more calls refused (requests), in the 0 s after the last such line",
    ]
    assert fields(caplog, "gateway.limits")[0] == {
        "tenantId": "acme",
        "metadata": SEARCH,
        "limit": "requests",
        "perMinute": 1,
        "retryAfterMs": 60000,
        "more": 0,
    }


def test_a_sweep_never_forgets_a_bucket_the_call_is_about_to_count_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant's bucket, fetched full, was swept when the team's was made for the same call:
    the call was counted in a bucket no longer held, and the tenant's next call found a full one
    (a review: two calls at once under a limit of one)."""
    monkeypatch.setattr(limiter_module, "SWEEP_AT", 10)
    clock = Clock()
    limits = limiter(
        clock, {"match": SEARCH, "requests_per_minute": 1000}, default=RateLimit(max_concurrent_requests=1)
    )
    for n in range(9):  # full buckets, to be swept
        limits.admit(f"t{n}", {})
        limits.release(f"t{n}", {})
    limits.admit("acme", SEARCH)
    with pytest.raises(TenantRateLimited, match="requests at once: Limit 1"):
        limits.admit("acme", {})
    limits.release("acme", SEARCH)
    limits.admit("acme", {})
    with pytest.raises(TenantRateLimited, match="requests at once: Limit 1"):
        limits.admit("acme", {})


def test_a_call_several_limits_refuse_waits_for_the_longest() -> None:
    """Refused by its tenant's tokens for a second and its team's requests for a minute: told the
    minute (a retry after the second met the team's refusal)."""
    clock = Clock()
    limits = limiter(
        clock,
        {"tenant": "acme", "match": SEARCH, "requests_per_minute": 1},
        tenants={"acme": RateLimit(tokens_per_minute=60)},
    )
    limits.admit("acme", SEARCH)
    limits.observe(usage_event("acme", None, datetime(2026, 12, 15, tzinfo=UTC), tokens=(60, 0), metadata=SEARCH))
    with pytest.raises(TenantRateLimited) as refused:
        limits.admit("acme", SEARCH)
    assert refused.value.headers is not None and refused.value.headers["retry-after"] == "60"
    assert "metadata 'team=search'" in refused.value.message


def test_the_headers_are_the_first_listed_limits_whatever_the_order_of_the_calls_pairs() -> None:
    limits = limiter(
        Clock(),
        {"match": {"team": "s"}, "requests_per_minute": 5},
        {"match": {"env": "prod"}, "requests_per_minute": 100},
    )
    for call in ({"team": "s", "env": "prod"}, {"env": "prod", "team": "s"}):
        headers = limits.admit("acme", call)
        assert headers is not None and headers["x-ratelimit-limit-requests"] == "5", call


def test_the_tokens_left_of_an_answer_are_its_first_limits_with_its_own_tokens_taken() -> None:
    clock = Clock()
    limits = limiter(
        clock,
        {"match": {"env": "prod"}, "tokens_per_minute": 5000},
        {"tenant": "acme", "match": SEARCH, "tokens_per_minute": 1000},
    )
    call = {"team": "search", "env": "prod"}
    headers = limits.admit("acme", call)
    assert headers is not None and headers["x-ratelimit-limit-tokens"] == "5000"
    limits.observe(usage_event("acme", None, datetime(2026, 12, 15, tzinfo=UTC), tokens=(300, 100), metadata=call))
    assert limits.current("acme", headers, call)["x-ratelimit-remaining-tokens"] == "4600"
    assert limits.current("acme", headers)["x-ratelimit-remaining-tokens"] == "5000"  # no bucket of its own
