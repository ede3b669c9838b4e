"""The CLI as a person runs it: `llm-gateway serve --simulate` and `llm-gateway simulate`."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def process(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_http(url: str, deadline: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert loop.time() < end, f"{url} did not come up"
            await asyncio.sleep(0.1)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI", "AZURE", "ANTHROPIC", "GEMINI", "GOOGLE", "OLLAMA", "LLM_GATEWAY", "KAFKA"))
    }
    env["LLM_GATEWAY_DATA_DIR"] = str(tmp_path)
    return env


async def test_serve_simulate_answers_and_logs_the_cost_line(tmp_path: Path) -> None:
    port = free_port()
    async with process("serve", "--simulate", "--port", str(port), env=clean_env(tmp_path)) as proc:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello there"}], "tenantId": "tenant_123"}
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            cost = r.headers["x-llm-cost-usd"]
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = err.decode().splitlines()
    cost_lines = [line.split(": ", 1)[1] for line in lines if "gateway.cost" in line]
    assert cost_lines == [f"Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=${cost}"]
    assert re.fullmatch(r"\d+\.\d{6,}", cost)
    assert (tmp_path / "events.sqlite3").exists()


async def test_simulate_prints_working_endpoints(tmp_path: Path) -> None:
    async with process("simulate", env=clean_env(tmp_path)) as proc:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        while len(exports) < 9:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = value
        assert set(exports) >= {
            "OPENAI_BASE_URL",
            "AZURE_OPENAI_ENDPOINT",
            "ANTHROPIC_BASE_URL",
            "GOOGLE_GEMINI_BASE_URL",
            "OLLAMA_HOST",
            "OPENAI_API_KEY",
        }
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {exports['OPENAI_API_KEY']}"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{exports['OPENAI_BASE_URL']}/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["object"] == "chat.completion"
            async with s.post(f"{exports['OLLAMA_HOST']}/api/chat", json={**body, "stream": False}) as r:
                assert r.status == 200 and (await r.json())["done"] is True


async def test_a_second_gateway_on_a_held_data_dir_says_why_in_one_line(tmp_path: Path) -> None:
    """DuckDB lets one process write the cost store: the second `serve` (and a `consume`) on the
    same data dir stop with one line naming the file and what to do, not a traceback; a port in
    use is one line too."""
    port = free_port()
    env = clean_env(tmp_path)
    async with process("serve", "--simulate", "--port", str(port), env=env):
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        for args in (("serve", "--port", str(free_port())), ("consume",)):
            async with process(*args, env=env) as second:
                _, err = await asyncio.wait_for(second.communicate(), 30)
            text = err.decode()
            assert second.returncode == 1, text
            assert "Traceback" not in text
            [line] = [x for x in text.splitlines() if "cannot start" in x]
            assert "analytics.duckdb" in line and "--no-project" in line
        async with process("serve", "--no-project", "--port", str(port), env=env) as taken:
            _, err = await asyncio.wait_for(taken.communicate(), 30)
        assert taken.returncode == 1 and "Traceback" not in err.decode()
        assert "llm-gateway serve: cannot start:" in err.decode() and "address already in use" in err.decode()


async def test_a_cost_store_of_a_newer_version_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """An older version on a store a newer one migrated: a traceback ending in "written by a
    newer llm-gateway", with no remedy (upgrade review)."""
    from analytics.store import AnalyticsStore

    env = clean_env(tmp_path)
    store = AnalyticsStore(str(Path(env["LLM_GATEWAY_DATA_DIR"]) / "analytics.duckdb"))
    store.open_sync()
    store.connection.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')")
    store.close_sync()
    for args in (("serve", "--port", str(free_port())), ("consume", "--port", str(free_port()))):
        async with process(*args, env=env) as refused:
            _, err = await asyncio.wait_for(refused.communicate(), 30)
        text = err.decode()
        assert refused.returncode == 1 and "Traceback" not in text, text
        [line] = [x for x in text.splitlines() if "cannot start" in x]
        assert "[999]" in line and "move the file aside" in line


@pytest.mark.parametrize("command", ["serve", "consume"])
async def test_a_port_in_use_is_one_line_after_the_stores_opened(tmp_path: Path, command: str) -> None:
    """The embedded serve opens DuckDB and starts its projector before it binds: a taken port
    then printed 15 lines of ERROR traceback ("athrow(): asynchronous generator is already
    running") before the one line; the port is now bound inside the cleanup."""

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ("serve", "--simulate", "--port", port) if command == "serve" else ("consume", "--port", port)
        async with process(*args, env=clean_env(tmp_path)) as proc:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 1 and "address already in use" in text, text
    assert "Traceback" not in text and "ERROR" not in text, text
    # nothing was opened before the port was found taken (a second consume on Kafka joined the
    # consumer group first, and the running member gave up its partitions to the rebalance)
    assert not (tmp_path / "analytics.duckdb").exists() and not (tmp_path / "events.sqlite3").exists()


