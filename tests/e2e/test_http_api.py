"""The HTTP surface as a raw client sees it: errors, limits, auth and tenants, discovery."""

from __future__ import annotations

import json
from decimal import Decimal

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


async def test_healthz_and_openapi(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{gw.url}/openapi.json") as r:
            doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(doc["paths"])


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
