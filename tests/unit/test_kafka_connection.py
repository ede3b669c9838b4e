"""Kafka's security settings: the variables Kafka tools use, refused at start when they make no
way to reach a cluster, and the client options every Kafka client is built from."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from gateway.eventlog.kafka_connection import KafkaConnection, kafka_connection
from gateway.settings import Settings


def make_certificate(key: Path, cert: Path) -> None:
    """A self-signed client certificate and its key (unencrypted)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=client"],
        check=True, capture_output=True,
    )  # fmt: skip


def encrypt(key: Path, password: str) -> bytes:
    """``key`` as an encrypted PEM."""
    return subprocess.run(
        ["openssl", "pkey", "-in", key, "-aes256", "-passout", f"pass:{password}"], check=True, capture_output=True
    ).stdout


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


def test_sasl_settings_in_any_case_as_kafkas_clients_take_them_and_the_password_not_in_repr() -> None:
    configured = settings(
        kafka_bootstrap_servers="k1:9092",
        kafka_security_protocol="sasl_plaintext",  # refused in lower case before (a review)
        kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username="u",
        kafka_sasl_password="s3cret-passw0rd",
    )
    assert (configured.kafka.security_protocol, configured.kafka.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert "s3cret" not in repr(configured) and "s3cret" not in repr(configured.kafka)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs a SASL username and password"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"}, "username and password"),
        ({"kafka_ssl_cafile": __file__}, "does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": __file__}, "key file without its certificate"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"}, "is not a file"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": __file__}, f"the Kafka CA file {__file__}: "),
        # Confluent Cloud's key and secret without SASL_SSL spooled every event for good
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "PLAINTEXT does not use SASL"),
        ({"kafka_security_protocol": "SSL", "kafka_sasl_password": "p"}, "SSL does not use SASL"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_settings_that_reach_no_cluster_are_refused_at_start(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        settings(kafka_bootstrap_servers="k1:9092", **options)


def test_a_client_certificate_and_its_key_make_the_tls_context(tmp_path: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    make_certificate(key, cert)
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
    with pytest.raises(ValueError, match=r"client certificate .* key values mismatch .*not the certificate's key"):
        other = tmp_path / "other.key"
        subprocess.run(["openssl", "genrsa", "-out", other, "2048"], check=True, capture_output=True)
        settings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert, kafka_ssl_keyfile=other,
                 kafka_bootstrap_servers="k1:9093")  # fmt: skip


def test_an_encrypted_key_needs_its_password_and_is_never_asked_for(tmp_path: Path) -> None:
    """Without ``KAFKA_SSL_KEY_PASSWORD`` OpenSSL asked for the passphrase on the terminal, and a
    start under ``docker run -it`` waited there for good (without one: ``[Errno 22] Invalid
    argument``, a review); a wrong one said ``[SSL] PEM lib``."""
    key, cert, encrypted = tmp_path / "client.key", tmp_path / "client.pem", tmp_path / "encrypted.key"
    make_certificate(key, cert)
    encrypted.write_bytes(encrypt(key, "k3y-pw"))
    tls = {"kafka_bootstrap_servers": "k1:9093", "kafka_security_protocol": "SSL", "kafka_ssl_cafile": cert}
    tls |= {"kafka_ssl_certfile": cert, "kafka_ssl_keyfile": encrypted}
    with pytest.raises(ValueError, match=f"key file {encrypted} is encrypted: give its KAFKA_SSL_KEY_PASSWORD"):
        settings(**tls)
    with pytest.raises(ValueError, match="a key that KAFKA_SSL_KEY_PASSWORD does not open"):
        settings(**tls, kafka_ssl_key_password="wrong")
    context = settings(**tls, kafka_ssl_key_password="k3y-pw").kafka.client_options()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[Errno 13] Permission denied`` said no file (a review; this suite runs as root, which
    reads any file: the refusal is OpenSSL's, made here)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read")

    def denied(**kwargs: object) -> ssl.SSLContext:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ssl, "create_default_context", denied)
    with pytest.raises(ValueError, match=f"the Kafka CA file {ca}: \\[Errno 13\\] Permission denied"):
        KafkaConnection("k1:9093", "SSL", ssl_cafile=str(ca)).ssl_context  # noqa: B018


def test_a_key_in_the_certificates_file_is_read_with_its_password(tmp_path: Path) -> None:
    """One PEM with the certificate and its encrypted key, the password and no key file: it
    worked, then was refused as "a key password without a key file" (a diff read)."""
    key, cert, combined = tmp_path / "client.key", tmp_path / "client.pem", tmp_path / "combined.pem"
    make_certificate(key, cert)
    combined.write_bytes(cert.read_bytes() + encrypt(key, "k3y-pw"))
    tls = {"kafka_bootstrap_servers": "k1:9093", "kafka_security_protocol": "SSL", "kafka_ssl_certfile": combined}
    assert isinstance(settings(**tls, kafka_ssl_key_password="k3y-pw").kafka.ssl_context, ssl.SSLContext)
    with pytest.raises(ValueError, match=f"key file {combined} is encrypted"):
        settings(**tls)
