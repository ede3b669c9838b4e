"""Why a Kafka client could not reach the cluster: aiokafka's bootstrap failure said only "Unable
to bootstrap from [('127.0.0.1', 9093, <AddressFamily.AF_INET: 2>)]" in the gateway's warnings,
``/healthz`` and ``lagError``; a rotated password was named only in aiokafka's own line, at
most one per 30 s."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

import gateway.eventlog.log_errors as log_errors
from gateway.eventlog.kafka_connection import kafka_connection
from gateway.eventlog.log_errors import describe, one_line, remember_causes

REFUSED = 'Unable connect to "%s:%s": %s'


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def bootstrap_failure(*addresses: tuple[str, int]) -> KafkaConnectionError:
    """aiokafka's own (``AIOKafkaClient.bootstrap``)."""
    hosts = [(host, port, socket.AddressFamily.AF_INET) for host, port in addresses]
    return KafkaConnectionError(f"Unable to bootstrap from {hosts}")


@pytest.fixture(autouse=True)
def no_causes_kept() -> None:
    remember_causes()
    log_errors._causes.clear()


def test_one_line_names_the_error_type_where_its_text_does_not() -> None:
    assert one_line(ConnectionRefusedError(111, "Connect call failed")) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    )
    assert one_line(SaslAuthenticationFailed("bad\n  password")) == "[Error 58] SaslAuthenticationFailed: bad password"
    assert one_line(TimeoutError()) == "TimeoutError"


def test_a_bootstrap_failure_names_the_refusal_aiokafka_logged_for_its_broker() -> None:
    refusal = SaslAuthenticationFailed("Authentication failed due to invalid credentials with SASL mechanism PLAIN")
    logging.getLogger("aiokafka").error(REFUSED, "broker.cloud", 9092, refusal)
    assert describe(bootstrap_failure(("broker.cloud", 9092))) == (
        "KafkaConnectionError: Unable to bootstrap from broker.cloud:9092 ([Error 58] SaslAuthenticationFailed: "
        "Authentication failed due to invalid credentials with SASL mechanism PLAIN)"
    )


def test_several_brokers_each_with_its_refusal_and_one_without() -> None:
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.error(REFUSED, "k1", 9093, ConnectionRefusedError(111, "Connect call failed"))
    aiokafka.warning('Unable to request metadata from "%s:%s": %s', "k2", 9093, KafkaConnectionError("closed"))
    assert describe(bootstrap_failure(("k1", 9093), ("k2", 9093), ("k3", 9093))) == (
        "KafkaConnectionError: Unable to bootstrap from k1:9093, k2:9093, k3:9093 (k1:9093: "
        "ConnectionRefusedError: [Errno 111] Connect call failed; k2:9093: KafkaConnectionError: closed)"
    )


def test_the_latest_refusal_of_any_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_errors.latest_refusal() is None
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.error(REFUSED, "k1", 9092, KafkaConnectionError("closed"))
    aiokafka.error("Unable connect to node with id %s: %s", 2, ConnectionResetError(104, "reset"))
    assert log_errors.latest_refusal() == "broker 2: ConnectionResetError: [Errno 104] reset"
    monkeypatch.setattr(log_errors, "CAUSE_TTL", -1.0)
    assert log_errors.latest_refusal() is None