async def test_costs_uses_the_configured_admin_key_and_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        "api_keys:\n  - {key: sk-team-a, tenant: tenant_a}\n  - {key: sk-admin, tenant: ops, admin: true}\n",
        encoding="utf-8",
    )
    env = {**clean_env(tmp_path), "LLM_GATEWAY_CONFIG": str(config), "LLM_GATEWAY_PORT": str(port)}
    async with process("serve", "--simulate", env=env):
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": "Bearer sk-team-a"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
        for _ in range(100):
            async with process("costs", "--tenant", "tenant_a", "--json", env=env) as costs:
                out, err = await asyncio.wait_for(costs.communicate(), 30)
            assert costs.returncode == 0, err.decode()  # no --api-key: the config's admin key
            if '"usageCount": 1' in out.decode():
                break
            await asyncio.sleep(0.1)
        assert '"usageCount": 1' in out.decode()
    # nothing runs now: the file is read directly, and a bad time is one line
    async with process("costs", "--tenant", "tenant_a", "--start", "garbage", env=env) as bad:
        _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 1 and "Traceback" not in err.decode() and "'start'" in err.decode()


@asynccontextmanager
async def serving_slowly(
    tmp_path: Path, delay: float, **env_extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, aiohttp.ClientSession, str]]:
    """``llm-gateway serve`` in a process, on an OpenAI simulator that answers after ``delay``
    seconds; yields the process, a client session and the chat URL."""
    from gateway.simulators.base import Fault
    from gateway.simulators.openai import OpenAISimulator

    sim = OpenAISimulator(api_key="sk-test")
    await sim.start()
    sim.faults.always(Fault("delay", delay=delay))
    port = free_port()
    env = clean_env(tmp_path) | {
        "OPENAI_BASE_URL": f"{sim.base_url}/v1",
        "OPENAI_API_KEY": "sk-test",
        "LLM_GATEWAY_PRIORITY": '["openai"]',
        **env_extra,
    }
    try:
        async with process("serve", "--port", str(port), env=env) as proc, aiohttp.ClientSession() as s:
            await wait_http(f"http://127.0.0.1:{port}/healthz")
            yield proc, s, f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        await sim.stop()


SLOW_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}


async def test_sigterm_lets_the_calls_in_flight_finish_with_their_events(tmp_path: Path) -> None:
    """``docker stop`` and Kubernetes send SIGTERM: the calls in flight (a json call and a
    stream, both waiting on a slow upstream) get their whole answers and their usage events are
    on the log before the process exits 0. Without a handler the process died at once: clients
    got cut bodies and the attempts' events were lost (0 of 13 in a review)."""
    import signal
    import sqlite3

    async with serving_slowly(tmp_path, 1.5) as (proc, s, url):

        async def call(stream: bool) -> tuple[int, bytes]:
            async with s.post(url, json={**SLOW_BODY, "stream": stream}) as r:
                return r.status, await r.read()

        calls = asyncio.gather(call(False), call(True))
        await asyncio.sleep(0.5)  # both are waiting on the upstream
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # again: still stopping (it killed the process, a re-test)
        (json_status, json_body), (stream_status, stream_body) = await asyncio.wait_for(calls, 20)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert proc.stderr is not None
        last = (await proc.stderr.read()).decode().rstrip().rsplit("\n", 1)[-1]
        assert last.endswith(
            "INFO gateway: llm-gateway stopped: the calls in flight finished and their events are on the log"
        )
    assert json_status == stream_status == 200
    assert b'"finish_reason":"stop"' in json_body and stream_body.endswith(b"data: [DONE]\n\n")
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        values = [row[0] for row in db.execute("SELECT value FROM events")]
    assert len(values) == 2 and all(b'"outcome":"success"' in bytes(v) for v in values)


