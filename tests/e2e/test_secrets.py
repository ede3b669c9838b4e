"""What reaches a tenant's client and the stores from a vendor's failure: never the gateway's
credentials (whatever their shape), nor the provider's endpoint."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from gateway.events import UsageEvent
from gateway.settings import ProviderSettings
from tests.support.gateway import running_gateway, start_app

AZURE_KEY = "deadbeefcafebabe0123456789abcdef"  # 32 hex digits and no prefix, as Azure's keys are


async def call_through(provider: str, upstream: ProviderSettings) -> tuple[int, str, list[UsageEvent]]:
    """One call pinned to ``provider`` (its settings ``upstream``, a simulator for the others):
    the status, the answer's text and the provider's events."""
    others = ("openai",) if provider != "openai" else ("azure",)
    async with running_gateway(providers=others, settings={"providers": {provider: upstream}}) as gw:
        async with aiohttp.ClientSession() as s:
            body = {"model": "gpt-4o", "provider": provider, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"{gw.base_url}/chat/completions", json=body) as r:
                answer = await r.text()
        return r.status, answer, [e for e in gw.event_log.events if e.provider == provider]


async def test_a_key_of_no_known_shape_echoed_by_the_vendor_is_redacted_everywhere(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An Azure key (32 hex digits) in Azure's 401 reached the tenant's client, the log file and
    DuckDB whole (a review): only keys with a known prefix were redacted."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("api-key", "")
        return web.json_response({"error": {"code": "401", "message": f"The key '{key}' is not valid"}}, status=401)

    upstream = web.Application()
    upstream.router.add_post("/openai/deployments/{deployment}/chat/completions", refuse)
    runner, url = await start_app(upstream)
    try:
        status, answer, events = await call_through("azure", ProviderSettings(api_key=AZURE_KEY, base_url=url))
    finally:
        await runner.cleanup()
    assert status >= 400 and "is not valid" in answer and AZURE_KEY not in answer
    assert events and all(AZURE_KEY not in (e.error_message or "") for e in events)
    assert "The key '***' is not valid" in (events[0].error_message or "")


async def test_an_unreachable_endpoint_is_named_in_the_log_not_to_the_client(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's 502 said ``cannot reach http://myres-prod-eastus.internal.corp:...``: the
    endpoint is the operator's to know (a review)."""
    from gateway.providers import http

    monkeypatch.setattr(http, "_UNREACHABLE_LOGGED", {})  # logged once a minute: another test's
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    endpoint = f"http://127.0.0.1:{port}/v1"
    caplog.set_level(logging.WARNING, logger="gateway.providers.http")
    status, answer, events = await call_through("openai", ProviderSettings(api_key="sk-test", base_url=endpoint))
    assert status == 502 and "cannot reach the provider's endpoint" in answer and str(port) not in answer
    assert events and all(str(port) not in (e.error_message or "") for e in events)
    assert f"openai: cannot reach {endpoint}" in caplog.text


async def test_the_password_of_a_provider_s_url_is_redacted_as_a_credential(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's log printed ``http://user:pw-secret@...`` (a re-test): a URL's password is
    one of the gateway's credentials, redacted with its keys wherever a text carries it."""
    from gateway.providers import http

    monkeypatch.setattr(http, "_UNREACHABLE_LOGGED", {})  # logged once a minute: another test's
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="gateway.providers.http")
    upstream = ProviderSettings(api_key="sk-test", base_url=f"http://ops:pw-secret-42@127.0.0.1:{port}/v1")
    status, answer, _ = await call_through("openai", upstream)
    assert status == 502 and "pw-secret-42" not in answer
    assert f"openai: cannot reach http://ops:***@127.0.0.1:{port}/v1" in caplog.text
    assert "pw-secret-42" not in caplog.text
    from gateway.safe_text import redact_secrets

    assert redact_secrets("an upstream's echo of pw-secret-42") == "an upstream's echo of ***"  # any text
