"""Two gateway processes (two real apps, each with its own Kafka event log and health view)
agree on the health of a provider that only one of them saw failing, through the usage topic."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.health.plugin import HEALTH
from gateway.health.view import HealthView
from gateway.ids import utcnow
from gateway.simulators.base import Fault
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import until

pytestmark = pytest.mark.kafka

HEALTH_CONFIG: dict[str, Any] = {"cooldown_seconds": 5.0}


async def ask(gw: RunningGateway) -> tuple[str, str]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    return raw.headers["x-llm-provider"], raw.headers["x-llm-attempts"]


async def test_two_gateways_route_on_the_same_view(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.health")
    topic = f"llm.usage.health-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        gateways: list[RunningGateway] = []
        for name in ("a", "b"):
            settings: dict[str, Any] = {
                "kafka_bootstrap_servers": kafka_bootstrap,
                "topic": topic,
                "instance_id": name,
                "health": HEALTH_CONFIG,
            }
            log = KafkaEventLog(kafka_bootstrap, topic, tmp_path / f"spool-{name}.sqlite3", client_id=f"gw-{name}")
            gateways.append(
                await stack.enter_async_context(
                    running_gateway(providers=("openai", "azure"), event_log=log, settings=settings)
                )
            )
        a, b = gateways
        view_a, view_b = a.app[HEALTH], b.app[HEALTH]

        # only gateway A's OpenAI fails; B never calls its own OpenAI
        a.sims["openai"].faults.always(Fault("server_error"))
        for _ in range(5):
            assert await ask(a) == ("azure", "2")
        assert view_a.health("openai").circuit == "open"  # in-process, at once
        await until(lambda: view_b.health("openai").circuit == "open", "B learns the circuit opened from Kafka")

        ha, hb = view_a.health("openai"), view_b.health("openai")
        assert (ha.state, ha.consecutive_failures, ha.stats.failures) == ("down", 5, 5)
        assert (hb.state, hb.consecutive_failures, hb.stats.failures) == ("down", 5, 5)
        # decided on event times, so both replicas agree on when it opened and when it may be probed
        assert ha.opened_at == hb.opened_at and ha.retry_at == hb.retry_at
        assert ha.last_transition is not None and hb.last_transition is not None
        assert ha.last_transition.reason == hb.last_transition.reason

        # B routes around OpenAI although its own OpenAI never failed
        assert await ask(b) == ("azure", "1")
        assert b.sims["openai"].requests == []
        await until(lambda: view_a.health("azure").stats.successes == 6, "A counts B's Azure call")
        await until(lambda: view_b.health("azure").stats.successes == 6, "B counts A's Azure calls")

        # after the cool-down, B's next call is the probe; its success closes the circuit on A too
        assert hb.retry_at is not None
        await asyncio.sleep(max(0.0, (hb.retry_at - utcnow()).total_seconds()) + 0.1)
        assert await ask(b) == ("openai", "1")
        assert view_b.health("openai").circuit == "closed"
        await until(lambda: view_a.health("openai").circuit == "closed", "A learns the probe succeeded")
        a.sims["openai"].faults.clear()
        assert await ask(a) == ("openai", "1")
        assert_agree(view_a, view_b)


def assert_agree(a: HealthView, b: HealthView) -> None:
    for provider in ("openai", "azure"):
        ha, hb = a.health(provider), b.health(provider)
        assert (ha.circuit, ha.stats.failures) == (hb.circuit, hb.stats.failures)
        assert abs(ha.stats.window_end - hb.stats.window_end) < timedelta(seconds=5)
