"""The HTTP surface as a raw client sees it: errors, limits, auth and tenants, discovery."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.settings import ApiKey
from tests.support.gateway import RunningGateway, running_gateway

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


async def post(url: str, data: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=data, headers=headers or {"content-type": "application/json"}) as r,
    ):
        body = await r.json(content_type=None)
        return r.status, body, r.headers.copy()  # type: ignore[return-value]


def assert_openai_error(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_malformed_json_is_400(gw: RunningGateway) -> None:
    status, body, headers = await post(f"{gw.base_url}/chat/completions", b'{"model": "gpt-4", ')
    error = assert_openai_error(body)
    assert status == 400 and "not valid JSON" in error["message"]
    assert headers["x-request-id"].startswith("req_")


async def test_non_object_body_is_400(gw: RunningGateway) -> None:
    status, body, _ = await post(f"{gw.base_url}/chat/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in assert_openai_error(body)["message"]


async def test_empty_body_is_400(gw: RunningGateway) -> None:
    status, body, _ = await post(f"{gw.base_url}/chat/completions", b"")
    assert status == 400 and "empty" in assert_openai_error(body)["message"]


async def test_body_over_limit_is_413() -> None:
    async with running_gateway(providers=("openai",), settings={"max_body_bytes": 2048}) as gw:
        big = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 5000}]})
        status, body, _ = await post(f"{gw.base_url}/chat/completions", big)
    assert status == 413
    assert assert_openai_error(body)["code"] == "request_too_large"


async def test_unknown_route_and_method_use_openai_errors(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.base_url}/nothing-here") as r:
            assert r.status == 404
            assert "Unknown route" in assert_openai_error(await r.json())["message"]
        async with s.get(f"{gw.base_url}/chat/completions") as r:
            assert r.status == 405
            assert_openai_error(await r.json())
            assert r.headers["allow"] == "POST"  # what is allowed (RFC 9110)


async def test_healthz_and_openapi(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{gw.url}/openapi.json") as r:
            doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(doc["paths"])
    # embeddings never stream (the document said they could: a review)
    assert set(doc["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"]) == {"application/json"}
    # a failed call says what it cost, and the document says so
    failed = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["502"]
    assert {"x-request-id", "x-llm-attempts", "x-llm-cost-usd"} <= set(failed["headers"])
    # a tenant's rate limits: OpenAI's headers on answers, the waits on a 429
    limited = {f"x-ratelimit-{w}-{k}" for w in ("limit", "remaining", "reset") for k in ("requests", "tokens")}
    served = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert limited <= set(served["headers"])
    refused = doc["paths"]["/v1/embeddings"]["post"]["responses"]["429"]
    assert limited | {"retry-after", "retry-after-ms"} <= set(refused["headers"])


async def test_a_gateway_without_providers_is_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    """Every call a 404 while /healthz said ok and the start logged "none" at INFO (a docs review)."""
    caplog.set_level(logging.INFO, logger="gateway")
    async with running_gateway(providers=()) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/healthz") as r:
            assert r.status == 503
            assert await r.json() == {**(await r.json()), "status": "no_providers", "providers": []}
    assert any(r.levelno == logging.WARNING and "configured providers: none" in r.getMessage() for r in caplog.records)


async def test_a_priority_naming_no_configured_provider_is_said_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """``priority: [openai]`` with the OpenAI key missing (a rotation's slip) and Azure configured:
    every call a 404 ``model_not_found`` and the start said "configured providers: azure" at
    INFO (a review). It is a WARNING naming the priority and what is configured."""
    caplog.set_level(logging.INFO, logger="gateway")
    async with running_gateway(providers=("azure",), settings={"priority": ["openai"]}) as gw:
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/healthz") as r:
            assert r.status == 503 and (await r.json())["status"] == "no_providers"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [warning] = [message for message in warnings if "priority" in message]
    assert "none in the priority ['openai']" in warning and "configured: azure" in warning


KEYS = [
    ApiKey(key="sk-tenant-a", tenant="tenant_a"),
    ApiKey(key="sk-admin", tenant="ops", admin=True),
]


async def test_keys_map_to_tenants_and_guard_tenant_id() -> None:
    async with running_gateway(providers=("openai",), settings={"api_keys": KEYS}) as gw:
        url = f"{gw.base_url}/chat/completions"
        status, body, _ = await post(url, json.dumps(CHAT))
        assert status == 401 and assert_openai_error(body)["code"] == "missing_api_key"

        status, body, _ = await post(url, json.dumps(CHAT), {"authorization": "Bearer wrong"})
        assert status == 401

        status, _, _headers = await post(url, json.dumps(CHAT), {"authorization": "Bearer sk-tenant-a"})
        assert status == 200
        assert gw.event_log.events[-1].tenant_id == "tenant_a"
        assert gw.event_log.events[-1].api_key_id.startswith("key_")
        assert "sk-tenant-a" not in gw.event_log.events[-1].to_json().decode()

        status, body, _ = await post(
            url, json.dumps({**CHAT, "tenantId": "tenant_b"}), {"authorization": "Bearer sk-tenant-a"}
        )
        assert status == 403 and assert_openai_error(body)["type"] == "permission_error"

        status, _, _ = await post(
            url, json.dumps({**CHAT, "tenantId": "tenant_b"}), {"authorization": "Bearer sk-admin"}
        )
        assert status == 200
        assert gw.event_log.events[-1].tenant_id == "tenant_b"


async def raw_status(url: str, head: bytes, body: bytes) -> tuple[int, dict]:
    """POST with header bytes no HTTP client library would send (not UTF-8)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        b"POST " + parts.path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + head + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )  # fmt: skip
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_a_key_that_is_not_utf8_or_a_malformed_authorization_header_is_a_401() -> None:
    async with running_gateway(providers=("openai",), settings={"api_keys": KEYS}) as gw:
        url = f"{gw.base_url}/chat/completions"
        for head in (b"authorization: Bearer sk-\xff", b"x-api-key: \xe9t\xe9"):
            status, body = await raw_status(url, head, json.dumps(CHAT).encode())
            assert status == 401 and assert_openai_error(body)["code"] == "invalid_api_key", head
        for header in ("Basic c2stdGVuYW50LWE6", "sk-tenant-a", "Bearer "):
            status, body, _ = await post(url, json.dumps(CHAT), {"authorization": header})
            error = assert_openai_error(body)
            assert status == 401 and error["code"] == "invalid_api_key" and "Bearer <key>" in error["message"]
        # another header with the key still works next to an Authorization header of another scheme
        status, _, _ = await post(url, json.dumps(CHAT), {"authorization": "Basic x", "x-api-key": "sk-tenant-a"})
        assert status == 200
        assert gw.event_log.events[-1].tenant_id == "tenant_a"


