"""A new analytics store behind a log that was projected before: the whole log goes into it.

The consumer group's position lives with the log (the SQLite file's positions, Kafka's committed
offsets), not in the store it describes. A DuckDB file removed or moved aside (an older version
refused a migrated one, say) was created anew, empty, and the projector went on from the
group's position: every earlier event was missing from DuckDB, ``/v1/costs`` said 0 and
``/healthz`` ok (an upgrade review). A store that holds no usage when it is migrated is marked
(migration 0009); when the group has committed a position (a new group reads the log from its
beginning anyway), the projector then reads the log from its beginning (its sinks only insert,
so what Postgres holds stays as it is; events already projected there are skipped) and the mark
is removed once the projector has caught up with the log: it has applied again all the group
had committed (``LogReader.rewind_done``), or a fetch found nothing more. Meanwhile the group's
position never moves back. A stop before that reads the log from the beginning again at the
next start.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from analytics.store import AnalyticsStore
from gateway.event_json import UNDECODABLE, decode_event
from gateway.eventlog.base import LogReader

log = logging.getLogger(__name__)

TABLE = "projection_catch_up"
#: the group's last committed records looked at (:func:`mark_if_behind`) for the newest that is an
#: event the projector applied (one it dead-lettered is in no store)
LAST_COMMITTED = 16


async def pending(store: AnalyticsStore) -> bool:
    """Whether the store is marked as not holding the log yet."""
    rows = await store.fetchall(f"SELECT count(*) FROM {TABLE}")
    return bool(rows[0][0])


async def mark_if_behind(store: AnalyticsStore, reader: LogReader) -> bool:
    """Mark a store that does not hold the newest event the group's position says was projected
    (a data dir backed up file by file while it ran, DuckDB copied before the log:
    a review's restored store missed 534 events for good while ``/healthz`` said ok), so the
    projector reads the log into it again from its beginning; the sinks only insert, so what it
    holds stays. Only for a reader that can give its last committed records (the embedded log)."""
    last_committed: Callable[[int], Awaitable[list[bytes]]] | None = getattr(reader, "last_committed", None)
    if last_committed is None:
        return False
    newest = None
    for value in await last_committed(LAST_COMMITTED):  # the last first, dead letters left out
        try:
            newest = decode_event(value).event_id  # as the projector reads it
        except UNDECODABLE:
            continue
        break
    if newest is None:
        return False
    rows = await store.fetchall("SELECT count(*) FROM usage_facts WHERE event_id = ?", [newest])
    if rows[0][0]:
        return False
    log.warning(
        "the analytics store does not hold the last event the event log says was projected (%s; a copy of the "
        "data dir whose analytics store is older than its log?): projecting the log into it again",
        newest,
    )
    await store.run(lambda conn: conn.execute(f"INSERT INTO {TABLE} SELECT now()"))
    return True


class CatchUp:
    """Reads the log from its beginning into a marked store, and removes the mark once caught up."""

    def __init__(self, store: AnalyticsStore, reader: LogReader) -> None:
        self.store = store
        self.reader = reader

    async def begin(self) -> None:
        log.info(
            "the analytics store holds no usage yet: projecting the event log into it from its beginning "
            "(the stores keep what they hold; after a replay --reprice, run it again to re-cost this store)"
        )
        await self.reader.seek_to_beginning()

    async def caught_up(self) -> None:
        await self.reader.end_rewind()
        await self.done()
        log.info("the analytics store has caught up with the event log")

    async def done(self) -> None:
        await self.store.run(lambda conn: conn.execute(f"DELETE FROM {TABLE}"))
