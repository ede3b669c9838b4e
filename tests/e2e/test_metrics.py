"""Prometheus /metrics reflects requests, attempts by outcome, tokens, cost and spool depth."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulators.base import Fault
from tests.support.gateway import RunningGateway

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "one two three"}]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_attempts_tokens_and_cost(gw: RunningGateway) -> None:
    gw.sims["openai"].faults.push(Fault("rate_limit", retry_after=1))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
            assert r.status == 200
        async with s.get(f"{gw.url}/metrics") as r:
            text = await r.text()
    m = samples(text)
    labels = (("model", "gpt-4"), ("outcome", "rate_limited"), ("provider", "openai"))
    assert m[("llm_gateway_attempts_total", labels)] == 1
    labels_ok = (("model", "gpt-4"), ("outcome", "success"), ("provider", "openai"))
    assert m[("llm_gateway_attempts_total", labels_ok)] == 1
    assert m[("llm_gateway_tokens_total", (("kind", "prompt"), ("model", "gpt-4"), ("provider", "openai")))] == 3
    event = gw.event_log.events[-1]
    cost = m[("llm_gateway_cost_usd_total", (("model", "gpt-4"), ("provider", "openai")))]
    assert abs(cost - float(event.cost_usd)) < 1e-12
    assert m[("llm_gateway_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))] == 1
    assert ("llm_gateway_spool_depth", ()) in m


async def test_metrics_may_take_an_admin_key() -> None:
    """The metrics name every model called, fine-tunes included (``ft:...:acme::x``: whose it
    is), with no key needed (a review); ``metrics_auth`` makes them an admin's."""
    from gateway.settings import ApiKey
    from tests.support.gateway import running_gateway

    keys = [ApiKey(key="sk-tenant-a", tenant="a"), ApiKey(key="sk-admin-ops", tenant="ops", admin=True)]
    for required in (True, False):
        settings = {"api_keys": keys, "metrics_auth": required}
        async with running_gateway(providers=("openai",), settings=settings) as gw, aiohttp.ClientSession() as s:
            statuses = []
            for key in (None, "sk-tenant-a", "sk-admin-ops"):
                headers = {"authorization": f"Bearer {key}"} if key else {}
                async with s.get(f"{gw.url}/metrics", headers=headers) as r:
                    statuses.append(r.status)
                    if r.status == 403:
                        assert (await r.json())["error"]["type"] == "permission_error"
        assert statuses == ([401, 403, 200] if required else [200, 200, 200])


async def metrics_once_the_client_left(gw: RunningGateway, body: dict[str, object]) -> dict[Any, float]:
    """POST ``body`` with a client that gives up after 0.2 s (the upstream answers after 0.6 s),
    then the metrics once the gateway has counted that request as a 499 (or after 2.5 s)."""
    gw.sims["openai"].faults.push(Fault("delay", delay=0.6))
    async with aiohttp.ClientSession() as s:
        try:
            timeout = aiohttp.ClientTimeout(total=0.2)
            async with s.post(f"{gw.base_url}/chat/completions", json=body, timeout=timeout) as r:
                await r.read()
        except TimeoutError:
            pass
        for _ in range(50):  # the call ends once the upstream answers
            async with s.get(f"{gw.url}/metrics") as r:
                m = samples(await r.text())
            if m.get(("llm_gateway_requests_total", ANSWERED_499)):
                break
            await asyncio.sleep(0.05)
    return m


ANSWERED_499 = (("route", "/v1/chat/completions"), ("status", "499"))
ANSWERED_200 = (("route", "/v1/chat/completions"), ("status", "200"))


async def test_an_answer_its_client_left_before_counts_as_499_not_200(gw: RunningGateway) -> None:
    """An SDK gave up on a slow call (its timeout) and retried: the first call ran on and was
    billed, and the metrics counted its answer, which nobody read, as a 200."""
    m = await metrics_once_the_client_left(gw, CHAT)
    assert m[("llm_gateway_requests_total", ANSWERED_499)] == 1
    assert ("llm_gateway_requests_total", ANSWERED_200) not in m
    [event] = gw.event_log.events
    assert event.outcome == "success" and event.billable  # it ran, and is billed


async def test_a_stream_its_client_left_counts_as_499_not_200(gw: RunningGateway) -> None:
    """A stream whose client left before its end was counted a 200 (its status line had gone, or
    was about to, when the write failed); it is counted as 499."""
    m = await metrics_once_the_client_left(gw, {**CHAT, "stream": True})
    assert m[("llm_gateway_requests_total", ANSWERED_499)] == 1
    assert ("llm_gateway_requests_total", ANSWERED_200) not in m
    [event] = gw.event_log.events  # recorded once: whole from the upstream, so priced whole
    assert event.outcome in ("success", "cancelled")


async def test_circuits_health_and_error_answers_are_in_the_metrics() -> None:
    """An open circuit sends no attempt, so the attempts' error rate went quiet while a provider
    was still down, and a 503 of every circuit open looked like one of connections busy (a
    review of an outage): each configured provider's circuit and health, and the error answers
    by code."""
    from tests.support.gateway import running_gateway

    async with running_gateway(providers=("openai",)) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/metrics") as r:
            m = samples(await r.text())
        # a configured provider before its first attempt: closed and healthy (a Kafka-mode review
        # found no series until then: an absent() alert could not tell it from "not configured")
        assert m[("llm_gateway_provider_circuit", (("provider", "openai"),))] == 0
        assert m[("llm_gateway_provider_health", (("provider", "openai"),))] == 0
        assert ("llm_gateway_provider_circuit", (("provider", "anthropic"),)) not in m  # not configured
        gw.sims["openai"].faults.always(Fault("server_error"))
        for _ in range(6):  # five failures open the circuit; the sixth request tries nothing
            async with s.post(f"{gw.base_url}/chat/completions", json=CHAT) as r:
                assert r.status in (502, 503)
        async with s.get(f"{gw.url}/metrics") as r:
            m = samples(await r.text())
    assert m[("llm_gateway_provider_circuit", (("provider", "openai"),))] == 2  # open
    assert m[("llm_gateway_provider_health", (("provider", "openai"),))] == 2  # down
    assert m[("llm_gateway_error_answers_total", (("code", "circuits_open"),))] == 1
    assert m[("llm_gateway_error_answers_total", (("code", "all_providers_failed"),))] == 5


async def test_error_answers_are_counted_by_the_gateways_own_codes(gw: RunningGateway) -> None:
    """A vendor's code is free text: it is counted under its class's code (a bounded label);
    answers the routes give (404) and the front door's are counted too."""
    gw.sims["openai"].faults.push(Fault("bad_request"))  # OpenAI's context_length_exceeded
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.base_url}/chat/completions", json={**CHAT, "provider": "openai"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "context_length_exceeded"
        async with s.get(f"{gw.url}/v1/nothing-here") as r:
            assert r.status == 404
        async with s.get(f"{gw.url}/metrics") as r:
            m = samples(await r.text())
    assert m[("llm_gateway_error_answers_total", (("code", "invalid_request"),))] == 1
    assert m[("llm_gateway_error_answers_total", (("code", "not_found"),))] == 1
    assert not any(k[0] == "llm_gateway_error_answers_total" and "context" in str(k[1]) for k in m)
