"""The gateway's side of the event log: hand an event over without waiting on any broker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from gateway.events import UsageEvent


class EventLog(Protocol):
    """Where the gateway puts usage events.

    ``publish`` returns quickly and never raises: the response path must not wait on a broker
    nor fail because of one. Durable adapters make the event durable locally before returning
    (so a ``kill -9`` after the client got its response loses nothing) and forward it to the
    broker in the background.
    """

    def publish(self, event: UsageEvent) -> None: ...

    def stage(self, event: UsageEvent) -> None:
        """``publish`` for the request path, grouped: durable adapters write every event staged
        within one loop turn in one commit, at the start of the next turn at the latest (at
        once without a running loop). Never raises."""
        ...

    async def settled(self, callers: int = 1) -> None:
        """Return once every event staged so far is as durable as ``publish`` makes it; an answer
        waits for this. ``callers``: the calls in flight, this one included (when as many
        events are staged, none can join the commit, so it is written without waiting)."""
        ...

    async def start(self) -> None: ...

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``; keep the rest for the next start."""
        ...

    def pending(self) -> int:
        """Events accepted but not yet on the durable log (the spool depth)."""
        ...

    def lost(self) -> int:
        """Events accepted that ``close`` could not put on the durable log (its file refused them
        to the end): each was logged in full at ERROR."""
        ...

    def outage(self) -> LogOutage | None:
        """Why events do not reach the durable log now, and since when (a broker that cannot
        be reached or refuses the credentials, a file that refuses writes); None while they
        do, as far as this process knows. Calls go on either way: their events wait."""
        ...


class LogOutage(NamedTuple):
    """Why events do not reach the durable log (one line), and since when."""

    error: str
    since: datetime


class LogRecord(NamedTuple):
    """One event as stored on a log. ``position`` is adapter-specific and opaque to consumers
    (e.g. ``"17"`` for the embedded log, ``"2:1045"`` (partition:offset) for Kafka); ``millis``:
    its log time in milliseconds since the epoch (the embedded log's ``ts``, Kafka's timestamp),
    read as a time with :attr:`timestamp`.

    A tuple with the time left as a number: a projector reads 5,000 records a batch and no
    consumer reads their times. A frozen dataclass with a ``datetime`` cost 0.86 µs a record on
    the projector's loop, this 0.29 µs; and a time computed while reading made a Kafka
    record stamped past ``datetime``'s range (year 10000) raise in the reader, so the batch it
    was in never reached the projector, for good."""

    position: str
    value: bytes
    key: str | None = None
    millis: int | None = None

    @property
    def timestamp(self) -> datetime | None:
        return None if self.millis is None else log_time(self.millis)


def log_time(millis: int) -> datetime:
    """A log time in milliseconds since the epoch, as an aware UTC time; one past ``datetime``'s
    range (year 10000, in UTC, of an event stamped 9999-12-31T23:00-05:00) is the latest (or
    earliest) time there is."""
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return datetime.max.replace(tzinfo=UTC) if millis > 0 else datetime.min.replace(tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """``moment`` (aware) as a log time: milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)


class LogReader(Protocol):
    """The consumers' side of the log: read batches, commit after they were applied.

    A reader belongs to a consumer group; ``commit(records)`` stores, for the group, the
    position just after the last of ``records`` (per partition). After a restart, ``fetch``
    resumes after the last committed position, so uncommitted records are delivered again
    (sinks are idempotent on the event id, so redelivery never double-counts).
    """

    #: how often a batch that lingers for company reads on (seconds); None: once, at the
    #: linger's end. A reader that fetches ahead and holds one response (Kafka's) reads on, or
    #: what came after that response waited for the next batch: twice the embedded log's lag.
    read_while_lingering: float | None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, max_records: int, timeout: float) -> list[LogRecord]:
        """Up to ``max_records`` records after the current position; [] after ``timeout``."""
        ...

    async def commit(self, records: Sequence[LogRecord]) -> None: ...

    async def seek_to_beginning(self) -> None:
        """Read the whole log again from its first record (replay)."""
        ...

    async def has_committed(self) -> bool:
        """Whether the group has committed a position on this log (projected anything)."""
        ...

    async def rewind_done(self) -> bool:
        """After :meth:`seek_to_beginning`: whether this reader has read again all the group had
        committed when it rewound (what it holds of it): a catch-up is over then, though new
        events keep coming (it waited for a fetch that found nothing, which steady traffic
        never gives: ``catching_up`` for minutes, a review)."""
        ...

    async def end_rewind(self) -> None:
        """After :meth:`seek_to_beginning`: partitions this reader is given from now on are read
        from the group's position again (Kafka's rebalances; a one-partition log has none)."""
        ...

    async def lag(self) -> int:
        """Records on the log not yet committed by this group."""
        ...
