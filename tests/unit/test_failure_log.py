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
    (line,) = lines(caplog)
    assert line.startswith("openai attempt failed: auth_error (HTTP 401 invalid_api_key) model=gpt-4o request=req_")
    assert "Incorrect API key" in line and "sk-sim" not in line.replace("sk-sim***", "")
