"""CI smoke runs of the benchmarks: each script runs end to end in seconds (``--smoke``) and
prints its tables, so the benchmarks never rot. Numbers are not judged here (a shared CI
machine is too noisy for that): PASS/MISS lines are information, only errors fail.

Kafka and Postgres rows run when the suite has them (``LLM_GATEWAY_TEST_KAFKA``,
``LLM_GATEWAY_TEST_DATABASE_URL``, set by ``tests/run.sh``) and are marked skipped otherwise;
LiteLLM runs only when its venv exists (``python -m tests.bench.gateway_overhead --install``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bench import servers
from tests.bench.common import REPO


def smoke_run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m tests.bench.<script> --smoke [args]``, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{script}", "--smoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


@pytest.mark.parametrize("script", ["gateway_overhead", "pipeline", "analytics"])
def test_benchmark_smoke_run(script: str) -> None:
    if script == "gateway_overhead" and not servers.wrk_available():
        servers.install_tools(litellm=False)  # wrk from Debian (apt), as tests/run.sh does for Postgres
    done = smoke_run(script, timeout=280)
    assert "| target" in done.stdout and "verdict" in done.stdout, done.stdout[-4000:]


def test_sinks_smoke_run() -> None:
    """Every write path of both sinks (Postgres when the suite has it), plain and with metadata."""
    import os

    from tests.conftest import DATABASE_ENV

    url = os.environ.get(DATABASE_ENV)
    done = smoke_run("sinks", *(("--database-url", url) if url else ()), timeout=120)
    assert "insert with metadata" in done.stdout and "[rejected] executemany" in done.stdout, done.stdout[-4000:]
    if url:
        assert "Postgres sink" in done.stdout and "[rejected] unnest" in done.stdout, done.stdout[-4000:]


def test_sustained_memory_smoke_run() -> None:
    """The sustained-load memory bench samples a real ``serve`` under wrk (a failing run raises)."""
    if not servers.wrk_available():
        servers.install_tools(litellm=False)
    done = smoke_run("sustained_memory", timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| gateway "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert int(cells[1].replace(",", "")) > 0 and float(cells[7]) > 0, row


def test_memory_floor_smoke_run() -> None:
    """The memory floor bench measures DuckDB's steps in a child process, then both serve modes
    under wrk: each step holds more than the one before, and the floor adds DuckDB's share."""
    if not servers.wrk_available():
        servers.install_tools(litellm=False)
    done = smoke_run("memory_floor", timeout=120)
    steps = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| +")]
    peaks = [float(cells[5]) for cells in steps if len(cells) == 7]  # step, 4 figures: VmHWM last
    assert len(peaks) == 5 and peaks == sorted(peaks), done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| = floor"))
    assert float(row.split("|")[2]) > peaks[0] > 0, row


def test_request_path_smoke_run() -> None:
    """The in-process request path runs the real app end to end (a failing call raises)."""
    done = smoke_run("request_path", timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| whole in-process path"))
    assert float(row.split("|")[2]) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_client_smoke_run(stream: bool) -> None:
    """The client bench runs all three clients against the bench upstream (a failing call raises)."""
    done = smoke_run("upstream_client", *(["--stream"] if stream else []), timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| UpstreamClient"))
    assert float(row.split("|")[2]) > 0, row


def test_health_window_smoke_run() -> None:
    """The health window bench checks the snapshot's percentiles against the sorted window's
    (a difference exits non-zero) and prints both timings."""
    done = smoke_run("health_window", timeout=120)
    rows = [line for line in done.stdout.splitlines() if "stats() (value buckets)" in line]
    assert len(rows) == 2 and all(float(row.split("|")[5]) > 0 for row in rows), done.stdout


def test_budget_start_smoke_run() -> None:
    """The budget start bench checks that the snapshot's start and the whole read find the same
    spend (a difference exits non-zero) and prints both timings."""
    done = smoke_run("budget_start", timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| from the snapshot"))
    assert row.split("|")[2].strip() == "1,000", done.stdout


def test_budget_check_smoke_run() -> None:
    """The budget check bench checks each shape's spend against the rule (a difference exits
    non-zero) and prints the cost of check and observe_record beside the tenants-only baseline."""
    done = smoke_run("budget_check", timeout=120)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "µs" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "tenant budgets only (baseline)",
        "teams of one tenant",
        "one team of each tenant",
        "a key each",
        "a feature of every tenant",
    ], done.stdout


def test_budget_start_with_metadata_budgets_smoke_run() -> None:
    """With metadata budgets, the start bench checks each budget's spend against what was written."""
    done = smoke_run("budget_start", "--metadata-budgets", "30", timeout=120)
    assert any(line.startswith("| whole period, 30 metadata budgets too") for line in done.stdout.splitlines())
    assert "each of the 30 metadata budgets counted what was written" in done.stderr


def test_health_recall_smoke_run() -> None:
    """The health recall bench checks that the recall counted every attempt of the window (a
    difference exits non-zero) and prints it beside the read-only baseline."""
    done = smoke_run("health_recall", timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| recall into the health view"))
    assert row.split("|")[2].strip() == "5,000", done.stdout


def test_parquet_export_smoke_run() -> None:
    """The Parquet export bench checks that its day files and the one-COPY baseline hold every
    fact and the same cost (a difference exits non-zero), and prints both."""
    done = smoke_run("parquet_export", timeout=120)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| export-parquet, 3 day files"))
    assert row.split("|")[2].strip() == "20,000", done.stdout
