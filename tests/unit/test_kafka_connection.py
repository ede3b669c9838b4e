"""Kafka's security settings: the variables Kafka tools use, refused at start when they make no
way to reach a cluster, and the client options every Kafka client is built from."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.settings import Settings


def settings(**options: object) -> Settings:
    return Settings(_env_file=None, **options)  # type: ignore[call-arg]


def test_bootstrap_servers_alone_are_plaintext_as_before() -> None:
    assert kafka_connection("k1:9092,k2:9092").client_options() == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert settings(kafka_bootstrap_servers="k1:9092").kafka == KafkaConnection("k1:9092")


def test_the_variables_kafka_tools_use(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "broker.cloud:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "gateway",
        "KAFKA_SASL_PASSWORD": "s3cret-passw0rd",
    }.items():
        monkeypatch.setenv(name, value)
    options = Settings(_env_file=None).kafka.client_options()  # type: ignore[call-arg]
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "broker.cloud:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "gateway",
        "sasl_plain_password": "s3cret-passw0rd",
    }
    # no CA file: the system's CAs (a managed cluster's certificate is a public CA's), verified
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and context.cert_store_stats()["x509_ca"] > 0


def test_the_password_is_not_in_the_settings_repr() -> None:
    configured = settings(
        kafka_bootstrap_servers="k1:9092",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password="s3cret-passw0rd",
    )
    assert "s3cret" not in repr(configured) and "s3cret" not in repr(configured.kafka)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs a SASL username and password"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"}, "username and password"),
        ({"kafka_ssl_cafile": __file__}, "does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": __file__}, "key file without its certificate"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"}, "is not a file"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": __file__}, "Kafka TLS files"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_settings_that_reach_no_cluster_are_refused_at_start(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        settings(kafka_bootstrap_servers="k1:9092", **options)


def test_a_client_certificate_and_its_key_make_the_tls_context(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=client"],
        check=True, capture_output=True,
    )  # fmt: skip
    configured = settings(
        kafka_bootstrap_servers="k1:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
    )
    context = configured.kafka.client_options()["ssl_context"]
    assert context.cert_store_stats()["x509_ca"] == 1  # the CA file's, not the system's
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="Kafka TLS files"):  # a key that is not the certificate's
        other = tmp_path / "other.key"
        subprocess.run(["openssl", "genrsa", "-out", other, "2048"], check=True, capture_output=True)
        settings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert, kafka_ssl_keyfile=other,
                 kafka_bootstrap_servers="k1:9093")  # fmt: skip
