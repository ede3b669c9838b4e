"""Failed provider attempts reach the log: one WARNING per provider and kind of failure a
minute, with the count of those in between (a review found every upstream failure silent)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import openai
import pytest

from gateway.events import UsageEvent
from gateway.failure_log import FailureLog
from gateway.simulators.base import Fault
from tests.support.events import usage_event
from tests.support.gateway import running_gateway
from tests.support.logs import fields


def make_event(**changes: object) -> UsageEvent:
    return usage_event("t", None, datetime(2026, 12, 1, tzinfo=UTC), **changes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.providers" and r.levelno == logging.WARNING]


def test_one_line_per_provider_and_outcome_a_minute_with_the_count_between(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(every=60.0, clock=clock)
    limited = make_event(outcome="rate_limited", http_status=429, error_code="rate_limit_exceeded")
    for _ in range(5):
        failures(limited)
        clock.now += 1
    failures(make_event(outcome="success"))
    failures(make_event(outcome="client_error", http_status=400))
    failures(make_event(outcome="cancelled"))
    failures(make_event(outcome="auth_error", http_status=401, error_message="Incorrect API key\nCost | forged"))
    clock.now += 60
    failures(limited)
    got = lines(caplog)
    assert len(got) == 3
    assert got[0].startswith(
        "openai attempt failed: rate_limited (HTTP 429 rate_limit_exceeded) model=gpt-4o request=req_1"
    )
    assert "(4 more since the last such line)" in got[2] and "rate_limited" in got[2]
    # an upstream's message is quoted: it cannot end the line or forge another
    assert "auth_error (HTTP 401)" in got[1] and '"Incorrect API key\\nCost | forged"' in got[1]
    # JSON logs: the values as fields, and how many the window counted
    limited_fields = {
        "provider": "openai",
        "outcome": "rate_limited",
        "httpStatus": 429,
        "errorCode": "rate_limit_exceeded",
        "model": "gpt-4o",
        "requestId": "req_1",
    }
    assert fields(caplog, "gateway.providers") == [
        {**limited_fields, "more": 0},
        {**limited_fields, "outcome": "auth_error", "httpStatus": 401, "errorCode": None, "more": 0},
        {**limited_fields, "more": 4},
    ]


async def test_an_expired_key_is_a_warning_naming_the_provider(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_gateway(providers=("openai", "azure")) as gw:
        gw.sims["openai"].faults.always(Fault("auth"))
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
            for _ in range(3):
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
                assert raw.headers["x-llm-provider"] == "azure"
    line, counted = lines(caplog)  # the two others in a line at the stop
    assert counted.startswith("openai: 2 more attempts failed: auth_error")
    assert line.startswith("openai attempt failed: auth_error (HTTP 401 invalid_api_key) model=gpt-4o request=req_")
    assert "Incorrect API key" in line and "sk-sim" not in line.replace("sk-sim***", "")


async def test_the_count_is_written_when_the_minute_ends_and_at_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    """A re-test: once the circuits had opened, no failure came to carry the count, and a 59 s
    outage was one line. The count now has its own line at the end of the window, and at a stop."""
    import asyncio

    failures = FailureLog(every=0.05)
    timeout = make_event(outcome="timeout")
    for _ in range(3):
        failures(timeout)
    assert len(lines(caplog)) == 1
    await asyncio.sleep(0.15)
    assert lines(caplog)[1].startswith("openai: 2 more attempts failed: timeout, in the ")
    assert fields(caplog, "gateway.providers")[1] == {"provider": "openai", "outcome": "timeout", "count": 2}
    failures(make_event(outcome="upstream_error", error_message="boom"))
    failures(make_event(outcome="upstream_error"))
    failures.flush()  # the stop: before the window ends
    assert lines(caplog)[-1].startswith("openai: 1 more attempt failed: upstream_error")
    await asyncio.sleep(0.1)  # its timer finds nothing left to say
    assert len(lines(caplog)) == 4


def test_an_unreadable_answer_is_not_quoted(caplog: pytest.LogCaptureFixture) -> None:
    """Its message holds the start of the model's answer, which may repeat the prompt."""
    FailureLog()(make_event(outcome="malformed_response", error_message='not JSON: b\'{"content": "SSN 123"\''))
    (line,) = lines(caplog)
    assert "SSN" not in line and line.endswith(": -")


