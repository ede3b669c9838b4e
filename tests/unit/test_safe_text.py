"""Text from clients and upstreams on its way into response headers and log lines."""

from __future__ import annotations

import pytest

from gateway.safe_text import MAX_HEADER_TEXT, header_value, log_value


@pytest.mark.parametrize("text", ["gpt-4o", "claude-3-5-sonnet-20241022", "models/gemini-1.5-pro", "模型-1"])
def test_ordinary_values_stay_as_they_are(text: str) -> None:
    assert header_value(text) == text
    assert log_value(text) == text


def test_a_header_value_has_no_line_break_and_a_bounded_length() -> None:
    assert header_value("gpt-4\r\nset-cookie: x=1") == "gpt-4??set-cookie: x=1"
    assert header_value("a\x00b\u2028c") == "a?b?c"
    assert header_value("m" * 10_000) == "m" * MAX_HEADER_TEXT


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("acme corp", '"acme corp"'),  # would read as two fields
        ("x provider=evil", '"x provider=evil"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\nCost | tenant=victim cost=$999", '"a\\nCost | tenant=victim cost=$999"'),
        ("a\u2028b", '"a\\u2028b"'),
        ("", '""'),
        ("naïve tenant", '"naïve tenant"'),
    ],
)
def test_a_log_value_is_one_field_on_one_line(text: str, logged: str) -> None:
    assert log_value(text) == logged
    assert "\n" not in log_value(text) and "\u2028" not in log_value(text)


def test_credentials_in_an_upstream_error_are_redacted() -> None:
    """An upstream's 400 that quoted the request's key reached the tenant and the usage event
    whole (a review: "Incorrect API key provided: Bearer sk-UPSTREAM-PROVIDER-SECRET-123")."""
    from gateway import errors
    from gateway.safe_text import redact_secrets

    error = errors.UpstreamBadRequest(
        "openai: Incorrect API key provided: Bearer sk-UPSTREAM-PROVIDER-SECRET-123", provider="openai"
    )
    assert error.message == "openai: Incorrect API key provided: Bearer ***"
    assert "SECRET" not in str(error.to_openai())
    assert redact_secrets("bad key sk-ant-api03-ABCDEFGHIJKLMNOP here") == "bad key sk-ant-*** here"
    assert redact_secrets("url?key=AIzaSyD-abcdefghijklmnop123&alt=sse") == "url?key=***&alt=sse"
    for plain in ("rate limit of gpt-4o-2024-08-06 exceeded", "network-error in task-12345678", "no key"):
        assert redact_secrets(plain) == plain
    # shapes a re-test found coming back whole: a JSON api_key, Azure's 32-hex api-key header,
    # HTTP basic credentials
    assert redact_secrets('{"api_key": "abcd1234efgh5678"}') == '{"api_key": "***"}'
    assert redact_secrets("api-key: 0123456789abcdef0123456789abcdef") == "api-key: ***"
    assert redact_secrets("Authorization: Basic dXNlcjpwYXNzd29yZA==") == "Authorization: Basic ***"
    assert (
        redact_secrets("context length 128000 exceeded: 130000 tokens")
        == "context length 128000 exceeded: 130000 tokens"
    )


def test_a_known_key_holding_another_is_redacted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys were replaced in a set's order: with one key inside another, the shorter went first
    and the longer one's rest reached the client (by PYTHONHASHSEED: a diff review)."""
    from gateway import safe_text

    for order in (["9f3c2a71", "9f3c2a71e4b8d6059f3c2a71e4b8d605"], ["9f3c2a71e4b8d6059f3c2a71e4b8d605", "9f3c2a71"]):
        monkeypatch.setattr(safe_text, "_KNOWN", [])
        for key in order:
            safe_text.register_secret(key)
        assert safe_text.redact_secrets("key 9f3c2a71e4b8d6059f3c2a71e4b8d605. and 9f3c2a71!") == "key ***. and ***!"


def test_the_cost_line_cuts_an_upstreams_endless_model_name(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    from decimal import Decimal

    from gateway.usage import LOGGED_MODEL, CallContext, UsageRecorder

    caplog.set_level(logging.INFO, logger="gateway.cost")
    ctx = CallContext("req_1", "t", None, "chat.completions", False, "gpt-4")
    UsageRecorder.log_cost(ctx, "openai", "m" * 200_000, Decimal("0.5"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
    assert line == f"Cost | tenant=t provider=openai model={'m' * LOGGED_MODEL}... cost=$0.500000"
