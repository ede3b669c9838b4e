"""How long an upstream asks us to wait: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP
date) and Gemini's protobuf durations. A value that is no number of seconds is no wait."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.providers.http import parse_duration, parse_retry_after
from gateway.providers.openai_wire import retry_hint


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-3"}, None),  # no wait named: the backoff applies (it was three retries in 10 ms)
        ({"retry-after": "0"}, None),
        ({"retry-after-ms": "-100", "retry-after": "2"}, 2.0),  # a negative ms no longer overrides
        ({"retry-after-ms": "0", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "700"}, 0.7),
        ({"retry-after-ms": "700", "retry-after": "9"}, 0.7),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "nan", "retry-after": "9"}, 9.0),  # NaN is no wait: the next header counts
        ({"retry-after": "nan"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "-nan"}, None),
        ({"retry-after": "tomorrow"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], wait: float | None) -> None:
    assert parse_retry_after(headers) == wait


def test_infinity_is_a_wait_no_budget_allows() -> None:
    assert parse_retry_after({"retry-after": "inf"}) == math.inf


def test_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    wait = parse_retry_after({"retry-after": format_datetime(when, usegmt=True)})
    assert wait is not None and 28 <= wait <= 30
    past = datetime.now(UTC) - timedelta(seconds=30)
    assert parse_retry_after({"retry-after": format_datetime(past, usegmt=True)}) is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("27s", 27.0), ("41.2s", 41.2), ("nans", None), ("5", None), ("xs", None)]
)
def test_protobuf_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("Please try again in 600ms.", 0.6),
        ("Please try again in 7.2s. Visit https://platform.openai.com/account/rate-limits", 7.2),
        ("Please retry after 6 seconds", 6.0),
        # waits over a minute, as OpenAI writes them: not read, so the gateway retried at once
        ("Please try again in 6m0s.", 360.0),
        ("Please try again in 1m30s.", 90.0),
        ("Please try again in 1h2m3.5s.", 3723.5),
        ("try again in 2 minutes", 120.0),
        ("Please try again in 0s.", None),  # no wait: the backoff applies
        ("Please try again later.", None),
    ],
)
def test_the_wait_a_rate_limit_message_names(message: str, seconds: float | None) -> None:
    assert retry_hint(message) == seconds
