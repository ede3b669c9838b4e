"""Budgets across gateway replicas (real apps, a real broker): what a tenant spends through one
replica is counted by every other within seconds, once, a replica that starts later reads what
the period spent from the topic, and a broker restart makes no replica count a call twice."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.api.state import STATE
from gateway.budgets.ledger import SpendLedger
from gateway.eventlog.kafka_producer import KafkaEventLog
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.waiting import until

pytestmark = pytest.mark.kafka

LIMIT = "1"


@asynccontextmanager
async def replica(
    kafka: str, topic: str, tmp_path: Path, name: str, limit: str = LIMIT, budgets: dict[str, Any] | None = None
) -> AsyncIterator[RunningGateway]:
    settings: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka,
        "topic": topic,
        "instance_id": name,
        "data_dir": tmp_path / name,
        "budgets": budgets or {"tenants": {"acme": {"usd": limit, "period": "day"}}},
    }
    log = KafkaEventLog(kafka, topic, tmp_path / f"spool-{name}.sqlite3", client_id=f"gw-{name}")
    async with running_gateway(providers=("openai",), event_log=log, settings=settings) as gw:
        yield gw


def ledger(gw: RunningGateway) -> SpendLedger:
    found = gw.app[STATE].budgets
    assert found is not None
    return found


def spent(gw: RunningGateway) -> Decimal:
    standing = ledger(gw).standing("acme")
    assert standing is not None
    return standing.spent


async def call(gw: RunningGateway, **extra: Any) -> Decimal:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body={"tenantId": "acme"}, **extra
        )
    return Decimal(raw.headers["x-llm-cost-usd"])


async def test_replicas_count_each_others_spend_once_and_a_late_one_reads_the_period(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.budgets")
    topic = f"llm.usage.budgets-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "a"))
        b = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "b"))
        await until(lambda: ledger(a).complete and ledger(b).complete, "both replicas read the (empty) period")
        total = Decimal(0)
        for gw in (a, b, a):
            total += await call(gw)
        await until(lambda: spent(a) == spent(b) == total, f"both replicas count {total}")
        await asyncio.sleep(1.0)  # the own events' echoes are in: still counted once
        assert spent(a) == spent(b) == total

        c = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "c"))
        await until(lambda: ledger(c).complete, "the late replica reads the period's records")
        assert spent(c) == total

    # a restarted replica goes on from its snapshot's offsets: it reads nothing again
    caplog.clear()
    async with replica(kafka_bootstrap, topic, tmp_path, "a") as a:
        await until(lambda: ledger(a).complete, "replica a reads on from its snapshot")
        assert spent(a) == total
        assert f"read 0 records of {topic}" in caplog.text

    # a snapshot whose records are not the topic's (a topic of that name made again) is not used
    saved = tmp_path / "a" / "budgets.json"
    body = json.loads(saved.read_text())
    body["checks"] = {partition: "not-this-topic" for partition in body["checks"]}
    body["spent"] = [[tenant, period, start, "1000"] for tenant, period, start, _ in body["spent"]]
    saved.write_text(json.dumps(body))
    caplog.clear()
    async with replica(kafka_bootstrap, topic, tmp_path, "a") as a:
        await until(lambda: ledger(a).complete, "replica a reads the period again")
        assert spent(a) == total
        assert "records are not on" in caplog.text

    # a budget the calls so far used up: a new replica refuses the tenant, the others too
    async with replica(kafka_bootstrap, topic, tmp_path, "d", limit=str(total)) as d:
        await until(lambda: ledger(d).complete, "replica d reads the period")
        with pytest.raises(openai.RateLimitError, match="budget"):
            await call(d)


async def test_a_broker_restart_makes_no_replica_count_a_call_twice(
    kafka_bootstrap: str, kafka_broker_control: Any, tmp_path: Path
) -> None:
    topic = f"llm.usage.budgets-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "a"))
        b = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "b"))
        await until(lambda: ledger(a).complete and ledger(b).complete, "both replicas read the period")
        total = await call(a) + await call(b)
        await until(lambda: spent(a) == spent(b) == total, "both count the first calls")

        await kafka_broker_control.astop()
        total += await call(a)  # served while the broker is down: spooled, counted by a at once
        assert spent(a) == total
        await kafka_broker_control.astart()

        total += await call(b)
        await until(lambda: spent(a) == spent(b) == total, f"both count {total} after the restart")
        await asyncio.sleep(3.0)  # reconnected followers went on from where they were
        assert spent(a) == spent(b) == total


def team_budget(limit: str) -> dict[str, Any]:
    return {"metadata": [{"tenant": "acme", "match": {"team": "search"}, "usd": limit}]}


def team_spent(gw: RunningGateway) -> Decimal:
    [team] = ledger(gw).scoped_standings("acme")
    return team.spent


async def test_replicas_count_a_teams_spend_from_the_topic_and_refuse_its_calls_once_it_is_used(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"llm.usage.team-budgets-{uuid.uuid4().hex[:8]}"
    search = {"metadata": {"team": "search"}}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "a", budgets=team_budget("9")))
        b = await stack.enter_async_context(replica(kafka_bootstrap, topic, tmp_path, "b", budgets=team_budget("9")))
        await until(lambda: ledger(a).complete and ledger(b).complete, "both replicas read the (empty) period")
        total = await call(a, **search) + await call(b, **search)
        await call(a, metadata={"team": "ads"})
        await until(lambda: team_spent(a) == team_spent(b) == total, f"both replicas count the team's {total}")
        await asyncio.sleep(1.0)  # the own events' echoes are in: still counted once
        assert team_spent(a) == team_spent(b) == total

    # a replica started with the team's budget used up reads the period from the topic and refuses
    # the team's calls, not the tenant's others
    async with replica(kafka_bootstrap, topic, tmp_path, "c", budgets=team_budget(str(total))) as c:
        await until(lambda: ledger(c).complete, "replica c reads the period")
        with pytest.raises(
            openai.RateLimitError, match="for calls with metadata 'team=search', has used its monthly budget"
        ):
            await call(c, **search)
        await call(c, metadata={"team": "ads"})
