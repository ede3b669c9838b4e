"""Fixtures for tests against the real Kafka and PostgreSQL that ``tests/run.sh`` starts.

``tests/run.sh`` exports:

- ``LLM_GATEWAY_TEST_KAFKA``: bootstrap address ``127.0.0.1:PORT`` of a fresh KRaft broker.
- ``LLM_GATEWAY_TEST_DATABASE_URL``: ``postgresql://gw:gw@127.0.0.1:5432/gw``.
- ``LLM_GATEWAY_TEST_SERVICES=required``: a missing service fails the test instead of skipping.

The ``*_control`` fixtures let a test take a service down and bring it back (an outage);
their teardown brings the service back if the test left it down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.services import kafka as kafka_service
from tests.services import postgres as postgres_service

KAFKA_ENV = "LLM_GATEWAY_TEST_KAFKA"
DATABASE_ENV = "LLM_GATEWAY_TEST_DATABASE_URL"
SERVICES_ENV = "LLM_GATEWAY_TEST_SERVICES"


def services_required() -> bool:
    return os.environ.get(SERVICES_ENV) == "required" or bool(os.environ.get("CI"))


def missing_service(message: str) -> None:
    """Fail when services are required (tests/run.sh, CI), skip otherwise."""
    message += " (run the suite with `bash tests/run.sh`)"
    if services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        missing_service(f"{name} is not set")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the real broker, e.g. ``127.0.0.1:39123``."""
    return _env(KAFKA_ENV)


@pytest.fixture(scope="session")
def database_url() -> str:
    """DSN of the real PostgreSQL, ``postgresql://gw:gw@127.0.0.1:5432/gw``."""
    return _env(DATABASE_ENV)


@pytest.fixture
def kafka_broker_control(kafka_bootstrap: str) -> Iterator[kafka_service.Broker]:
    """The broker tests/run.sh started: ``stop()``/``start()``/``restart()`` and their async
    forms ``astop()``/``astart()``/``arestart()``. It comes back on the same port and data
    dir, and is restarted at teardown if the test left it down."""
    if not kafka_service.STATE_FILE.is_file():
        missing_service(f"no broker state at {kafka_service.STATE_FILE}")
    broker = kafka_service.Broker.from_state(kafka_service.STATE_FILE)
    if broker.bootstrap != kafka_bootstrap:
        missing_service(f"{kafka_service.STATE_FILE} describes {broker.bootstrap}, not {KAFKA_ENV}")
    yield broker
    if not broker.is_running():
        broker.start()


@dataclass(frozen=True)
class SecuredKafka:
    """The test broker's secured listeners (``tests/services/kafka.py``): SASL over plaintext
    and over TLS (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 for one user), TLS, and mutual TLS, with
    the CA that signed the broker's certificate and a client certificate it accepts."""

    sasl: str
    sasl_ssl: str
    ssl: str
    mtls: str
    cafile: str
    client_cert: str
    client_key: str
    username: str = kafka_service.SASL_USER
    password: str = kafka_service.SASL_PASSWORD


@pytest.fixture(scope="session")
def kafka_secured(kafka_bootstrap: str) -> SecuredKafka:
    if not kafka_service.STATE_FILE.is_file():
        missing_service(f"no broker state at {kafka_service.STATE_FILE}")
    broker = kafka_service.Broker.from_state(kafka_service.STATE_FILE)
    if broker.bootstrap != kafka_bootstrap or broker.secured is None:
        missing_service(f"{kafka_service.STATE_FILE} describes no secured listeners of {kafka_bootstrap}")
    assert broker.secured is not None
    files = kafka_service.tls_files(broker.workdir)
    host = kafka_service.HOST
    return SecuredKafka(
        f"{host}:{broker.secured.sasl}",
        f"{host}:{broker.secured.sasl_ssl}",
        f"{host}:{broker.secured.ssl}",
        f"{host}:{broker.secured.mtls}",
        str(files["ca"]),
        str(files["client_cert"]),
        str(files["client_key"]),
    )


@dataclass(frozen=True)
class PostgresControl:
    """Take the local cluster ``15 main`` down (``stop -m fast``) and back up."""

    database_url: str

    def stop(self) -> None:
        postgres_service.stop_cluster()

    def start(self) -> None:
        """Returns once ``select 1`` works again."""
        postgres_service.start_cluster()

    async def astop(self) -> None:
        await postgres_service.astop_cluster()

    async def astart(self) -> None:
        await postgres_service.astart_cluster()

    def is_running(self) -> bool:
        info = postgres_service.cluster_info()
        return info is not None and info.online


@pytest.fixture
def postgres_control(database_url: str) -> Iterator[PostgresControl]:
    """Outage control for the cluster behind ``database_url``; restarted at teardown."""
    if not postgres_service.STATE_FILE.is_file():
        missing_service(f"no postgres state at {postgres_service.STATE_FILE}")
    control = PostgresControl(database_url)
    yield control
    if not control.is_running():
        control.start()
