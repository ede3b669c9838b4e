"""How every Kafka client of the gateway reaches the cluster: the bootstrap servers and the
cluster's security (TLS, SASL), in one value each client is built from.

Managed Kafka (Confluent Cloud, Amazon MSK, Aiven, Redpanda Cloud) takes clients over TLS with
SASL credentials, and self-run clusters often over mutual TLS: ``security_protocol`` ``SSL`` or
``SASL_SSL`` verifies the brokers' certificates against ``ssl_cafile`` (else the system's
CAs), ``ssl_certfile``/``ssl_keyfile`` present a client certificate, and ``SASL_*`` logs in
with ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``). The gateway's
producer, the consumers, the admin calls, the dead letters, ``export-log`` and the replays all
take their options from :meth:`KafkaConnection.client_options`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from gateway.eventlog.log_errors import remember_causes

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """What makes this no way to reach a cluster (None: nothing)."""
        tls = self.security_protocol in TLS_PROTOCOLS
        if self.security_protocol in SASL_PROTOCOLS and not (self.sasl_username and self.sasl_password):
            return f"Kafka security protocol {self.security_protocol} needs a SASL username and password"
        if self.security_protocol not in SASL_PROTOCOLS and (self.sasl_username or self.sasl_password):
            # Confluent Cloud's key and secret without KAFKA_SECURITY_PROTOCOL=SASL_SSL: started,
            # and spooled every event behind "Connection ... closed" for good (a review)
            return (
                f"a Kafka SASL username or password is given, but the security protocol {self.security_protocol} "
                "does not use SASL (SASL_SSL or SASL_PLAINTEXT does)"
            )
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            return f"Kafka TLS files are given, but the security protocol {self.security_protocol} does not use TLS"
        if self.ssl_keyfile and not self.ssl_certfile:
            return "a Kafka TLS key file without its certificate file"
        return None

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a TLS protocol (made once: the system's CAs take milliseconds to
        load); raises ``ValueError`` naming the file that cannot be read as what it is named.
        An encrypted key without its password is refused: OpenSSL asked for it on the terminal
        and the start waited there for good (a review)."""
        if self.security_protocol not in TLS_PROTOCOLS:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"the Kafka CA file {self.ssl_cafile}: {_reason(e)}") from e
        if self.ssl_certfile:
            # (a key in the certificate's file, as one PEM, is read from there, with its password)
            key = self.ssl_keyfile or self.ssl_certfile
            password: str | Callable[[], str] = self.ssl_key_password or _no_key_password(key)
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except KeyPasswordMissing as e:
                raise ValueError(str(e)) from None
            except (OSError, ssl.SSLError) as e:
                files = " and ".join(f for f in (self.ssl_certfile, self.ssl_keyfile) if f)
                hint = (
                    " (a key that KAFKA_SSL_KEY_PASSWORD does not open, or not the certificate's key)"
                    if self.ssl_key_password
                    else " (not the certificate's key, or no key: give KAFKA_SSL_KEYFILE)"
                )
                raise ValueError(f"the Kafka client certificate {files}: {_reason(e)}{hint}") from e
        return context

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of an aiokafka client (producer, consumer, admin) that reach the
        cluster as configured; from then on, aiokafka's refusals are kept to name why a bootstrap
        failed (:mod:`~gateway.eventlog.log_errors`)."""
        remember_causes()
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in TLS_PROTOCOLS:
            options["ssl_context"] = self.ssl_context
        if self.security_protocol in SASL_PROTOCOLS:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


class KeyPasswordMissing(Exception):
    pass


def _no_key_password(keyfile: str | None) -> Callable[[], str]:
    """OpenSSL's question for an encrypted key, answered by a refusal (not the terminal)."""

    def refuse() -> str:
        raise KeyPasswordMissing(f"the Kafka TLS key file {keyfile} is encrypted: give its KAFKA_SSL_KEY_PASSWORD")

    return refuse


def _reason(error: BaseException) -> str:
    """``[Errno 13] Permission denied``, ``[SSL] PEM lib``: without the file, which the caller
    names."""
    return " ".join(str(error).split()) or type(error).__name__


def kafka_connection(servers: str | KafkaConnection) -> KafkaConnection:
    """``servers`` as a connection: bootstrap servers alone are plaintext, as before."""
    return servers if isinstance(servers, KafkaConnection) else KafkaConnection(servers)
