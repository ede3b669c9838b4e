"""The Parquet export as a user drives it: ``POST /v1/analytics/export`` on the embedded gateway
(it owns the DuckDB file) and ``llm-gateway export-parquet``, against it and against the file
alone; the files hold what the calls cost, to the last decimal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from gateway.server import server_installers
from gateway.settings import Settings
from tests.e2e.test_sql_endpoint import KEYS, chat, wait_for_rows
from tests.support.gateway import running_gateway
from tests.support.processes import run_command

TODAY = datetime.now(UTC).date().isoformat()


def embedded(tmp_path: Path, **extra: Any) -> Any:
    settings = Settings(data_dir=tmp_path, **extra, _env_file=None)  # type: ignore[call-arg]
    return running_gateway(
        providers=("openai", "anthropic"),
        event_log="settings",
        settings={"data_dir": tmp_path, **extra},
        installers=server_installers(settings),
    )


async def post_export(gw: Any, body: Any, key: str | None = "sk-admin") -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.post(f"{gw.base_url}/analytics/export", json=body, headers=headers) as r:
        return r.status, await r.json()


def exported(directory: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect() as conn:
        return conn.execute(
            "SELECT day::VARCHAR, tenant_id, count(*), sum(cost_usd) FROM read_parquet(?, hive_partitioning = true) "
            "GROUP BY ALL ORDER BY ALL",
            [f"{directory}/usage_facts/*/*.parquet"],
        ).fetchall()


async def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    return await run_command("export-parquet", *args, env=env, cwd=cwd)


async def test_the_gateway_exports_what_its_calls_cost(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        costs = [await chat(gw, "sk-tenant") for _ in range(3)]
        await wait_for_rows(gw, 3)
        status, body = await post_export(gw, {}, key="sk-tenant")
        assert status == 403 and body["error"]["type"] == "permission_error"
        status, body = await post_export(gw, {}, key=None)
        assert status == 401
        status, body = await post_export(gw, {"from": TODAY, "to": TODAY})
        assert status == 200, body
    export = tmp_path / "export"
    assert body["directory"] == str(export)
    [day] = body["data"]
    assert day["day"] == TODAY and day["rows"] == 3 and day["unpricedCalls"] == 0
    assert Decimal(day["costUsd"]) == sum(costs)
    assert day["path"] == f"usage_facts/day={TODAY}/usage.parquet"
    assert (export / day["path"]).stat().st_size == day["bytes"]
    assert exported(export) == [(TODAY, "acme", 3, sum(costs))]


async def test_bad_requests_are_400s_naming_the_field(tmp_path: Path) -> None:
    async with embedded(tmp_path, api_keys=KEYS) as gw:
        for bad, param in (
            ({"from": "2026-02-30"}, "from"),
            ({"from": "2026-3-1"}, "from"),
            ({"to": 20260301}, "to"),
            ({"from": "2026-03-02", "to": "2026-03-01"}, "to"),
            ({"day": "2026-03-01"}, "day"),
        ):
            status, body = await post_export(gw, bad)
            assert status == 400 and body["error"]["param"] == param, (bad, body)
            assert set(body["error"]) == {"message", "type", "param", "code"}
        status, body = await post_export(gw, ["2026-03-01"])
        assert status == 400 and "JSON object" in body["error"]["message"]
    assert not (tmp_path / "export").exists()


async def test_the_command_asks_the_gateway_then_reads_the_file(tmp_path: Path) -> None:
    export = tmp_path / "elsewhere"
    async with embedded(tmp_path, api_keys=KEYS, export_dir=export) as gw:
        cost = await chat(gw, "sk-tenant")
        await wait_for_rows(gw, 1)
        code, out, err = await cli("--url", gw.url, "--api-key", "sk-admin", "--json")
        assert code == 0, err
        assert [(d["day"], d["rows"], Decimal(d["costUsd"])) for d in json.loads(out)["data"]] == [(TODAY, 1, cost)]
        code, _, err = await cli("--url", gw.url, "--api-key", "sk-tenant")
        assert code != 0 and "403" in err
    assert exported(export) == [(TODAY, "acme", 1, cost)]
    # nothing runs: the command exports from the file itself, into the configured directory
    env = {"LLM_GATEWAY_DATA_DIR": str(tmp_path), "LLM_GATEWAY_PORT": "1", "PATH": "/usr/bin:/bin"}
    code, out, err = await cli("--from", TODAY, env={**env, "LLM_GATEWAY_EXPORT_DIR": str(tmp_path / "offline")})
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"1 day file(s), 1 rows, ${cost}") and "read" in err
    assert exported(tmp_path / "offline") == [(TODAY, "acme", 1, cost)]
    code, _, err = await cli("--from", "2026-02-30", env=env)
    assert code == 2 and "YYYY-MM-DD" in err
    code, _, err = await cli("--from", "2026-03-02", "--to", "2026-03-01", env=env)
    assert code != 0 and "--to must not be before --from" in err


async def test_an_export_waits_for_a_whole_store_and_names_a_directory_it_cannot_write(tmp_path: Path) -> None:
    """During a full rebuild (or a new store's catch-up) the store's days are partial: an export
    then replaced ten good days with a tenth of their rows and answered 200 (a re-test). A
    directory it cannot write is the export's 503, not "the analytics store is unavailable"."""
    from analytics.http import STORE
    from consumers.replay import REBUILD_TABLE

    async with embedded(tmp_path, export_dir=tmp_path / "export") as gw:
        await chat(gw)
        await wait_for_rows(gw, 1, key=None)
        store = gw.app[STORE]
        await store.run(lambda c: c.execute(f"INSERT INTO {REBUILD_TABLE} (started_at, reprice) VALUES (now(), false)"))
        status, body = await post_export(gw, {}, key=None)
        assert status == 409 and body["error"]["code"] == "export_refused" and "rebuild" in body["error"]["message"]
        await store.run(lambda c: c.execute(f"DELETE FROM {REBUILD_TABLE}"))
        (tmp_path / "export").write_text("a file where the directory should be")
        status, body = await post_export(gw, {}, key=None)
        assert status == 503 and body["error"]["code"] == "export_failed", body
        assert str(tmp_path / "export") in body["error"]["message"]
    assert (tmp_path / "export").read_text() == "a file where the directory should be"


async def test_a_relative_export_dir_is_answered_as_the_server_resolved_it(tmp_path: Path) -> None:
    env = {"LLM_GATEWAY_DATA_DIR": str(tmp_path), "LLM_GATEWAY_PORT": "1", "PATH": "/usr/bin:/bin"}
    async with embedded(tmp_path) as gw:
        await chat(gw)
        await wait_for_rows(gw, 1, key=None)
        status, body = await post_export(gw, {}, key=None)
    assert status == 200 and Path(body["directory"]).is_absolute()
    code, out, err = await cli("--json", env={**env, "LLM_GATEWAY_EXPORT_DIR": "relative-export"}, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["directory"] == str(tmp_path / "relative-export")
