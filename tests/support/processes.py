"""Run ``llm-gateway serve`` and ``llm-gateway consume`` as real subprocesses, for the tests that
kill them (``SIGKILL``, as the OOM killer or a lost node would) and start them again.

A :class:`ServiceProcess` runs ``python -m gateway <command>`` with a clean environment (the
variables given, nothing inherited that could point it at another broker, database or real
provider), sends its output to a log file, and waits for ``GET /healthz`` to answer. Use
:func:`processes` so every process a test started is gone when it ends, whatever happens::

    async with processes() as procs:
        consumer = procs.consume(env, group="g", data_dir=tmp_path / "c")
        await consumer.start()
        ...
        await consumer.kill()      # SIGKILL, no cleanup in the process
        await consumer.start()     # the same command, the same data dir
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]

#: inherited from the test's environment (how to find Python and the installed package)
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE")


async def run_command(
    command: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """``python -m gateway <command> <args>`` to its end (in ``cwd``): its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", command, *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A port nobody listens on now (bind to 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(values: Mapping[str, str | os.PathLike[str] | int | None]) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in values.items() if v is not None})
    return env


class ServiceProcess:
    """One ``python -m gateway ...`` process; :meth:`start` can run it again after a kill."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn the process and return once ``GET /healthz`` answers 200."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start #{self.starts}: {' '.join(self.args)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited in a thread
                [sys.executable, "-m", "gateway", *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C of the test run does not reach it; we stop it
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    await self.kill()
                    raise TimeoutError(f"{self.name} not healthy within {timeout:g}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """``SIGKILL``: the process gets no chance to flush, close or commit anything."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 10.0)

    async def stop(self, timeout: float = 20.0) -> int | None:
        """A graceful stop (``SIGINT``, what ``^C`` sends), ``SIGKILL`` after ``timeout``.
        Returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                return await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                await self.kill()
                return None
        return self.proc.returncode

    async def healthz(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.get(f"{self.url}/healthz") as response,
        ):
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def force_cleanup(self) -> None:
        """Synchronous last resort: kill the process group, whatever state it is in."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10.0)


class Processes:
    """Starts gateway and consumer processes and remembers them for the cleanup."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: list[ServiceProcess] = []

    def _add(self, name: str, args: list[str], env: dict[str, str], port: int) -> ServiceProcess:
        # temporary files of the process (a killed one cannot remove its own) stay in the test's dir
        tmp = self.log_dir.parent / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env.setdefault("TMPDIR", str(tmp))
        process = ServiceProcess(name, args, env, port, self.log_dir / f"{name}.log")
        self.all.append(process)
        return process

    def serve(
        self,
        name: str,
        *,
        data_dir: Path,
        env: Mapping[str, str | os.PathLike[str] | int | None],
        simulate: bool = True,
        log_level: str = "INFO",
    ) -> ServiceProcess:
        """``llm-gateway serve`` (``--simulate``: every provider from built-in simulators)."""
        port = free_port()
        values = {"LLM_GATEWAY_DATA_DIR": data_dir, "LLM_GATEWAY_HOST": "127.0.0.1", **env}
        args = ["--log-level", log_level, "serve", "--port", str(port)] + (["--simulate"] if simulate else [])
        return self._add(name, args, clean_env(values), port)

    def consume(
        self,
        name: str,
        *,
        data_dir: Path,
        env: Mapping[str, str | os.PathLike[str] | int | None],
        group: str,
        batch_size: int = 5000,
        log_level: str = "INFO",
    ) -> ServiceProcess:
        """``llm-gateway consume``: a consumer-group member with its analytics API."""
        port = free_port()
        values = {"LLM_GATEWAY_DATA_DIR": data_dir, "LLM_GATEWAY_HOST": "127.0.0.1", **env}
        args = ["--log-level", log_level, "consume", "--group", group, "--port", str(port)]
        args += ["--batch-size", str(batch_size)]
        return self._add(name, args, clean_env(values), port)

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} ({p.log_path})\n{p.log_tail()}" for p in self.all)


@contextlib.asynccontextmanager
async def processes(log_dir: Path) -> AsyncIterator[Processes]:
    """Every process started through the yielded :class:`Processes` is stopped at exit: killed
    if the test failed or left it running (a graceful stop is the test's own business)."""
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        for process in procs.all:
            with contextlib.suppress(Exception):
                await process.kill()
            process.force_cleanup()
