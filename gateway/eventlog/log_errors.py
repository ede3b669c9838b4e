"""The event logs' errors in one line, and why a Kafka client could not reach the cluster.

aiokafka logs each broker's refusal (``Unable connect to "host:port": [Error 58]
SaslAuthenticationFailed: ... invalid credentials``, a certificate that does not verify, a
refused connection) and then raises ``KafkaConnectionError("Unable to bootstrap from
[('host', 9093, <AddressFamily.AF_INET: 2>)]")`` without it. The gateway's warnings,
``/healthz`` and the consumers' ``lagError`` said only that, and aiokafka's own line, limited to
one per 30 s, was the one place that named a rotated password. :func:`remember_causes` keeps the
last refusal of each broker address from aiokafka's log records (a filter on its logger: it
suppresses nothing), and :func:`describe` names it beside the bootstrap failure.
"""

from __future__ import annotations

import logging
import re
import time

#: aiokafka's errors for what a cluster's ACLs or credentials refuse (by name: aiokafka is
#: imported only in Kafka mode): no wait and no retry mends them
_USER_REFUSED = frozenset({
    "TopicAuthorizationFailedError", "GroupAuthorizationFailedError", "ClusterAuthorizationFailedError",
    "SaslAuthenticationFailed", "AuthenticationFailedError", "AuthenticationMethodNotSupported",
})  # fmt: skip
#: seconds before a warning of the same reason is logged again (``/healthz`` says it meanwhile):
#: every 2 to 5 s was thousands of lines an hour of one rotated password (a review)
SAME_REASON_EVERY = 60.0

#: a refusal older than this is not named: it may be from before the broker went away
CAUSE_TTL = 120.0
#: addresses whose refusal is kept (a bound: a host list comes from the configuration)
MAX_ADDRESSES = 256

#: aiokafka's records of one broker's refusal (``aiokafka.client``: connecting; the metadata
#: request on a connection made, e.g. a listener of another protocol)
_REFUSALS = frozenset({'Unable connect to "%s:%s": %s', 'Unable to request metadata from "%s:%s": %s'})
#: a broker of the cluster refusing a connection after the bootstrap (a password rotated while
#: a consumer runs)
_NODE_REFUSAL = "Unable connect to node with id %s: %s"
#: the hosts in aiokafka's bootstrap failure: ``[('127.0.0.1', 9092, <AddressFamily.AF_INET: 2>)]``
_HOSTS = re.compile(r"\('([^']*)', (\d+), <AddressFamily")

_causes: dict[str, tuple[float, str]] = {}


def one_line(error: BaseException) -> str:
    """The error's text on one line, named by its type where the text does not name it
    (``ConnectionRefusedError: [Errno 111] ...``; aiokafka's own errors name themselves)."""
    text = " ".join(str(error).split())
    name = type(error).__name__
    if not text:
        return name
    return text if name in text else f"{name}: {text}"


class _Refusals(logging.Filter):
    #: the least level of aiokafka's records shown (NOTSET: as its logger says); see remember_causes
    shown = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg in _REFUSALS and isinstance(args, tuple) and len(args) == 3:
            _keep(f"{args[0]}:{args[1]}", args[2])
        elif record.msg == _NODE_REFUSAL and isinstance(args, tuple) and len(args) == 2:
            _keep(f"broker {args[0]}", args[1])
        return record.levelno >= self.shown


def _keep(where: str, error: object) -> None:
    if len(_causes) >= MAX_ADDRESSES:
        _causes.clear()
    text = one_line(error) if isinstance(error, BaseException) else " ".join(str(error).split())
    _causes[where] = (time.monotonic(), text)


def latest_refusal() -> str | None:
    """The latest refusal aiokafka logged within :data:`CAUSE_TTL` (``where: why``), for a wait
    on the log that ends in no error of its own (a lag not said within its timeout)."""
    now = time.monotonic()
    recent = [(at, f"{where}: {text}") for where, (at, text) in _causes.items() if now - at <= CAUSE_TTL]
    return max(recent)[1] if recent else None


_FILTER = _Refusals()


def remember_causes() -> None:
    """Keep aiokafka's refusals from now on (idempotent; every Kafka client of the gateway is
    made from a :class:`~gateway.eventlog.kafka_connection.KafkaConnection`, which calls it)."""
    logger = logging.getLogger("aiokafka")
    if _FILTER not in logger.filters:
        # a logger's filters see only the records its level lets through: under ``--log-level
        # error`` the metadata refusals (WARNING) were not kept, and an older refusal of the same
        # broker was named instead (a diff read). The logger lets WARNING through, and the
        # filter shows only what the level shown before asks for.
        shown = logger.getEffectiveLevel()
        if shown > logging.WARNING:
            _FILTER.shown = shown
            logger.setLevel(logging.WARNING)
        logger.addFilter(_FILTER)


def describe(error: BaseException) -> str:
    """:func:`one_line`, with aiokafka's bootstrap failure given its brokers as ``host:port`` and
    the refusal each last answered (``KafkaConnectionError: Unable to bootstrap from
    127.0.0.1:9093 ([Error 58] SaslAuthenticationFailed: ...)``)."""
    text = one_line(error)
    hosts = _HOSTS.findall(text)
    if not hosts or "Unable to bootstrap" not in text:
        return text
    addresses = [f"{host}:{port}" for host, port in hosts]
    now = time.monotonic()
    known = {a: c[1] for a in addresses if (c := _causes.get(a)) is not None and now - c[0] <= CAUSE_TTL}
    text = f"{type(error).__name__}: Unable to bootstrap from {', '.join(addresses)}"
    if len(addresses) == 1 and known:
        return f"{text} ({known[addresses[0]]})"
    if known:
        return f"{text} ({'; '.join(f'{a}: {c}' for a, c in known.items())})"
    return text


def refuses_user(error: BaseException) -> bool:
    """Whether ``error`` is the cluster refusing this user (its ACLs or its credentials)."""
    return type(error).__module__.startswith("aiokafka") and type(error).__name__ in _USER_REFUSED


class Repeats:
    """Whether a warning is due: at once for a reason other than the last one logged, else once
    per :data:`SAME_REASON_EVERY` (the forwarder's, the topic followers')."""

    def __init__(self) -> None:
        self._last: tuple[str, float] | None = None

    def due(self, reason: str) -> bool:
        """True, and noted as logged, when a warning of ``reason`` is due now."""
        now = time.monotonic()
        if self._last is not None and self._last[0] == reason and now - self._last[1] < SAME_REASON_EVERY:
            return False
        self._last = (reason, now)
        return True

    def reset(self) -> None:
        """The trouble is over: the next reason is said at once, whatever it is."""
        self._last = None