async def test_a_stop_with_events_left_in_the_kafka_spool_says_where_they_are(tmp_path: Path) -> None:
    """The spool's close said "left in the spool", and the last line "their events are on the
    log" (a review); and the running gateway's /healthz said ``ok`` with nothing on why."""
    import signal

    broker = f"127.0.0.1:{free_port()}"  # nothing listens: Kafka unavailable
    async with serving_slowly(tmp_path, 0.0, KAFKA_BOOTSTRAP_SERVERS=broker) as (proc, s, url):
        async with s.post(url, json=SLOW_BODY) as r:
            assert r.status == 200
        port = url.split(":")[2].split("/")[0]
        health: dict[str, Any] = {}
        for _ in range(100):
            async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                health = await r.json()
            if health["eventLog"]["status"] == "unavailable":
                break
            await asyncio.sleep(0.1)
        assert health["eventLog"]["status"] == "unavailable" and f"Kafka at {broker} unavailable" in str(health)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        last = (await proc.stderr.read()).decode().rstrip().rsplit("\n", 1)[-1]
    assert last.endswith(
        "llm-gateway stopped: the calls in flight finished and their events are stored "
        "(1 of them in the spool, sent at the next start)"
    ), last


async def first_health(port: int, seconds: float) -> tuple[int, Any]:
    """The first answer of ``GET /healthz`` on ``port``, once something listens there."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(seconds):
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    return resp.status, await resp.json()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.2)


async def test_consume_without_its_broker_waits_for_it_saying_so(tmp_path: Path) -> None:
    """`consume` started before its broker exited at once (a deploy restarting both left
    projection to a supervisor's restart policy): it waits, its health says why (503, not
    ready), and a stop ends it at once."""
    port = free_port()
    env = clean_env(tmp_path) | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    async with process("consume", "--port", str(port), env=env) as proc:
        status, health = await first_health(port, 60)
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert status == 503 and health["status"] == "waiting_for_log"
    assert "KafkaConnectionError" in health["lagError"]
    assert "the event log cannot be reached" in err.decode() and "Traceback" not in err.decode()
    first = next(line for line in err.decode().splitlines() if "the event log cannot be reached" in line)
    assert "Connect call failed" in first and "AddressFamily" not in first, first  # the cause, named at once
    assert err.decode().rstrip().endswith("its projection ended and its group llm-usage-projector was left")


async def test_consume_on_a_broker_address_that_never_answers_serves_health_and_stops_at_once(
    tmp_path: Path,
) -> None:
    """A bootstrap address that takes connections and never answers held the start for
    aiokafka's whole timeout (no health served), and a stop while a try waited on it took 5 s
    and warned of a batch cancelled that did not exist (a re-test)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the kernel; nothing ever reads or answers
        port = free_port()
        env = clean_env(tmp_path) | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{silent.getsockname()[1]}"}
        async with process("consume", "--port", str(port), env=env) as proc:
            status, health = await first_health(port, 30)
            await asyncio.sleep(2.0)  # its next try (1 s on) is waiting for the silent broker now
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert (status, health["status"]) == (503, "waiting_for_log")
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "still busy" not in err.decode()


async def test_serve_warns_when_it_listens_beyond_loopback_without_keys(tmp_path: Path) -> None:
    port = free_port()
    async with process(
        "serve", "--simulate", "--host", "0.0.0.0", "--port", str(port), env=clean_env(tmp_path)
    ) as proc:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert "WARNING" in err.decode() and "no API keys are configured and the gateway listens on 0.0.0.0" in err.decode()


async def test_small_cli_edges_an_operator_meets(tmp_path: Path) -> None:
    """A bogus --log-level is refused, not taken as INFO; replay on a mistyped data dir says so
    instead of creating it and replaying nothing."""
    env = clean_env(tmp_path)
    async with process("--log-level", "bogus", "costs", "--tenant", "t", env=env) as bogus:
        _, err = await asyncio.wait_for(bogus.communicate(), 30)
    assert bogus.returncode == 2 and "--log-level" in err.decode()

    missing = tmp_path / "typo"
    async with process("replay", "--local", env={**env, "LLM_GATEWAY_DATA_DIR": str(missing)}) as replay:
        _, err = await asyncio.wait_for(replay.communicate(), 60)
    assert replay.returncode != 0 and "no event log at" in err.decode(), err.decode()
    assert not (missing / "analytics.duckdb").exists()


async def test_a_reader_that_leaves_early_is_not_a_traceback(tmp_path: Path) -> None:
    """`llm-gateway costs --json | head -1` ended with a BrokenPipeError traceback, exit 1."""
    from analytics.store import AnalyticsStore
    from consumers.sinks.duckdb import DuckDBSink
    from tests.unit.test_projector import make_event

    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    await store.open()
    await DuckDBSink(store).apply([make_event(i).model_copy(update={"tenant_id": "t"}) for i in range(200)])
    await store.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "costs", "--tenant", "t", "--json", "--limit", "200",
            env={**clean_env(tmp_path), "LLM_GATEWAY_PORT": "1"}, stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and "Traceback" not in err.decode(), err.decode()


