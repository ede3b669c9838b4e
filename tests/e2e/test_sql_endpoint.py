"""SQL analytics as a user drives it: ``POST /v1/analytics/sql`` on the embedded gateway (it owns
the DuckDB file) and the ``llm-gateway sql`` command, against it and against the file alone."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from analytics.sql import SqlResult
from gateway.server import server_installers
from gateway.settings import ApiKey, Settings
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.processes import run_command

KEYS = [ApiKey(key="sk-tenant", tenant="acme"), ApiKey(key="sk-admin", tenant="ops", admin=True)]
COUNT = "SELECT count(*) AS n FROM usage_facts"


def embedded(tmp_path: Path, **extra: Any) -> Any:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]

    return running_gateway(
        providers=("openai", "anthropic"),
        event_log="settings",
        settings={"data_dir": tmp_path, **extra},
        installers=server_installers(settings),
    )


async def post_sql(gw: RunningGateway, body: dict[str, Any], key: str | None = "sk-admin") -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.base_url}/analytics/sql", json=body, headers=headers) as r,
    ):
        if r.content_type == "text/csv":
            return r.status, (await r.text(), dict(r.headers))
        return r.status, await r.json()


async def chat(gw: RunningGateway, tenant_key: str | None = None, tenant: str = "acme") -> Decimal:
    headers = {"authorization": f"Bearer {tenant_key}"} if tenant_key else {}
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "tenantId": tenant}
    async with aiohttp.ClientSession() as s, s.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        return Decimal(r.headers["x-llm-cost-usd"])


async def wait_for_rows(gw: RunningGateway, count: int, key: str | None = "sk-admin") -> None:
    started = time.monotonic()
    while True:
        status, body = await post_sql(gw, {"sql": COUNT}, key)
        assert status == 200, body
        if body["rows"][0][0] >= count:
            return
        assert time.monotonic() - started < 5, body
        await asyncio.sleep(0.02)


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_command("sql", *args, env=env)


async def test_only_admin_keys_may_run_sql(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        cost = await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 1)
        status, body = await post_sql(gw, {"sql": COUNT}, key="sk-tenant")
        assert status == 403 and body["error"]["type"] == "permission_error"
        status, body = await post_sql(gw, {"sql": COUNT}, key=None)
        assert status == 401
        status, body = await post_sql(gw, {"sql": COUNT}, key="sk-wrong")
        assert status == 401
        status, body = await post_sql(gw, {"sql": "SELECT tenant_id, cost_usd FROM v_cost_daily"})
        assert status == 200
        assert body["columns"] == [
            {"name": "tenant_id", "type": "VARCHAR"},
            {"name": "cost_usd", "type": "DECIMAL(38,10)"},
        ]
        [[tenant, total]] = body["rows"]
        assert tenant == "acme" and isinstance(total, str) and Decimal(total) == cost


async def test_an_open_gateway_counts_as_admin(tmp_path: Path) -> None:
    async with embedded(tmp_path) as gw:
        await chat(gw)
        await wait_for_rows(gw, 1, key=None)


async def test_writes_attach_copy_and_file_reads_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 1)
        for statement in (
            "DELETE FROM usage_facts",
            "INSERT INTO usage_facts SELECT * FROM usage_facts",
            "DROP TABLE usage_facts",
            f"ATTACH '{tmp_path}/other.duckdb' AS other",
            f"COPY usage_facts TO '{tmp_path}/stolen.csv'",
            f"COPY (SELECT * FROM usage_facts) TO '{tmp_path}/stolen.parquet' (FORMAT parquet)",
            f"SELECT * FROM read_csv('{secret}')",
            f"SELECT * FROM '{secret}'",
            "SELECT * FROM read_text('/etc/passwd')",
            "SELECT * FROM glob('/etc/*')",
            "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
            "SELECT 1; DELETE FROM usage_facts",
            "SET enable_external_access = true",
        ):
            status, body = await post_sql(gw, {"sql": statement})
            assert status == 400, (statement, body)
            assert body["error"]["code"] == "sql_not_allowed" and body["error"]["param"] == "sql", (statement, body)
            assert "hunter2" not in json.dumps(body)
        status, body = await post_sql(gw, {"sql": COUNT})
        assert status == 200 and body["rows"] == [[1]]  # nothing was deleted
        # and projection still works after all that (the sink's own file access is intact)
        await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 2)
    assert not (tmp_path / "other.duckdb").exists()
    assert not (tmp_path / "stolen.csv").exists() and not (tmp_path / "stolen.parquet").exists()


async def test_formats_bounds_and_bad_requests(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        status, (text, headers) = await post_sql(
            gw, {"sql": "SELECT * FROM range(5) t(i)", "format": "csv", "maxRows": 3}
        )
        assert status == 200 and text == "i\n0\n1\n2\n"
        assert headers["x-llm-sql-truncated"] == "true" and headers["x-llm-sql-row-count"] == "3"
        status, body = await post_sql(gw, {"sql": "SELECT * FROM range(5)", "maxRows": 3})
        assert status == 200 and body["truncated"] is True and body["rowCount"] == 3 and body["maxRows"] == 3
        started = time.monotonic()
        status, body = await post_sql(gw, {"sql": "SELECT count(*) FROM range(1000000000000)", "timeoutSeconds": 0.3})
        assert status == 400 and body["error"]["code"] == "sql_timeout"
        assert time.monotonic() - started < 5
        status, body = await post_sql(gw, {"sql": "SELEC 1"})
        assert status == 400 and body["error"]["code"] == "sql_error" and "syntax" in body["error"]["message"]
        status, body = await post_sql(gw, {"sql": "SELECT repeat('x', 1000000) FROM range(100)", "maxRows": 100})
        assert status == 400 and body["error"]["code"] == "sql_result_too_large", body
        for bad, param in (
            ({}, "sql"),
            ({"sql": 1}, "sql"),
            ({"sql": "SELECT 1", "maxRows": 0}, "maxRows"),
            ({"sql": "SELECT 1", "maxRows": 10**9}, "maxRows"),
            ({"sql": "SELECT 1", "maxRows": True}, "maxRows"),
            ({"sql": "SELECT 1", "timeoutSeconds": 0}, "timeoutSeconds"),
            ({"sql": "SELECT 1", "timeoutSeconds": 3600}, "timeoutSeconds"),
            ({"sql": "SELECT 1", "format": "xml"}, "format"),
        ):
            status, body = await post_sql(gw, bad)
            assert status == 400 and body["error"]["param"] == param, (bad, body)
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gw.base_url}/analytics/sql", data=b"{", headers={"authorization": "Bearer sk-admin"}) as r,
        ):
            assert r.status == 400


async def test_results_are_encoded_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 64 MiB of text: encoding it on the loop held the gateway's LLM calls for 1.5 s."""
    threads: list[str] = []
    for name in ("to_json", "to_csv"):
        encode = getattr(SqlResult, name)

        def recording(self: SqlResult, _encode: Any = encode) -> str:
            threads.append(threading.current_thread().name)
            return str(_encode(self))

        monkeypatch.setattr(SqlResult, name, recording)
    async with embedded(tmp_path) as gw:
        for fmt in ("json", "csv"):
            status, _ = await post_sql(gw, {"sql": "SELECT 1 AS one", "format": fmt})
            assert status == 200
    assert len(threads) == 2 and threading.main_thread().name not in threads


