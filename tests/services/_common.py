"""Helpers shared by the local test-service scripts (Kafka, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = REPO_ROOT / ".services"

T = TypeVar("T")


def log(message: str) -> None:
    """Progress output goes to stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Works both from plain code and from inside a running event loop (pytest-asyncio),
    where ``asyncio.run`` would refuse to start.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def tcp_port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def run_tool(cmd: list[str], **kwargs: Any) -> None:
    """Run an external tool whose output nobody reads; its stdout goes to stderr.

    The service CLIs print one machine-readable line on stdout (a DSN, a bootstrap address),
    which tests/run.sh captures: a tool's chatter there ("Removed stale pid file." from
    pg_ctlcluster) would become part of that value.
    """
    subprocess.run(cmd, check=True, stdout=2, **kwargs)  # fd 2, also under a capturing pytest


def apt_install(*packages: str) -> None:
    """Install Debian packages (as root); a fresh CI machine may lack them."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"cannot install {packages}: apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"apt-get install -y {' '.join(packages)}")
    run_tool(["apt-get", "update", "-qq"], env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
