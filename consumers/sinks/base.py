"""The sink port: where the projector applies batches of usage events, and where it sends
records it cannot use (dead letters).

A sink is idempotent on ``event_id``: applying a batch twice, or a batch that overlaps one
already applied, leaves the same rows and the same sums. That is what lets the projector
commit the log position only after every sink applied a batch, and simply re-apply the batch
after a failure or a crash.

Who may change a stored event: a **replay**'s sinks correct it (re-applying an event whose
cost changed, with a new price table or back to the recorded one, updates the cost); the
**live projector**'s sinks never do (``corrects=False``: a stored event is kept as it is). The
log never holds two versions of an event, so a live projector meeting a stored event is
redelivering it (a crash between the stores' commit and the position's, a group set back):
it carried the recorded cost and overwrote what ``replay --reprice`` had corrected, for part
of history and without a word (a review rewound a group after a reprice: 615 events went back).

Errors: adapters translate driver errors at the boundary into :class:`SinkError`, whose
``retryable`` flag (on the class) tells the projector what to do:

- ``SinkError`` (retryable): the sink is unavailable (database down, disk error, lock held).
  The projector pauses and retries the same batch with backoff, forever, without committing.
- ``RejectedEvents`` (not retryable): the sink refuses the data itself (a value out of range).
  The projector isolates the offending events and dead-letters them; the rest is applied.

Any other exception is a bug: it propagates and stops the projector, uncommitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from gateway.events import UsageEvent


class Sink(Protocol):
    """A projection of the usage events (the LLMUsage table, DuckDB facts, ...)."""

    name: str

    async def start(self) -> None:
        """Acquire resources and apply migrations. Raises ``SinkError`` when unavailable."""
        ...

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        """Upsert ``events`` atomically and idempotently (keyed by ``event_id``)."""
        ...

    async def reset(self) -> None:
        """Drop the projected data (a full rebuild by replay follows)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SharedSink(Protocol):
    """A sink whose table other event logs may write too (several embedded gateways projecting
    into one Postgres ``"LLMUsage"``): a full rebuild from this log must not empty it. The
    replay has it forget the events this log's DuckDB store held instead, then writes the log."""

    async def forget(self, event_ids: Sequence[str]) -> None:
        """Delete the rows of ``event_ids`` (those it holds)."""
        ...


class DeadLetters(Protocol):
    """Where records the projector cannot apply go, byte for byte. Must be idempotent on
    ``(position, raw)``: the same record may be dead-lettered again after a redelivery."""

    async def dead_letter(self, raw: bytes, reason: str, position: str) -> None: ...


class SinkError(Exception):
    """A sink could not apply a batch for now; the same batch will be retried."""

    retryable: ClassVar[bool] = True

    def __init__(self, sink: str, message: str) -> None:
        super().__init__(f"{sink}: {message}")
        self.sink = sink


class RejectedEvents(SinkError):
    """The sink refuses (some of) the events themselves; retrying the same data cannot help."""

    retryable: ClassVar[bool] = False


class DistinctEvents(list[UsageEvent]):
    """A batch whose event ids are known to be distinct (the replayer makes them so as it
    decodes): :func:`latest_by_id` hands it back as it is instead of checking again in every
    sink (a dict of the batch per sink: ~5% of a replay's event-loop thread)."""

    __slots__ = ()


def latest_by_id(events: Sequence[UsageEvent]) -> list[UsageEvent]:
    """One event per ``event_id`` (the last one wins, e.g. a re-priced copy), in batch order.

    A batch can hold the same event twice (a producer retry, a spool forwarded twice); a
    single upsert statement must not touch one row twice.
    """
    if isinstance(events, DistinctEvents):
        return events
    latest = {event.event_id: event for event in events}
    if len(latest) == len(events):
        return list(events)
    return list(latest.values())
