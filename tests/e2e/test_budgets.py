"""Budgets through the real gateway (embedded log, real adapters, simulators, the official SDK):
a tenant that spent its budget is refused before any provider is asked, a restarted gateway
still knows what was spent (it reads the period's events from the log), and ``GET /v1/budgets``
says where each tenant stands, to the exact cent."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.api.state import STATE
from gateway.eventlog.factory import EMBEDDED_LOG_FILE
from gateway.settings import ApiKey
from tests.support.gateway import Answered, RunningGateway, running_gateway

KEYS = [
    ApiKey(key="sk-a", tenant="tenant_a"),
    ApiKey(key="sk-b", tenant="tenant_b"),
    ApiKey(key="sk-admin", tenant="ops", admin=True),
]
#: less than one call of the simulator costs: one call uses the budget up
TINY = "0.000001"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def gateway(
    tmp_path: Path, budgets: dict[str, Any], clock: Clock | None = None, answered: Answered | None = None
) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": KEYS, "budgets": budgets},
        clock=clock,
        configure=answered.install if answered is not None else None,
    ) as gw:
        yield gw


async def logged_events(gw: RunningGateway) -> int:
    await gw.event_log.settled()
    with sqlite3.connect(gw.event_log.path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def chat(gw: RunningGateway, key: str, **extra: Any) -> Any:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as client:
        return await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **extra
        )


async def budgets(gw: RunningGateway, key: str, **params: str) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/budgets", params=params, headers=headers) as r:
        return r.status, await r.json()


async def test_a_tenant_past_its_budget_is_refused_before_any_provider_and_the_sdk_does_not_retry(
    tmp_path: Path,
) -> None:
    answered = Answered()
    async with gateway(tmp_path, {"tenants": {"tenant_a": {"usd": TINY, "period": "day"}}}, answered=answered) as gw:
        first = await chat(gw, "sk-a")
        assert Decimal(first.headers["x-llm-cost-usd"]) > Decimal(TINY)
        asked = len(gw.sims["openai"].requests)
        events = await logged_events(gw)
        answered.count = 0
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a") as client:  # retries 429s twice
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.RateLimitError):
                await client.embeddings.create(model="text-embedding-3-small", input="hi")
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                )
        assert answered.count == 3  # x-should-retry: false, though the SDK retries 429s
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
        assert "tenant_a" in error["message"] and "daily budget" in error["message"]
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert len(gw.sims["openai"].requests) == asked  # no provider asked
        assert await logged_events(gw) == events == 1

        # another tenant (no budget) is served
        assert (await chat(gw, "sk-b")).headers["x-llm-provider"] == "openai"


async def test_a_restarted_gateway_reads_what_was_spent_this_period_from_the_log(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 31, 23, 58, tzinfo=UTC))
    limits = {"default": {"usd": TINY, "period": "day"}}
    async with gateway(tmp_path, limits, clock) as gw:
        await chat(gw, "sk-a")
        with pytest.raises(openai.RateLimitError):
            await chat(gw, "sk-a")
    # the same day, a new process: still refused (the spend is in the log, nowhere else)
    clock.now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    async with gateway(tmp_path, limits, clock) as gw:
        with pytest.raises(openai.RateLimitError):
            await chat(gw, "sk-a")
        assert (await chat(gw, "sk-b")).headers["x-llm-provider"] == "openai"
    # the next day (and year): served again
    clock.now = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    async with gateway(tmp_path, limits, clock) as gw:
        assert (await chat(gw, "sk-a")).headers["x-llm-provider"] == "openai"


async def test_the_budgets_endpoint_says_what_each_tenant_spent_to_the_cent(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 15, 10, 0, tzinfo=UTC))
    limits = {"tenants": {"tenant_a": {"usd": "10", "period": "month"}}, "default": {"usd": "2.5", "period": "day"}}
    async with gateway(tmp_path, limits, clock) as gw:
        costs = [Decimal((await chat(gw, "sk-a")).headers["x-llm-cost-usd"]) for _ in range(3)]
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a", max_retries=0) as client:
            async with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            ) as streamed:
                async for _ in streamed.iter_lines():
                    pass
        await chat(gw, "sk-b")

        status, own = await budgets(gw, "sk-a")
        assert status == 200
        [mine] = own["data"]
        spent = Decimal(mine["spentUsd"])
        assert spent > sum(costs)  # the stream counted too
        assert mine == {
            "object": "budget",
            "tenantId": "tenant_a",
            "metadata": {},
            "period": "month",
            "limitUsd": "10",
            "spentUsd": mine["spentUsd"],
            "remainingUsd": str((Decimal(10) - spent).normalize()),
            "exceeded": False,
            "periodStart": "2026-12-01T00:00:00Z",
            "resetsAt": "2027-01-01T00:00:00Z",
        }
        assert own["complete"] is True

        status, every = await budgets(gw, "sk-admin")
        assert status == 200
        assert [(b["tenantId"], b["period"], b["limitUsd"]) for b in every["data"]] == [
            ("tenant_a", "month", "10"),
            ("tenant_b", "day", "2.5"),
        ]
        assert every["data"][1]["resetsAt"] == "2026-12-16T00:00:00Z"
        status, named = await budgets(gw, "sk-admin", tenantId="tenant_b")
        assert [b["tenantId"] for b in named["data"]] == ["tenant_b"]

        status, refused = await budgets(gw, "sk-b", tenantId="tenant_a")
        assert status == 403 and refused["error"]["code"] == "permission_denied"
        status, refused = await budgets(gw, "sk-a", tenant="tenant_a")
        assert status == 400 and refused["error"]["param"] == "tenant"
        assert refused["error"]["code"] == "unknown_parameter"
        for query in (
            "tenantId=tenant_a&tenantId=tenant_b",
            "tenantId=a%0Ab",
            "tenantId=" + "x" * 513,
            "tenantId=%20tenant_a",
            "tenantId=",
        ):
            status, refused = await budgets_query(gw, "sk-admin", query)
            assert status == 400 and refused["error"]["param"] == "tenantId", query
        status, refused = await budgets(gw, "sk-wrong")
        assert status == 401


async def test_an_admin_names_any_tenant_a_key_can_have_up_to_512_characters(tmp_path: Path) -> None:
    """A key's tenant may have 512 characters (what every store holds); a request's tenantId was
    held to 128, so an admin could neither bill nor look up such a tenant (a review)."""
    long_tenant = "t" * 512
    keys = [*KEYS, ApiKey(key="sk-long", tenant=long_tenant)]
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": keys, "budgets": {"tenants": {long_tenant: {"usd": "1"}}}},
    ) as gw:
        billed = await chat(gw, "sk-admin", extra_body={"tenantId": long_tenant})
        status, named = await budgets(gw, "sk-admin", tenantId=long_tenant)
        assert status == 200
        [standing] = named["data"]
        assert standing["tenantId"] == long_tenant
        assert Decimal(standing["spentUsd"]) == Decimal(billed.headers["x-llm-cost-usd"]) > 0
        # a blank at either end names no tenant a key or a budget can have: refused, not billed apart
        # nor an invisible or format character (a zero-width space, a BOM, a no-break space): a
        # key's or a budget's tenant id is refused with one at start (a review billed them apart)
        for odd in (" " + long_tenant[:10], long_tenant[:10] + " ", "acme\u200b", "\ufeffacme", "ac\u00a0me"):
            with pytest.raises(openai.BadRequestError) as refused:
                await chat(gw, "sk-admin", extra_body={"tenantId": odd})
            assert refused.value.code == "invalid_value" and refused.value.param == "tenantId"


async def budgets_query(gw: RunningGateway, key: str, query: str) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/budgets?{query}", headers=headers) as r:
        return r.status, await r.json()


async def test_without_budgets_nothing_is_refused_and_the_endpoint_lists_none(tmp_path: Path) -> None:
    async with gateway(tmp_path, {}) as gw:
        for _ in range(2):
            await chat(gw, "sk-a")
        assert await budgets(gw, "sk-admin") == (200, {"object": "list", "data": [], "complete": True})


def duplicate_last_record(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / EMBEDDED_LOG_FILE) as conn:
        conn.execute(
            "INSERT INTO events (key, value, ts) "
            "SELECT key, value, ts FROM events WHERE seq = (SELECT max(seq) FROM events)"
        )


def remove_log(data_dir: Path) -> None:
    for path in data_dir.glob(EMBEDDED_LOG_FILE + "*"):
        path.unlink()


async def test_a_restart_reads_the_log_from_the_snapshot_and_trusts_no_snapshot_of_another_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.budgets")
    limits = {"default": {"usd": "100", "period": "month"}}

    def spent(gw: RunningGateway) -> Decimal:
        standing = gw.app[STATE].budgets.standing("tenant_a")  # type: ignore[union-attr]
        assert standing is not None
        return standing.spent

    async with gateway(tmp_path, limits) as gw:
        total = sum([Decimal((await chat(gw, "sk-a")).headers["x-llm-cost-usd"]) for _ in range(3)], Decimal(0))
    snapshot = json.loads((tmp_path / "budgets.json").read_text())
    assert snapshot["positions"] == {"0": 3} and snapshot["log"] == "sqlite"
    assert [row[0] for row in snapshot["spent"]] == ["tenant_a"] and Decimal(snapshot["spent"][0][3]) == total

    caplog.clear()
    async with gateway(tmp_path, limits) as gw:
        assert spent(gw) == total
        assert "read 0 events of the log" in caplog.text and "from the snapshot's position" in caplog.text
        total += Decimal((await chat(gw, "sk-a")).headers["x-llm-cost-usd"])
        assert spent(gw) == total

    # the log holding a record twice (a spool taken in again after a crash), read without a
    # snapshot: counted once, as every projection keeps it
    duplicate_last_record(tmp_path)
    (tmp_path / "budgets.json").unlink()
    async with gateway(tmp_path, limits) as gw:
        assert spent(gw) == total
        assert "read 5 events of the log" in caplog.text

    # a snapshot left beside a log it was not made from (the log replaced by another) is not used
    saved = (tmp_path / "budgets.json").read_text()
    remove_log(tmp_path)
    async with gateway(tmp_path, limits) as gw:
        first = Decimal((await chat(gw, "sk-a")).headers["x-llm-cost-usd"])
    (tmp_path / "budgets.json").write_text(saved)  # its position 4 and id are not this log's
    caplog.clear()
    async with gateway(tmp_path, limits) as gw:
        assert "not on this log" in caplog.text
        assert spent(gw) == first
