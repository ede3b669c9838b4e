"""Where the process that owns the analytics store listens, for the operator commands (`costs`,
`sql`, `replay`) run without ``--url``.

The embedded ``serve`` projects in its own process; with Kafka, or with ``serve --no-project``
next to ``llm-gateway consume`` on the same data dir, the consumer does (port 8081). The
commands ask each address in turn and take the first that answers with the endpoint (a gateway
whose projection runs elsewhere answers 404); only when none does they open the files.
"""

from __future__ import annotations

from gateway.settings import Settings

#: what the commands say when the address given with --url has no such endpoint
OWNER_HINT = (
    "the analytics store lives in the process that projects the events (the gateway in the embedded "
    "mode, else `llm-gateway consume`, e.g. --url http://127.0.0.1:8081)"
)


def owner_urls(settings: Settings) -> list[str]:
    """The addresses to ask, the likelier owner first."""
    gateway, consumer = f"http://127.0.0.1:{settings.port}", f"http://127.0.0.1:{settings.consume_port}"
    return [consumer, gateway] if settings.kafka_bootstrap_servers else [gateway, consumer]