async def test_cli_asks_the_running_gateway(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        cost = await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 1)
        query = "SELECT tenant_id, provider, calls, cost_usd FROM v_cost_daily"
        code, out, err = await cli(query, "--url", gw.url, "--api-key", "sk-admin", "--format", "json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["rows"][0][:3] == ["acme", "openai", 1] and Decimal(doc["rows"][0][3]) == cost
        code, out, err = await cli(query, "--url", gw.url, "--api-key", "sk-admin")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["tenant_id", "provider", "calls", "cost_usd"] and lines[-1] == "(1 row)"
        assert lines[2].split()[:3] == ["acme", "openai", "1"]
        code, out, err = await cli(query, "--url", gw.url, "--api-key", "sk-admin", "--format", "csv")
        assert code == 0 and out.splitlines()[0] == "tenant_id,provider,calls,cost_usd"
        code, _, err = await cli(query, "--url", gw.url, "--api-key", "sk-tenant")
        assert code != 0 and "403" in err
        code, _, err = await cli("DELETE FROM usage_facts", "--url", gw.url, "--api-key", "sk-admin")
        assert code != 0 and "sql_not_allowed" in err


async def test_the_operator_commands_take_the_config_file_as_serve_does(tmp_path: Path) -> None:
    """Only ``serve`` took ``--config``: beside a ``serve --config``, ``sql`` found no admin key
    and was refused 401 (a docs review)."""
    config = tmp_path / "gateway.yaml"
    config.write_text("api_keys:\n  - {key: sk-admin, tenant: ops, admin: true}\n")
    env = {"PATH": "/usr/bin:/bin", "LLM_GATEWAY_DATA_DIR": str(tmp_path / "cli")}
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        code, _, err = await cli("SELECT 1 AS one", "--url", gw.url, env=env)
        assert code != 0 and "401" in err
        code, out, err = await cli(
            "SELECT 1 AS one", "--url", gw.url, "--config", str(config), "--format", "json", env=env
        )
        assert code == 0, err
        assert json.loads(out)["rows"] == [[1]]
    for command in ("costs", "replay", "export-parquet", "export-log", "consume"):
        code, out, _ = await run_command(command, "--help", env=env)
        assert code == 0 and "--config" in out, command


async def test_cli_reads_the_file_when_nothing_runs(tmp_path: Path) -> None:
    async with embedded(tmp_path) as gw:
        cost = await chat(gw)
        await wait_for_rows(gw, 1, key=None)
    env = {"LLM_GATEWAY_DATA_DIR": str(tmp_path), "LLM_GATEWAY_PORT": "1", "PATH": "/usr/bin:/bin"}
    code, out, err = await cli("SELECT sum(cost_usd) AS cost FROM llm_usage", "--format", "json", env=env)
    assert code == 0, err
    assert Decimal(json.loads(out)["rows"][0][0]) == cost
    code, _, err = await cli(f"SELECT * FROM read_text('{tmp_path}/events.sqlite3')", env=env)
    assert code != 0 and "sql_not_allowed" in err


async def test_the_store_not_open_is_a_503_in_the_openai_error_format() -> None:
    """While the process starts or stops, the analytics store may not be open: ``/v1/costs``
    answered a bare 500 "Internal error" (the SQL endpoint a 503)."""
    from aiohttp import web

    from analytics.http import install_analytics
    from analytics.store import AnalyticsStore
    from gateway.api.auth import Authenticator
    from gateway.api.middleware import error_middleware
    from tests.support.gateway import start_app

    app = web.Application(middlewares=[error_middleware])
    install_analytics(app, AnalyticsStore(), Authenticator([], "default"))
    runner, url = await start_app(app)
    try:
        async with aiohttp.ClientSession() as session:
            for method, path, kwargs in (
                ("GET", "/v1/costs", {"params": {"tenantId": "t"}}),
                ("POST", "/v1/analytics/sql", {"json": {"sql": "SELECT 1"}}),
            ):
                async with session.request(method, f"{url}{path}", **kwargs) as response:  # type: ignore[arg-type]
                    body = await response.json()
                assert response.status == 503, (path, body)
                assert body["error"]["code"] == "analytics_unavailable" and "not open" in body["error"]["message"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/analytics/sql", "/admin/replay"])
@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (b'{"sql": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}, "invalid_json"),  # past Python's parser
        (b"not gzip at all", {"content-encoding": "gzip"}, "invalid_body"),  # an encoding it is not in
        (b'{"sql": ' + b"7" * 5001 + b"}", {}, "invalid_json"),  # past Python's integer conversion
    ],
)
async def test_a_broken_admin_body_is_a_400_in_the_openai_format(
    tmp_path: Path, path: str, body: bytes, headers: dict[str, str], code: str
) -> None:
    """Both were a 500 (RecursionError, RequestPayloadError); the long number's 400 told the
    client to call ``sys.set_int_max_str_digits()``."""
    async with embedded(tmp_path) as gw, aiohttp.ClientSession() as s:
        headers = {"content-type": "application/json", **headers}
        async with s.post(f"{gw.base_url}{path}", data=body, headers=headers) as r:
            assert r.status == 400, await r.text()
            error = (await r.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert "sys." not in error["message"]


async def test_a_query_that_is_not_text_is_a_400(tmp_path: Path) -> None:
    """A lone surrogate (valid JSON, not text): DuckDB's parser raised a TypeError, a 500."""
    async with embedded(tmp_path) as gw:
        status, body = await post_sql(gw, {"sql": "SELECT '\ud800'"})
    assert status == 400 and body["error"]["code"] == "sql_error", body


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT list(repeat(chr(120), 1000)) AS l FROM range(100000) GROUP BY range % 1000",  # many lists
        "SELECT range(20000000) AS r -- one list of 20 million numbers",  # one value: 4 GB of Python
    ],
)
async def test_a_result_of_lists_is_held_to_the_size_limit(tmp_path: Path, sql: str) -> None:
    """Lists, structs and maps counted as 8 bytes a value: a 100 MB answer went through the 64 MiB
    limit, and one list of 20 million numbers took the gateway to 4 GB (review)."""
    async with embedded(tmp_path) as gw:
        # (a time limit of 120 s: the 20 million numbers took over the default 30 s in a CI run
        # beside other work on the 2 cores; the size is what is tested)
        status, body = await post_sql(gw, {"sql": sql, "maxRows": 10000, "timeoutSeconds": 120})
        # too large, or past DuckDB's memory limit while it measures: a 400 either way, no rows read
        assert status == 400, str(body)[:300]
        assert body["error"]["code"] in ("sql_result_too_large", "sql_error"), str(body)[:300]
        status, body = await post_sql(gw, {"sql": "SELECT range(3) AS r, {'a': [1, 2]} AS s -- small"})
    assert status == 200 and body["rows"] == [[[0, 1, 2], {"a": [1, 2]}]], body