async def test_a_stop_cancels_the_calls_still_running_after_the_shutdown_timeout(tmp_path: Path) -> None:
    """Calls longer than the stop's grace (``LLM_GATEWAY_SHUTDOWN_TIMEOUT``) are cancelled and
    recorded so, and the process exits: aiohttp's 60 s let an orchestrator's SIGKILL (Kubernetes
    after 30 s, ``docker stop`` after 10) take the process first, and the events with it."""
    import signal
    import sqlite3
    import time

    async with serving_slowly(tmp_path, 60, LLM_GATEWAY_SHUTDOWN_TIMEOUT="4") as (proc, s, url):

        async def call(stream: bool) -> tuple[int, dict[str, str], Any]:
            try:
                async with s.post(url, json={**SLOW_BODY, "stream": stream}) as r:
                    headers = {name.lower(): value for name, value in r.headers.items()}
                    return r.status, headers, await r.json(content_type=None)
            except aiohttp.ClientError:
                return 0, {}, None  # cut: the gateway went away

        calls = asyncio.gather(call(False), call(True))
        await asyncio.sleep(0.5)  # both are waiting on the upstream
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        stopped = time.monotonic() - started
        answers = await asyncio.wait_for(calls, 20)
        # each client hears why, what its call cost and not to retry it (its attempt may be
        # billed): a dropped connection, which the SDKs retried on another replica (a review)
        for status, headers, body in answers:
            assert status == 503 and body["error"]["code"] == "gateway_stopping", (status, body)
            assert headers["x-should-retry"] == "false" and headers["x-llm-cost-usd"] == "unpriced"
            assert headers["x-llm-attempts"] == "1" and headers["x-request-id"].startswith("req_")
        assert proc.stderr is not None
        last = (await proc.stderr.read()).decode().splitlines()[-1]
        # it said "the calls in flight finished" (a review)
        assert "llm-gateway stopped: 2 call(s) still running after the shutdown timeout were cancelled" in last
    # the shutdown timeout once: not the upstream's 60 s, nor twice the timeout (aiohttp's runner
    # spends it twice: 52 s for the default 25, past Kubernetes' 30 s grace; a review)
    assert 4 <= stopped < 6.5, stopped
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        values = [bytes(row[0]) for row in db.execute("SELECT value FROM events")]
    assert len(values) == 2 and all(b'"outcome":"cancelled"' in v for v in values)
    # the files hold tenants' usage and vendors' error texts: its user's only (they were 0644)
    for made in (tmp_path / "events.sqlite3", tmp_path / "analytics.duckdb"):
        assert made.stat().st_mode & 0o077 == 0, (made, oct(made.stat().st_mode))