async def test_an_upstream_model_name_cannot_break_a_header_or_the_cost_line(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw.sims["openai"].served_model = "gpt-4\r\nx-injected: 1"
    caplog.set_level(logging.INFO, logger="gateway.cost")
    url = f"{gw.base_url}/chat/completions"
    status, _, headers = await post(url, json.dumps({**CHAT, "tenantId": "acme corp"}))
    assert status == 200
    assert headers["x-llm-model"] == "gpt-4??x-injected: 1" and "x-injected" not in headers
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
    assert line.startswith('Cost | tenant="acme corp" provider=openai model="gpt-4\\r\\nx-injected: 1" cost=')
    assert gw.event_log.events[-1].tenant_id == "acme corp"  # the stores keep the values as they are


async def test_the_cost_line_of_a_call_a_provider_refuses_counts_the_attempts_billed_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenAI cut the stream before its first content (billed, cost unknown); Azure then refused the
    request (400, no fallback). The cost line said $0.000000 while the stores held the billed
    attempt; it now says what the call cost: unpriced, as the stores do."""
    from gateway.simulators.base import Fault

    async with running_gateway(providers=("openai", "azure")) as gw:
        gw.sims["openai"].faults.push(Fault("cut", after_chunks=0))
        gw.sims["azure"].faults.push(Fault("bad_request"))
        caplog.set_level(logging.INFO, logger="gateway.cost")
        body = json.dumps({**CHAT, "stream": True, "tenantId": "t-refused"})
        async with aiohttp.ClientSession() as s, s.post(f"{gw.base_url}/chat/completions", data=body) as r:
            assert r.status == 400
        first, refused = gw.event_log.events[-2:]
        assert (first.outcome, first.billable, first.cost_usd) == ("stream_cut", True, None)
        assert (refused.provider, refused.http_status, refused.billable) == ("azure", 400, False)
        [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
        assert line == "Cost | tenant=t-refused provider=azure model=gpt-4 cost=unpriced"


async def test_open_gateway_takes_tenant_from_body_or_default(gw: RunningGateway) -> None:
    url = f"{gw.base_url}/chat/completions"
    status, _, headers = await post(url, json.dumps(CHAT))
    assert status == 200 and gw.event_log.events[-1].tenant_id == "default"
    status, _, _ = await post(url, json.dumps({**CHAT, "tenantId": "t9"}))
    assert gw.event_log.events[-1].tenant_id == "t9"
    assert Decimal(headers["x-llm-cost-usd"]) > 0


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic", "google", "ollama"])
async def test_each_provider_can_be_pinned(gw: RunningGateway, provider: str) -> None:
    status, body, headers = await post(f"{gw.base_url}/chat/completions", json.dumps({**CHAT, "provider": provider}))
    assert status == 200, body
    assert headers["x-llm-provider"] == provider
    assert body["choices"][0]["message"]["content"] == gw.sims[provider].reply
    event = gw.event_log.events[-1]
    assert event.provider == provider and event.prompt_tokens == 1
    if provider == "ollama":
        assert event.cost_usd == 0


async def test_the_gateway_follows_its_price_file_without_a_restart(tmp_path: Path) -> None:
    """An operator corrects a rate in the price file: new calls are priced with it within the
    reload interval. Before, the file was read once at start, so after `replay --reprice` (which
    reads the file anew) the history had the new rate and every new call the old one."""
    path = tmp_path / "prices.yaml"
    entry = 'version: ops\nprices:\n  - model: gpt-4\n    input_per_1k: "{}"\n    output_per_1k: "0.06"\n'
    path.write_text(entry.format("0.03"))
    settings = {"price_file": path, "price_reload_seconds": 0.02}
    async with running_gateway(providers=("openai",), settings=settings) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.base_url.removesuffix('/v1')}/healthz") as r:
            before = (await r.json())["priceVersion"]
        _, _, first = await post(f"{gw.base_url}/chat/completions", json.dumps(CHAT))
        path.write_text(entry.format("0.30"))
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # past the timestamp granularity
        for _ in range(300):
            await asyncio.sleep(0.01)
            async with s.get(f"{gw.base_url.removesuffix('/v1')}/healthz") as r:
                now = (await r.json())["priceVersion"]
            if now != before:
                break
        assert now != before and now.endswith(tuple("0123456789abcdef"))
        _, _, second = await post(f"{gw.base_url}/chat/completions", json.dumps(CHAT))
        old, new = gw.event_log.events[-2:]
    assert (old.price_version, new.price_version) == (before, now)
    assert old.prompt_tokens == new.prompt_tokens and old.completion_tokens == new.completion_tokens
    prompt, completion = Decimal(new.prompt_tokens) / 1000, Decimal(new.completion_tokens) / 1000
    assert Decimal(first["x-llm-cost-usd"]) == old.cost_usd == prompt * Decimal("0.03") + completion * Decimal("0.06")
    assert Decimal(second["x-llm-cost-usd"]) == new.cost_usd == prompt * Decimal("0.30") + completion * Decimal("0.06")


async def test_only_an_admin_key_sees_the_health_of_each_model() -> None:
    """Model names are the tenants' (a fine-tune's name says whose it is), and a model only one
    tenant uses shows its traffic: any tenant's key read every model's attempts and latencies
    on ``GET /v1/providers/health`` (review)."""
    secret = "ft:gpt-4o-mini-2024-07-18:tenant-a-org::acquisition-x"
    async with running_gateway(providers=("openai",), settings={"api_keys": KEYS}) as gw:
        status, _, _ = await post(
            f"{gw.base_url}/chat/completions",
            json.dumps({**CHAT, "model": secret}),
            {"authorization": "Bearer sk-tenant-a"},
        )
        assert status == 200
        async with aiohttp.ClientSession() as s:
            seen = {}
            for key in ("sk-tenant-a", "sk-admin"):
                async with s.get(f"{gw.base_url}/providers/health", headers={"authorization": f"Bearer {key}"}) as r:
                    assert r.status == 200
                    seen[key] = await r.json()
    openai_a, openai_admin = (seen[k]["providers"]["openai"] for k in ("sk-tenant-a", "sk-admin"))
    assert openai_a["models"] == {} and secret not in json.dumps(seen["sk-tenant-a"])
    assert openai_a["window"]["attempts"] == 1  # the provider's health stays every key's to read
    assert openai_admin["models"][secret]["window"]["attempts"] == 1


@pytest.mark.parametrize("model", ["gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"])
async def test_a_legacy_completion_model_on_the_chat_endpoint_is_a_404_as_at_openai(
    gw: RunningGateway, model: str
) -> None:
    """Sent upstream to the vendors' chat endpoints, which refuse these models: every provider
    was asked in vain (a review). Answered as OpenAI answers it, before any call."""
    status, body, _ = await post(
        f"{gw.base_url}/chat/completions", json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    )
    assert_openai_error(body)
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "v1/completions" in body["error"]["message"]
    assert gw.event_log.events == [] and all(sim.requests == [] for sim in gw.sims.values())
    status, _, _ = await post(f"{gw.base_url}/completions", json.dumps({"model": model, "prompt": "hi"}))
    assert status == 200


async def test_an_open_gateway_takes_no_call_from_a_page_of_another_site(gw: RunningGateway) -> None:
    """A page's ``text/plain`` POST (a "simple" request: no CORS preflight) was served and billed
    to the tenant it named, and a DNS-rebound name read answers (a review)."""
    url = f"{gw.base_url}/chat/completions"
    body = json.dumps({**CHAT, "tenantId": "victim"})
    status, answer, _ = await post(url, body, {"content-type": "text/plain", "origin": "https://evil.example"})
    assert status == 403 and assert_openai_error(answer)["code"] == "cross_site_refused"
    status, answer, _ = await post(url, body, {"content-type": "application/json", "host": "rebind.evil.example"})
    assert status == 403 and assert_openai_error(answer)["code"] == "cross_site_refused"
    assert gw.event_log.events == []
    status, _, _ = await post(url, body, {"content-type": "application/json", "origin": "http://localhost:3000"})
    assert status == 200 and len(gw.event_log.events) == 1


@pytest.mark.parametrize("detail", [["low"], {"a": 1}, 1])
async def test_an_image_detail_that_is_no_text_is_a_400(gw: RunningGateway, detail: object) -> None:
    """A list was a 500 (an unhashable value looked up in a set), which the SDK retried twice."""
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": detail}}
    body = {**CHAT, "messages": [{"role": "user", "content": [part]}]}
    status, answer, _ = await post(f"{gw.base_url}/chat/completions", json.dumps(body))
    assert status == 400 and assert_openai_error(answer)["param"] == "messages[0].content[0].image_url.detail"