def test_an_old_refusal_is_not_named(monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger("aiokafka").error(REFUSED, "k1", 9092, KafkaConnectionError("closed"))
    monkeypatch.setattr(log_errors, "CAUSE_TTL", -1.0)
    assert describe(bootstrap_failure(("k1", 9092))) == "KafkaConnectionError: Unable to bootstrap from k1:9092"


def test_other_errors_are_one_line_as_they_are() -> None:
    assert describe(KafkaConnectionError("Connection at k1:9092 closed")) == (
        "KafkaConnectionError: Connection at k1:9092 closed"
    )
    assert describe(OSError("disk\nfull")) == "OSError: disk full"


async def test_a_real_client_that_cannot_connect_is_told_why() -> None:
    port = closed_port()
    options = kafka_connection(f"127.0.0.1:{port}").client_options()  # every client's: keeps the causes
    producer = AIOKafkaProducer(**options, request_timeout_ms=2000)
    with pytest.raises(KafkaConnectionError) as raised:
        await producer.start()
    await producer.stop()
    text = describe(raised.value)
    assert text.startswith(f"KafkaConnectionError: Unable to bootstrap from 127.0.0.1:{port} (")
    assert "Connect call failed" in text, text


async def test_the_health_sync_warns_once_per_reason_and_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A WARNING every 2 s for as long as a broker was down."""
    from gateway.health.kafka_sync import KafkaHealthSync
    from gateway.health.view import HealthView

    port = closed_port()
    sync = KafkaHealthSync(HealthView(), f"127.0.0.1:{port}", "llm.usage", retry_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await sync.start()
        await asyncio.sleep(1.0)
        await sync.close()
    warnings = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"Unable to bootstrap from 127.0.0.1:{port} (" in warnings[0] and "Connect call failed" in warnings[0]


async def test_the_forwarder_warns_once_per_reason_and_a_stop_ends_its_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated password logged a WARNING every 5 s (720 lines an hour), and a stop waited out the
    forwarder's 5 s backoff with nothing to send (a review)."""
    from gateway.eventlog.kafka_producer import KafkaEventLog

    port = closed_port()
    log = KafkaEventLog(f"127.0.0.1:{port}", "llm.usage", tmp_path / "spool.sqlite3", backoff=(0.05, 0.05))
    log._warn_interval = 0.1
    with caplog.at_level(logging.WARNING, logger="gateway.eventlog.kafka_producer"):
        await log.start()
        await asyncio.sleep(1.0)
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "Connect call failed" in warnings[0], warnings
    assert log.outage() is not None
    await log.close(timeout=1)

    waiting = KafkaEventLog(f"127.0.0.1:{port}", "llm.usage", tmp_path / "other.sqlite3", backoff=(30.0, 30.0))
    await waiting.start()
    for _ in range(100):
        if waiting.outage() is not None:
            break
        await asyncio.sleep(0.02)
    assert waiting.outage() is not None  # failed once: in its 30 s backoff
    started = time.monotonic()
    await waiting.close(timeout=10)
    assert time.monotonic() - started < 2


async def test_an_acl_refusal_is_no_outage_in_the_forwarders_words(tmp_path: Path) -> None:
    """The cluster's ACLs refusing the gateway's user was said "unavailable" (a review)."""
    from aiokafka.errors import TopicAuthorizationFailedError

    from gateway.eventlog.kafka_producer import KafkaEventLog

    log = KafkaEventLog("k1:9092", "llm.usage", tmp_path / "spool.sqlite3")
    log._note_down(TopicAuthorizationFailedError("llm.usage"), 1.0)
    outage = log.outage()
    assert outage is not None
    assert outage.error == "Kafka at k1:9092 refuses this user: [Error 29] TopicAuthorizationFailedError: llm.usage"
    await log.close(timeout=0.1)


def test_refusals_are_kept_whatever_level_is_shown(caplog: pytest.LogCaptureFixture) -> None:
    """Under ``--log-level error`` a metadata refusal (a WARNING) was not kept, and an older
    refusal of the same broker was named in its place (a diff read); what is shown stays as asked."""
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.removeFilter(log_errors._FILTER)
    saved, log_errors._FILTER.shown = aiokafka.level, logging.NOTSET
    aiokafka.setLevel(logging.ERROR)
    try:
        remember_causes()
        aiokafka.error(REFUSED, "k1", 9093, ConnectionRefusedError(111, "Connect call failed"))
        aiokafka.warning('Unable to request metadata from "%s:%s": %s', "k1", 9093, KafkaConnectionError("closed"))
        assert describe(bootstrap_failure(("k1", 9093))).endswith("(KafkaConnectionError: closed)")
        shown = [r.getMessage() for r in caplog.records if r.name == "aiokafka"]
        assert len(shown) == 1 and "Connect call failed" in shown[0]  # the WARNING is not shown
    finally:
        aiokafka.removeFilter(log_errors._FILTER)
        aiokafka.setLevel(saved)
        log_errors._FILTER.shown = logging.NOTSET
        remember_causes()


async def test_a_connected_producer_whose_broker_stops_answering_is_said_once_with_the_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker gone or a password rotated under a connected producer: "has not acknowledged for
    5s/10s/..." every 5 s, 720 lines an hour, and /healthz named no cause (a re-test)."""
    from gateway.eventlog.kafka_producer import KafkaEventLog

    log = KafkaEventLog("k1:9092", "llm.usage", tmp_path / "spool.sqlite3")
    log._warn_interval = 0.05
    logging.getLogger("aiokafka").error(
        "Unable connect to node with id %s: %s", 1, SaslAuthenticationFailed("invalid credentials")
    )
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.WARNING, logger="gateway.eventlog.kafka_producer"), pytest.raises(TimeoutError):
        await asyncio.wait_for(log._acknowledgements([never]), 0.6)
    warnings = [r.getMessage() for r in caplog.records if "acknowledge" in r.getMessage()]
    assert len(warnings) == 1, warnings
    outage = log.outage()
    assert outage is not None and outage.error == (
        "Kafka at k1:9092 does not acknowledge (broker 1: [Error 58] SaslAuthenticationFailed: invalid credentials)"
    )
    await log.close(timeout=0.1)


def test_a_reason_is_due_at_once_when_new_and_once_a_minute_when_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    repeats = log_errors.Repeats()
    assert repeats.due("a") and not repeats.due("a")
    assert repeats.due("b")  # another reason: at once
    monkeypatch.setattr(log_errors, "SAME_REASON_EVERY", 0.0)
    assert repeats.due("b")  # the minute is over
    monkeypatch.setattr(log_errors, "SAME_REASON_EVERY", 60.0)
    repeats.reset()
    assert repeats.due("b")  # the trouble was over: said again at once