async def test_bad_operator_input_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A review: a bad ``--url`` was the HTTP client's traceback (costs, replay) or a misleading
    "did not answer with JSON" (sql); ``simulate`` on a port past 65531, an unknown host or a
    port in use was a traceback; an empty ``LLM_GATEWAY_DATA_DIR`` put the event log and the cost
    store in the working directory, and an empty ``LLM_GATEWAY_CONFIG`` read ".". Now each is
    one line and exit code 2 (a usage or configuration error) or 1 (cannot start)."""
    env = clean_env(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = str(held.getsockname()[1])
        cases = [
            (["costs", "--tenant", "t", "--url", "notaurl"], env, 2, "--url"),
            (["costs", "--tenant", "t", "--url", "http://127.0.0.1:1:2"], env, 2, "--url"),
            (["sql", "select 1", "--url", "ftp://x"], env, 2, "--url"),
            (["replay", "--url", "http://[::1"], env, 2, "--url"),
            (["simulate", "--port", "65533"], env, 2, "--port"),
            (["simulate", "--host", "nosuchhost.invalid"], env, 1, "cannot start"),
            (["simulate", "--port", taken], env, 1, "cannot start"),
            (["simulate", "--host", ""], env, 2, "--host"),
            (["costs", "--tenant", "t"], {**env, "LLM_GATEWAY_DATA_DIR": ""}, 2, "data_dir"),
            (["costs", "--tenant", "t"], {**env, "LLM_GATEWAY_CONFIG": " "}, 2, "LLM_GATEWAY_CONFIG"),
        ]

        async def run(args: list[str], environ: dict[str, str]) -> tuple[int | None, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", *args, env=environ, cwd=work,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:  # a command that did not end (a regression): not left running
                    proc.kill()
                    await proc.wait()
            return proc.returncode, err.decode()

        results = await asyncio.gather(*(run(args, environ) for args, environ, _, _ in cases))
    for (args, _, code, fragment), (returncode, err) in zip(cases, results, strict=True):
        assert returncode == code and fragment in err, (args, returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 8, (args, err)  # argparse: usage + 1
    assert os.listdir(work) == []  # nothing written where the commands ran


async def test_costs_read_from_the_file_says_so(tmp_path: Path) -> None:
    """With nothing serving the store (a ``serve --no-project`` whose ``consume`` is stopped),
    ``costs`` read the file and printed its totals as current, without a word (a review)."""
    from analytics.store import AnalyticsStore

    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    await store.open()
    await store.close()
    env = {**clean_env(tmp_path), "LLM_GATEWAY_PORT": str(free_port()), "LLM_GATEWAY_CONSUME_PORT": str(free_port())}
    async with process("costs", "--tenant", "t", env=env) as costs:
        out, err = await asyncio.wait_for(costs.communicate(), 60)
    assert costs.returncode == 0 and "note: nothing at" in err.decode() and "as of its last projection" in err.decode()
    assert "$0" in out.decode() or "0 calls" in out.decode()


async def test_the_commands_ask_a_service_only_for_the_data_dir_they_were_given(tmp_path: Path) -> None:
    """``LLM_GATEWAY_DATA_DIR=<a restored copy> llm-gateway costs`` gave the live gateway's numbers,
    and ``replay --full`` rebuilt the live gateway's store, because a gateway answered on the
    default port (a review). With a data dir given, a service owning another store answers 404
    to them, as one without a store, and the commands read the file they were given."""
    from analytics.store import AnalyticsStore

    live, copy = tmp_path / "live", tmp_path / "copy"
    copy.mkdir()
    store = AnalyticsStore(copy / "analytics.duckdb")
    await store.open()
    await store.close()
    port = free_port()
    env = {**clean_env(live), "LLM_GATEWAY_PORT": str(port), "LLM_GATEWAY_CONSUME_PORT": str(free_port())}
    async with process("serve", "--simulate", env=env):
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "tenantId": "t"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                assert r.status == 200
        for _ in range(100):  # the live data dir: the service answers
            async with process("costs", "--tenant", "t", "--json", env=env) as costs:
                out, err = await asyncio.wait_for(costs.communicate(), 30)
            if '"usageCount": 1' in out.decode():
                break
            await asyncio.sleep(0.1)
        assert '"usageCount": 1' in out.decode() and "note:" not in err.decode()
        other = {**env, "LLM_GATEWAY_DATA_DIR": str(copy)}
        async with process("costs", "--tenant", "t", "--json", env=other) as costs:
            out, err = await asyncio.wait_for(costs.communicate(), 30)
        assert costs.returncode == 0 and '"usageCount": 0' in out.decode()
        assert f"read {copy / 'analytics.duckdb'}" in err.decode()
        async with process("replay", "--dry-run", env=other) as replay:
            _, err = await asyncio.wait_for(replay.communicate(), 30)
        assert replay.returncode == 1 and f"no event log at {copy / 'events.sqlite3'}" in err.decode()


async def test_a_proxy_setting_stops_serve_only(tmp_path: Path) -> None:
    """A SOCKS proxy in the shell (for other tools) is no configuration of the commands that call
    no provider: it stopped ``costs`` (a review); ``serve`` refuses it in one line, its password
    left out."""
    from analytics.store import AnalyticsStore

    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    await store.open()
    await store.close()
    env = {
        **clean_env(tmp_path),
        "HTTPS_PROXY": "socks5h://user:s3cret@proxy.corp:1080",
        "NO_PROXY": "localhost,http://internal.corp",
        "LLM_GATEWAY_PORT": str(free_port()),
        "LLM_GATEWAY_CONSUME_PORT": str(free_port()),
    }
    async with process("costs", "--tenant", "t", env=env) as costs:
        _, err = await asyncio.wait_for(costs.communicate(), 60)
    assert costs.returncode == 0, err.decode()
    async with process("serve", "--no-project", env=env) as serve:
        _, err = await asyncio.wait_for(serve.communicate(), 60)
    text = err.decode()
    assert serve.returncode == 2 and "HTTPS_PROXY: only an http:// proxy is supported" in text, text
    assert "s3cret" not in text and len(text.strip().splitlines()) == 1
