"""Prometheus /metrics reflects requests, attempts by outcome, tokens, cost and spool depth."""

from __future__ import annotations

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
