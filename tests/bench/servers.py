"""The servers of the overhead benchmark, each a separate process, and the tools it installs.

- ``upstream``: ``tests/bench/upstream.py`` (fast canned OpenAI answers, settable delay)
- ``minimal``: ``tests/bench/minimal_proxy.py`` (the floor for a Python proxy)
- ``gateway``: ``llm-gateway serve`` (``python -m gateway serve``) with usage events on: the
  embedded log in a temporary data dir (and, as ``serve`` does there, the projector into DuckDB
  in the same process), or Kafka (``KAFKA_BOOTSTRAP_SERVERS``) with its spool
- ``gateway-noproj``: ``llm-gateway serve --no-project``: the embedded log, no projector in the
  process (a ``consume`` process would project it; none runs here, as for ``gateway-kafka``)
- ``litellm``: the LiteLLM proxy from its own venv, same upstream, no database

``--install`` (``install_tools``) puts ``wrk`` in with apt and LiteLLM into
``$LLM_GATEWAY_BENCH_VENVS/litellm`` (default ``/work/.bench-venvs``); nothing is installed
otherwise. LiteLLM is pinned below 1.107.0 (that release was a compromised upload).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

from tests.bench.common import REPO, Child, clean_env, free_port, say, spawn

VENVS = Path(os.environ.get("LLM_GATEWAY_BENCH_VENVS", "/work/.bench-venvs"))
LITELLM_VENV = VENVS / "litellm"
LITELLM_SPEC = "litellm[proxy]==1.106.12"
#: the key wrk presents (env BENCH_API_KEY of post.lua); LiteLLM refuses to start without a
#: strong master key, the other targets are open and ignore it
BENCH_KEY = "sk-bench-" + secrets.token_hex(32)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").is_file()


def install_tools(litellm: bool = True) -> None:
    if not wrk_available():
        say("installing wrk (apt)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    if litellm and not litellm_available():
        say(f"installing {LITELLM_SPEC} into {LITELLM_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, LITELLM_SPEC], check=True)


def set_delay(upstream: Child, milliseconds: float) -> None:
    url = f"http://127.0.0.1:{upstream.port}/_bench/delay"
    with urllib.request.urlopen(urllib.request.Request(url, data=str(milliseconds).encode()), timeout=5) as r:
        r.read()


def start_upstream(log_dir: Path) -> Child:
    port = free_port()
    return spawn("upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", str(port)], port, log_dir)


def start_minimal(upstream: Child, log_dir: Path) -> Child:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.bench.minimal_proxy", "--port", str(port)]
    return spawn("minimal", [*cmd, "--upstream", f"http://127.0.0.1:{upstream.port}"], port, log_dir)


def start_shaped(upstream: Child, log_dir: Path) -> Child:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.bench.shaped_proxy", "--port", str(port)]
    return spawn("shaped", [*cmd, "--upstream", f"http://127.0.0.1:{upstream.port}"], port, log_dir)


def gateway_env(upstream: Child, data_dir: Path, port: int, kafka: str | None) -> dict[str, str]:
    env = clean_env()
    env |= {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "LLM_GATEWAY_PRIORITY": '["openai"]',
        "LLM_GATEWAY_DATA_DIR": str(data_dir),
        "LLM_GATEWAY_PORT": str(port),
        "LLM_GATEWAY_HOST": "127.0.0.1",
    }
    if kafka:
        env |= {"KAFKA_BOOTSTRAP_SERVERS": kafka, "LLM_GATEWAY_TOPIC": f"bench-overhead-{uuid.uuid4().hex[:8]}"}
    return env


def start_gateway(
    name: str,
    upstream: Child,
    log_dir: Path,
    kafka: str | None = None,
    *,
    project: bool = True,
    src: Path | None = None,
) -> Child:
    """``llm-gateway serve``; ``project=False``: ``serve --no-project``; ``src``: serve the
    packages of another source tree (a patched copy)."""
    port = free_port()
    data_dir = log_dir / f"{name}-data"
    env = gateway_env(upstream, data_dir, port, kafka)
    cmd = ["-m", "gateway", "serve"] if project else ["-m", "gateway", "serve", "--no-project"]
    return spawn(name, [sys.executable, *cmd], port, log_dir, env, cwd=src or REPO)


def start_litellm(upstream: Child, log_dir: Path) -> Child:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": "gpt-4o",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": f"http://127.0.0.1:{upstream.port}/v1",
                    "api_key": "sk-bench",
                },
            }
        ],
        "litellm_settings": {"set_verbose": False, "telemetry": False},
    }
    path = log_dir / "litellm.json"
    path.write_text(json.dumps(config))
    env = clean_env()
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": BENCH_KEY}
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    return spawn("litellm", [*cmd, "--num_workers", "1"], port, log_dir, env)
