"""The one place that picks the event-log adapters: Kafka when ``kafka_bootstrap_servers`` is
set (``KAFKA_BOOTSTRAP_SERVERS``), otherwise the embedded SQLite log under ``data_dir``.

Files under ``settings.data_dir``: ``events.sqlite3`` (the embedded log, its group positions
and dead letters) or, with Kafka, ``spool.sqlite3`` (events not yet acknowledged by Kafka).
Each gateway process needs its own spool: give replicas their own ``data_dir`` (or
``instance_id``, which names the spool file).
"""

from __future__ import annotations

from pathlib import Path

from gateway.eventlog.base import EventLog, LogReader
from gateway.eventlog.deadletter import DeadLetterStore, SqliteDeadLetters
from gateway.eventlog.sqlite import SqliteEventLog, SqliteLogReader
from gateway.settings import Settings

EMBEDDED_LOG_FILE = "events.sqlite3"
SPOOL_FILE = "spool.sqlite3"


def embedded_log_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / EMBEDDED_LOG_FILE


def spool_path(settings: Settings) -> Path:
    name = SPOOL_FILE if not settings.instance_id else f"spool-{settings.instance_id}.sqlite3"
    return Path(settings.data_dir) / name


def _client_id(settings: Settings, role: str) -> str:
    return f"llm-gateway-{role}" + (f"-{settings.instance_id}" if settings.instance_id else "")


def build_event_log(settings: Settings) -> EventLog:
    """The gateway's event log (publisher side)."""
    if settings.kafka_bootstrap_servers:
        from gateway.eventlog.kafka_producer import KafkaEventLog  # aiokafka only when Kafka is used

        return KafkaEventLog(
            settings.kafka,
            settings.topic,
            spool_path(settings),
            partitions=settings.topic_partitions,
            client_id=_client_id(settings, "gateway"),
            compression_type=settings.kafka_compression_type,
        )
    return SqliteEventLog(embedded_log_path(settings))


def build_log_reader(settings: Settings, group_id: str) -> LogReader:
    """A consumer-group member reading the event log."""
    if settings.kafka_bootstrap_servers:
        from gateway.eventlog.kafka_reader import KafkaLogReader

        return KafkaLogReader(
            settings.kafka,
            settings.topic,
            group_id,
            partitions=settings.topic_partitions,
            client_id=_client_id(settings, f"consumer-{group_id}"),
        )
    return SqliteLogReader(embedded_log_path(settings), group_id)


def build_dead_letters(settings: Settings) -> DeadLetterStore:
    """Where consumers put records they cannot apply (``<topic>.dlq`` or the embedded file)."""
    if settings.kafka_bootstrap_servers:
        from gateway.eventlog.deadletter import KafkaDeadLetters

        return KafkaDeadLetters(
            settings.kafka,
            settings.topic,
            client_id=_client_id(settings, "deadletters"),
        )
    return SqliteDeadLetters(embedded_log_path(settings))
