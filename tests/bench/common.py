"""What the benchmarks share: child processes, /proc sampling, the services lock, Kafka and
Postgres for a run, tables and PASS/MISS verdicts. Nothing here runs at import."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
LOCK_PATH = os.environ.get("LLM_GATEWAY_TEST_LOCK", "/tmp/llm-gateway-tests.lock")
_TICKS = os.sysconf("SC_CLK_TCK")


#: variables a child server must not inherit (credentials, other services, gateway settings)
_FOREIGN = (
    "OPENAI_",
    "AZURE_",
    "ANTHROPIC_",
    "GEMINI_",
    "GOOGLE_",
    "OLLAMA_",
    "KAFKA_",
    "LLM_GATEWAY_",
    "DATABASE_URL",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without provider, service or gateway settings, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)} | extra


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f}s")


@dataclass
class Child:
    """A server this run started (own session); ``stop`` ends it and its children by pid."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(
    name: str, cmd: Sequence[str], port: int, log_dir: Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Child:
    """Start ``cmd`` (in ``cwd``: ``python -m`` imports the packages found there) and wait until
    it listens on ``port``."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    child = Child(name, proc, port, log)
    try:
        wait_port(port, proc, timeout=120.0)
    except (RuntimeError, TimeoutError) as e:
        child.stop()
        raise RuntimeError(f"{name} did not start: {e}\n{child.log_tail()}") from e
    return child


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (/proc/<pid>/stat fields 14, 15)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def servers_cpu_seconds(names: Sequence[str] = ("postgres", "java")) -> float:
    """CPU seconds used so far by every process named in ``names`` (PostgreSQL, the Kafka
    broker), including their exited children (a closed Postgres backend's time is added to the
    postmaster's cutime/cstime when it is reaped): take the difference over a run."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            head, tail = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
            if head.split("(", 1)[1] in names:
                fields = tail.split()
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICKS


def status_mb(pid: int, key: str) -> float:
    """A memory line of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``, ``RssAnon``...) in MB; 0
    if the process or the line is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid`` and its live descendants, in MB."""
    return sum(status_mb(p, "VmHWM") for p in process_tree(pid))


# --- Kafka and Postgres ------------------------------------------------------------------------


@contextlib.contextmanager
def services_lock() -> Iterator[None]:
    """The flock tests/run.sh takes (Postgres is machine-wide and tests stop it). Skipped when
    running under tests/run.sh (LLM_GATEWAY_TEST_SERVICES set): the runner holds it already."""
    if os.environ.get("LLM_GATEWAY_TEST_SERVICES"):
        yield
        return
    with open(LOCK_PATH, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {LOCK_PATH} (a test run holds it)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Services:
    kafka: str | None = None
    database_url: str | None = None


@contextlib.contextmanager
def services(*, kafka: bool, postgres: bool, start: bool) -> Iterator[Services]:
    """Kafka / Postgres from LLM_GATEWAY_TEST_KAFKA / LLM_GATEWAY_TEST_DATABASE_URL, else (with
    ``start``) a private broker and the test cluster, stopped again at the end. Holds the
    services lock while Postgres or the shared broker is in use."""
    found = Services(
        os.environ.get("LLM_GATEWAY_TEST_KAFKA") if kafka else None,
        os.environ.get("LLM_GATEWAY_TEST_DATABASE_URL") if postgres else None,
    )
    need_lock = found.database_url is not None or found.kafka is not None or (start and postgres)
    with contextlib.ExitStack() as stack:
        if need_lock:
            stack.enter_context(services_lock())
        if start and postgres and found.database_url is None:
            found.database_url = stack.enter_context(_postgres())
        if start and kafka and found.kafka is None:
            found.kafka = stack.enter_context(_private_broker())
        yield found


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.services.postgres", "start"], cwd=REPO, check=True, capture_output=True, text=True
    )
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([sys.executable, "-m", "tests.services.postgres", "stop"], cwd=REPO, check=False)


@contextlib.contextmanager
def _private_broker() -> Iterator[str]:
    from tests.services.kafka import fetch_libs, start_broker

    fetch_libs()
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        broker = start_broker(Path(tmp) / "kafka")
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


# --- numbers and tables ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable in a terminal, pastable into the README)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


@dataclass
class Target:
    """One target of the issue: ``value`` compared with ``limit`` (``at_most`` or at least)."""

    name: str
    value: float | None
    limit: float
    at_most: bool
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None or self.value != self.value:
            return "SKIP"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return "PASS" if ok else "MISS"

    def row(self) -> list[str]:
        sign = "<=" if self.at_most else ">="
        return [
            self.name,
            f"{fmt(self.value)}{self.unit}",
            f"{sign} {fmt(self.limit)}{self.unit}",
            self.verdict,
            self.note,
        ]


def targets_table(targets: Sequence[Target]) -> str:
    return table(["target", "measured", "limit", "verdict", "note"], [t.row() for t in targets])


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, Python {sys.version.split()[0]}, load avg {load}"


def timing_row(label: str, count: int, seconds: float, baseline: float) -> list[str]:
    """A table row of a timed run over ``count`` items: its seconds, µs an item, x the baseline's."""
    return [label, f"{count:,}", fmt(seconds), fmt(seconds / max(count, 1) * 1e6), fmt(seconds / baseline)]