async def test_costs_and_sql_refuse_a_store_being_rebuilt_from_the_log(tmp_path: Path) -> None:
    """During a full rebuild (or a new store's catch-up) the store holds part of the history:
    ``/v1/costs`` answered a tenant's total at a tenth of its value, rising, with a 200 (a
    review). Both it and SQL answer 503 ``store_rebuilding`` until the store is whole."""
    from analytics.http import STORE
    from consumers.replay import REBUILD_TABLE
    from tests.e2e.test_embedded_mode import get_costs

    async with embedded(tmp_path, api_keys=KEYS) as gw:
        cost = await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 1)
        store = gw.app[STORE]
        await store.run(lambda c: c.execute(f"INSERT INTO {REBUILD_TABLE} (started_at, reprice) VALUES (now(), false)"))
        status, body = await get_costs(gw, {}, key="sk-tenant")
        assert status == 503 and body["error"]["code"] == "store_rebuilding", body
        assert "rebuild" in body["error"]["message"]
        status, body = await post_sql(gw, {"sql": COUNT})
        assert status == 503 and body["error"]["code"] == "store_rebuilding", body
        await store.run(lambda c: c.execute(f"DELETE FROM {REBUILD_TABLE}"))
        status, body = await get_costs(gw, {}, key="sk-tenant")
        assert status == 200 and Decimal(body["totalCost"]) == cost, body


async def test_a_query_that_found_no_free_slot_in_its_time_is_a_503(tmp_path: Path) -> None:
    """It waited past its own limit behind two long ones (a review), then was answered as the
    query's fault (a 400 sql_timeout: a diff review): the service was busy, a 503."""
    async with embedded(tmp_path) as gw:
        slow = [
            asyncio.create_task(
                post_sql(gw, {"sql": "SELECT count(*) FROM range(1000000000000)", "timeoutSeconds": 20})
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        status, body = await post_sql(gw, {"sql": "SELECT 1", "timeoutSeconds": 0.5}, key=None)
        assert status == 503 and body["error"]["code"] == "sql_busy", body
        for task in slow:  # their clients leave: the queries stop
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
