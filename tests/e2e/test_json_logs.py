"""JSON logs: every way a call ends writes its one cost line with the values as fields, the
request id (which the text line has no room for) among them, equal to what the client got."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway import json_log
from gateway.json_log import JsonFormatter
from gateway.pricing.base import format_usd
from gateway.simulators.base import Fault
from tests.e2e.test_cli import clean_env, free_port, process, wait_http
from tests.support.gateway import running_gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tenantId": "t-json"}


def cost_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "gateway.cost"]
    caplog.clear()
    for line in lines:
        assert line["message"].startswith(f"Cost | tenant={line['tenantId']} provider={line['provider']} ")
    return lines


async def test_every_call_end_writes_its_cost_fields(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_log, "structured", True)  # as use_json() sets it
    caplog.set_level(logging.INFO, logger="gateway.cost")
    async with running_gateway(providers=("openai",)) as gw, aiohttp.ClientSession() as s:
        url = f"{gw.base_url}/chat/completions"
        async with s.post(url, json=CHAT) as r:
            assert r.status == 200
            served = r.headers
        [line] = cost_fields(caplog)
        assert line["requestId"] == served["x-request-id"] and line["costUsd"] == served["x-llm-cost-usd"]
        assert (line["tenantId"], line["provider"], line["endpoint"]) == ("t-json", "openai", "chat.completions")
        assert "metadata" not in line

        async with s.post(url, json={**CHAT, "metadata": {"team": "search"}}) as r:
            assert r.status == 200
        [line] = cost_fields(caplog)
        assert line["metadata"] == {"team": "search"}  # the text line is unchanged
        assert line["message"] == f"Cost | tenant=t-json provider=openai model=gpt-4o-mini cost=${line['costUsd']}"
        assert "metadataCut" not in line
        # 16 values of 512 emoji: a 32 KB line, which log shippers split at 16 KB (a review)
        big = {f"k{i}": "😀" * 512 for i in range(16)}
        async with s.post(url, json={**CHAT, "metadata": big}) as r:
            assert r.status == 200
        record = next(r for r in caplog.records if r.name == "gateway.cost")
        assert len(JsonFormatter().format(record).encode()) < 16_384
        [line] = cost_fields(caplog)
        assert line["metadataCut"] is True and 0 < len(line["metadata"]) < 16
        assert all(v == "😀" * 256 + "..." for v in line["metadata"].values())
        assert gw.event_log.events[-1].metadata == big  # the event keeps it whole

        async with s.post(url, json={**CHAT, "stream": True}) as r:
            assert r.status == 200
            await r.read()
            streamed = r.headers
        [line] = cost_fields(caplog)
        assert line["requestId"] == streamed["x-request-id"] and line["endpoint"] == "chat.completions"
        assert line["costUsd"] == format_usd(gw.event_log.events[-1].cost_usd) != "unpriced"

        async with s.post(f"{gw.base_url}/embeddings", json={"model": "text-embedding-3-small", "input": "x"}) as r:
            assert r.status == 200
            embedded = r.headers
        [line] = cost_fields(caplog)
        assert (line["requestId"], line["endpoint"], line["tenantId"]) == (
            embedded["x-request-id"],
            "embeddings",
            "default",
        )

        gw.sims["openai"].faults.push(Fault("server_error"), times=10)
        async with s.post(url, json=CHAT) as r:
            assert r.status >= 500
            failed = r.headers
        [line] = cost_fields(caplog)
        assert (line["requestId"], line["provider"], line["model"]) == (failed["x-request-id"], "none", "gpt-4o-mini")
        assert line["costUsd"] == "0.000000"  # 5xx attempts are not billed


async def test_serve_with_json_logs_writes_only_json_lines(tmp_path: Path) -> None:
    port = free_port()
    env = {**clean_env(tmp_path), "LLM_GATEWAY_LOG_FORMAT": "json"}
    async with process("serve", "--simulate", "--port", str(port), env=env) as proc:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}], extra_body={"tenantId": "tenant_123"}
            )
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = [json.loads(line) for line in err.decode().splitlines()]  # every line, or this fails
    [cost] = [line for line in lines if line["logger"] == "gateway.cost"]
    assert cost["message"] == f"Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=${cost['costUsd']}"
    assert cost["costUsd"] == raw.headers["x-llm-cost-usd"] and cost["requestId"] == raw.headers["x-request-id"]
    assert lines[-1]["message"].startswith("llm-gateway stopped")

    # a refusal to start is a JSON line too; a format no one knows is refused at once
    bad = {**env, "LLM_GATEWAY_PORT": "eighty"}
    async with process("serve", env=bad) as proc:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    [refusal] = [json.loads(line) for line in err.decode().splitlines()]
    assert proc.returncode == 2 and refusal["level"] == "ERROR"
    assert refusal["message"].startswith("llm-gateway: invalid configuration:") and "port" in refusal["message"]
    # argparse's refusals too (they were its usage and error lines in text)
    for args in (["--log-format", "json", "serve", "--port", "abc"], ["serve", "--bogus"]):
        async with process(*args, env=env) as proc:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        [refused] = [json.loads(line) for line in err.decode().splitlines()]
        assert proc.returncode == 2 and refused["level"] == "ERROR" and "error:" in refused["message"], args
    for args, environ in (
        (["--log-format", "xml", "serve"], env),
        (["serve"], {**env, "LLM_GATEWAY_LOG_FORMAT": "xml"}),
    ):
        async with process(*args, env=environ) as proc:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and "xml" in err.decode() and "json" in err.decode(), err
