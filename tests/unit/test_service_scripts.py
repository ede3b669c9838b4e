"""The local service scripts print one machine-readable line on stdout, and nothing else.

tests/run.sh takes the DSN from ``python -m tests.services.postgres start``'s stdout. CI once
failed 39 tests because pg_ctlcluster printed "Removed stale pid file." there, and the DSN
became that line followed by the URL.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.services import postgres


def _fake_tool(directory: Path, name: str, stdout: str) -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{stdout}'\necho 'to stderr' >&2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_pg_ctlcluster_chatter_goes_to_stderr_not_into_the_printed_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _fake_tool(tmp_path, "pg_ctlcluster", "Removed stale pid file.")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    postgres._ctl("start")
    out, err = capfd.readouterr()
    assert out == ""
    assert "Removed stale pid file." in err and "to stderr" in err


def test_run_sh_keeps_only_the_last_line_of_a_service_script() -> None:
    script = (Path(__file__).resolve().parents[1] / "run.sh").read_text()
    assert "database_url=$(py -m tests.services.postgres start | tail -n 1)" in script
    assert "kafka_bootstrap=$(py -m tests.services.kafka start | tail -n 1)" in script
