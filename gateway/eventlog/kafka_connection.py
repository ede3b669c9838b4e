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
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            return f"Kafka TLS files are given, but the security protocol {self.security_protocol} does not use TLS"
        if self.ssl_keyfile and not self.ssl_certfile:
            return "a Kafka TLS key file without its certificate file"
        return None

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a TLS protocol (made once: the system's CAs take milliseconds to
        load); raises ``OSError``/``ssl.SSLError`` for a file that cannot be read as what it
        is named."""
        if self.security_protocol not in TLS_PROTOCOLS:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, self.ssl_key_password)
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


def kafka_connection(servers: str | KafkaConnection) -> KafkaConnection:
    """``servers`` as a connection: bootstrap servers alone are plaintext, as before."""
    return servers if isinstance(servers, KafkaConnection) else KafkaConnection(servers)
