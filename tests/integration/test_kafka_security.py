"""The gateway's Kafka clients against the test broker's secured listeners: SASL (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512) over plaintext and TLS, TLS, and mutual TLS. Managed clusters
(Confluent Cloud, MSK, Aiven) take no other clients; the gateway spoke plaintext only."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from consumers.projector import Projector
from gateway.eventlog.factory import build_dead_letters, build_event_log, build_log_reader
from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.settings import Settings
from tests.conftest import SecuredKafka
from tests.integration.test_kafka_eventlog import Collected, new_topic, publish_all, record_embedded, wait_drained
from tests.unit.test_sqlite_eventlog import make_event

pytestmark = pytest.mark.kafka

LISTENERS = ("sasl-plain", "sasl-scram-256", "sasl-ssl-scram-512", "ssl", "mtls")


def secured(kind: str, kafka: SecuredKafka) -> dict[str, Any]:
    """The settings that reach the broker over the listener ``kind``."""
    sasl = {"kafka_sasl_username": kafka.username, "kafka_sasl_password": kafka.password}
    return {
        "sasl-plain": {
            "kafka_bootstrap_servers": kafka.sasl,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            **sasl,
        },
        "sasl-scram-256": {
            "kafka_bootstrap_servers": kafka.sasl,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            **sasl,
        },
        "sasl-ssl-scram-512": {
            "kafka_bootstrap_servers": kafka.sasl_ssl,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_ssl_cafile": kafka.cafile,
            **sasl,
        },
        "ssl": {
            "kafka_bootstrap_servers": kafka.ssl,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": kafka.cafile,
        },
        "mtls": {
            "kafka_bootstrap_servers": kafka.mtls,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": kafka.cafile,
            "kafka_ssl_certfile": kafka.client_cert,
            "kafka_ssl_keyfile": kafka.client_key,
        },
    }[kind]


def settings_for(tmp_path: Path, **options: Any) -> Settings:
    return Settings(data_dir=tmp_path, topic=new_topic(), topic_partitions=1, _env_file=None, **options)  # type: ignore[call-arg]


async def publish(settings: Settings, count: int) -> list[str]:
    events = [make_event(i) for i in range(count)]
    await publish_all(build_event_log(settings), events)
    return [e.event_id for e in events]


async def project(settings: Settings, group: str) -> list[str]:
    reader, letters, sink = build_log_reader(settings, group), build_dead_letters(settings), Collected()
    projector = Projector(reader, [sink], letters, poll_timeout=0.5, idle_timeout=2.0)
    await reader.start()
    await letters.start()
    try:
        await asyncio.wait_for(projector.run_until_idle(), 60)
        assert await reader.lag() == 0  # the lag is measured over the same connection
    finally:
        await reader.close()
        await letters.close()
    return sink.ids


@pytest.mark.parametrize("kind", LISTENERS)
async def test_the_gateway_publishes_and_projects_over_a_secured_listener(
    kafka_secured: SecuredKafka, tmp_path: Path, kind: str
) -> None:
    settings = settings_for(tmp_path, **secured(kind, kafka_secured))
    published = await publish(settings, 20)
    assert await project(settings, f"secured-{kind}") == published


@pytest.mark.parametrize(
    ("kind", "wrong", "why"),
    [
        ("sasl-scram-256", {"kafka_sasl_password": "not-the-password"}, "SaslAuthenticationFailed"),
        ("sasl-ssl-scram-512", {"kafka_sasl_username": "nobody"}, "SaslAuthenticationFailed"),
        ("mtls", {"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}, "closed"),  # all it says
    ],
)
async def test_refused_credentials_keep_every_event_spooled_until_the_right_ones_come(
    kafka_secured: SecuredKafka,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    wrong: dict[str, Any],
    why: str,
) -> None:
    """The cluster refusing the gateway's credentials (a rotated password, a missing client
    certificate) loses nothing: the events wait in the spool, a WARNING and the log's outage
    (``/healthz`` ``eventLog``) say why the broker is unavailable (aiokafka's bootstrap failure
    said only "Unable to bootstrap"), and a gateway started with the right credentials on the
    data dir sends them."""
    right = settings_for(tmp_path, **secured(kind, kafka_secured))
    refused = right.model_copy(update=wrong)
    events = [make_event(i) for i in range(10)]
    log = build_event_log(refused)
    assert isinstance(log, KafkaEventLog)
    with caplog.at_level(logging.WARNING, logger="gateway.eventlog.kafka_producer"):
        await log.start()
        for event in events:
            log.publish(event)
        await asyncio.sleep(4)
        assert log.pending() == len(events)
        outage = log.outage()
        await log.close()
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert any("10 usage events spooled" in w and why in w for w in warnings), warnings
    assert outage is not None and why in outage.error, outage
    assert f"Unable to bootstrap from {right.kafka_bootstrap_servers} (" in outage.error, outage

    log = build_event_log(right)
    await log.start()
    await wait_drained(log, 30)
    assert log.outage() is None
    await log.close()
    assert await project(right, f"refused-{kind}") == [e.event_id for e in events]


def test_export_log_and_replay_reach_the_cluster_over_sasl_ssl(
    kafka_secured: SecuredKafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator commands take the same security settings: ``export-log`` puts the embedded
    history on the topic, a replay reads it back."""
    from consumers.replay import ReplayOptions
    from consumers.replay_command import in_process
    from gateway.cli import build_parser
    from gateway.commands import run_command

    events = [make_event(i) for i in range(30)]
    record_embedded(tmp_path, events)
    kafka = settings_for(tmp_path, **secured("sasl-ssl-scram-512", kafka_secured))
    assert run_command(build_parser().parse_args(["export-log", "--timeout", "60"]), kafka) == 0
    assert f"exported {len(events)} events" in capsys.readouterr().out
    read = asyncio.run(in_process(kafka, ReplayOptions(dry_run=True), None, None, live_group=None))
    assert read["recordsRead"] == len(events)