async def test_a_long_outage_gets_a_full_line_each_window_showing_what_changed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count's own line began a new window, so later failures were only counted: a 500 that
    became a 503 never showed (a diff review). Each window now starts with a full line, and its
    count comes at its end, one timer a window."""
    import asyncio

    failures = FailureLog(every=0.05)
    for i in range(12):
        status = 500 if i < 6 else 503
        failures(make_event(outcome="upstream_error", http_status=status, error_message=f"m{i}"))
        await asyncio.sleep(0.01)
    failures.flush()
    got = lines(caplog)
    full = [line for line in got if line.startswith("openai attempt failed:")]
    assert len(full) >= 2 and "HTTP 500" in full[0] and "HTTP 503" in full[-1]
    counted = sum(int(line.split(": ", 1)[1].split(" more")[0]) for line in got if line.startswith("openai: "))
    counted += sum(int(line.split("(")[-1].split(" more")[0]) for line in got if "since the last such line)" in line)
    assert counted + len(full) == 12  # every failure in exactly one line


async def test_refused_gateway_keys_are_logged_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """401s and 403s were never logged: a client trying keys went unseen (a logs review). One full
    line a minute per reason (the client's address, the path, a wrong key's digest, never the
    key), the others counted at the window's end or at a stop."""
    import aiohttp

    from gateway.settings import ApiKey

    caplog.set_level(logging.INFO)
    keys = [ApiKey(key="sk-team-a", tenant="tenant_a")]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with running_gateway(providers=("openai",), settings={"api_keys": keys}) as gw:
        url = f"{gw.base_url}/chat/completions"
        async with aiohttp.ClientSession() as s:
            for key in ("sk-guess-1", "sk-guess-2", "sk-guess-3"):
                async with s.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as r:
                    assert r.status == 401
            async with s.post(url, json=body) as r:
                assert r.status == 401
            async with s.post(url, json=body, headers={"authorization": "Basic c2stdGVhbS1h"}) as r:
                assert r.status == 401
            mine = {"authorization": "Bearer sk-team-a"}
            async with s.post(url, json=body | {"tenantId": "tenant_b"}, headers=mine) as r:
                assert r.status == 403
    got = [r.getMessage() for r in caplog.records if r.name == "gateway.auth" and r.levelno == logging.WARNING]
    assert got[0].startswith("gateway key refused (wrong key): POST /v1/chat/completions from 127.0.0.1 key_")
    assert any(line.startswith("gateway key refused (missing key): POST /v1/chat/completions") for line in got)
    assert any(line.startswith("gateway key refused (malformed Authorization header): POST") for line in got)
    assert any("(another tenant)" in line and "asked for tenant tenant_b" in line for line in got)
    assert any(line.startswith("gateway key refused (wrong key): 2 more, in the ") for line in got)  # at the stop
    assert not any("sk-guess" in line or "sk-team-a" in line for line in got)
    logged = fields(caplog, "gateway.auth")
    assert logged[0] == {
        "reason": "wrong key",
        "method": "POST",
        "path": "/v1/chat/completions",
        "client": "127.0.0.1",
        "keyId": logged[0]["keyId"],
        "more": 0,
    }
    assert str(logged[0]["keyId"]).startswith("key_")
    [other] = [line for line in logged if line["reason"] == "another tenant"]
    assert (other["tenantId"], other["asked"], other["more"]) == ("tenant_a", "tenant_b", 0)
    assert str(other["keyId"]).startswith("key_") and other["keyId"] != logged[0]["keyId"]
    assert {"reason": "wrong key", "count": 2} in logged
    assert not any("sk-guess" in str(line) or "sk-team-a" in str(line) for line in logged)


def test_keys_of_windows_over_are_forgotten_once_many_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key per tenant refused was kept for good, made-up tenants included (a review)."""
    from gateway import windowed_log
    from gateway.windowed_log import WindowedLog

    monkeypatch.setattr(windowed_log, "PRUNE_AT", 100)
    clock = Clock()
    windows = WindowedLog(logging.getLogger("test.windows"), lambda key, count, seconds: "", clock=clock)
    for n in range(100):
        windows.hit(n, lambda since: "line")
    windows.hit(0, lambda since: "line")  # counted: key 0 is kept while its count waits
    clock.now += 61
    windows.hit("new", lambda since: "line")
    assert sorted(map(str, windows._last)) == ["0", "new"]
    assert len(windows._last) < 100
