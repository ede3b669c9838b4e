"""``export-log`` against a broker that stops acknowledging mid-batch: it waited for good, and
SIGINT / SIGTERM did nothing (its producer retries forever; a re-test). The batch now waits at
most ``--timeout``, and a signal stops it, each with one line saying the batch may go again."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from consumers import export_command
from gateway.cli import build_parser
from gateway.commands import run_command
from gateway.eventlog.sqlite import SqliteOutbox
from gateway.settings import Settings


class SilentProducer:
    """Takes records and never gets them acknowledged (a broker gone mid-export)."""

    def __init__(self, **_: Any) -> None:
        self.sent = 0

    async def start(self) -> None: ...

    async def send(self, *_: Any, **__: Any) -> asyncio.Future[None]:
        self.sent += 1
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None: ...


@pytest.fixture
def silent_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka

    from gateway.eventlog import kafka_admin

    async def exists(*_: Any, **__: Any) -> None: ...

    async def facts(*_: Any) -> tuple[str, list[str], int]:
        return "cluster", [], 0

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", SilentProducer)
    monkeypatch.setattr(kafka_admin, "ensure_topic", exists)
    monkeypatch.setattr(export_command, "_topic_facts", facts)


def settings_with_a_log(tmp_path: Path) -> Settings:
    outbox = SqliteOutbox(tmp_path / "events.sqlite3")
    outbox.append_many([("t", b'{"event_id": "e%d"}' % i, 0) for i in range(10)])
    outbox.close()
    return Settings(data_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1", _env_file=None)  # type: ignore[call-arg]


@pytest.mark.usefixtures("silent_kafka")
def test_a_batch_never_acknowledged_ends_at_the_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_with_a_log(tmp_path)
    assert run_command(build_parser().parse_args(["export-log", "--timeout", "0.5"]), settings) == 1
    err = capsys.readouterr().err
    assert "acknowledged no batch for 0.5 s" in err and "0 events sent and noted" in err


@pytest.mark.usefixtures("silent_kafka")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_batch_that_waits(tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: int) -> None:
    settings = settings_with_a_log(tmp_path)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), sig))
    timer.start()
    try:
        assert run_command(build_parser().parse_args(["export-log", "--timeout", "30"]), settings) == 1
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert "stopped (the batch in flight may have gone in part: it goes again)" in err


def test_a_topic_whose_retention_cannot_be_read_is_refused() -> None:
    """A Kafka user without DESCRIBE_CONFIGS got error 29 and no entries, read as no limits: the
    export went into a topic that deleted all 30 events within minutes, and was noted as sent
    (a review, on a broker with ACLs)."""
    denied = [(29, "Topic authorization failed.", 2, "llm.usage", [])]
    with pytest.raises(export_command.ExportError, match="DESCRIBE_CONFIGS") as refused:
        export_command.deleting_configs(denied)
    assert "TopicAuthorizationFailedError" in str(refused.value) and not refused.value.resumable
    described = [
        (
            0,
            None,
            2,
            "llm.usage",
            [("retention.ms", "604800000"), ("retention.bytes", "-1"), ("cleanup.policy", "delete")],
        )
    ]
    assert export_command.deleting_configs(described) == ["retention.ms=604800000"]
    kept = [
        (0, None, 2, "llm.usage", [("retention.ms", "-1"), ("retention.bytes", "-1"), ("cleanup.policy", "delete")])
    ]
    assert export_command.deleting_configs(kept) == []
