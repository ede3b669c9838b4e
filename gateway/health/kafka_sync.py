"""One health view for every gateway replica: each replica reads the usage topic itself.

The choice: every replica runs a group-less consumer (no group, no commits, every partition
assigned manually) over the usage topic, starting at the first record of the last
``window_seconds`` (``offsets_for_times``), and applies each event to its own
:class:`~gateway.health.view.HealthView`. Its own attempts also reach the view at once through
the ``UsageRecorder`` observer; they come back from Kafka later and are skipped as duplicates
(``apply`` is idempotent on ``event_id``), recognised by the id near the record's start without
decoding the record (decoding them again was about 2% of a Kafka-mode gateway's CPU).

Why not a compacted ``<topic>.health`` topic of transitions/snapshots:

- The events already are the shared truth (design: "health is derived"). Windows are placed by
  event time and the breaker decides on event times, so replicas fed the same events reach the
  same states; there is no second source of truth to reconcile, no "which replica's snapshot
  wins" when two replicas saw different halves of the traffic.
- A replica that starts (or restarts) rebuilds the current view from the last window of events
  in seconds, instead of trusting a snapshot computed by someone else's partial view. (A circuit
  whose cool-down outlasts the window, after failed probes, is not rebuilt: the failures that
  opened it are older than the window. The restarted replica tries the provider again.)
- Nothing to publish on the response path beyond the event that is published anyway.

The cost: every replica reads every usage event (small JSON records; a few MB/min at thousands
of calls per second) and the shared view lags the in-process one by the producer's batching
delay (a few ms) plus the fetch wait. Consistency is eventual: replicas seeing events in a
different order may differ for a moment (e.g. a run of consecutive failures interleaved with a
success), and each replica lets its own half-open probe through (at most one per replica per
cool-down); the probe's outcome, an ordinary event, then moves every replica.

In the embedded (SQLite) mode there is one gateway process: the view is in-process only.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from gateway.event_json import EVENT_ID, ID_WITHIN, decode_event
from gateway.eventlog.kafka_connection import KafkaConnection
from gateway.eventlog.kafka_follow import TopicFollower
from gateway.health.view import HealthView

log = logging.getLogger("gateway.health")

#: after a record's event id (``EVENT_ID``), its time and provider (the view knows an event by all three)
_CREATED_AT = re.compile(rb'"created_at":"([^"\\]{1,40})"')
_PROVIDER = re.compile(rb'"provider":"([^"\\]{1,64})"')
_FIELDS_WITHIN = 1024


#: outcomes that say more about the replica than about the provider: its key refused (a replica
#: deployed with a wrong or old key), its network path (a wrong upstream URL, its egress down).
#: Another replica's are not counted: one replica's bad key opened the provider's circuit on
#: every replica, and their calls went to the fallback (the health-sync review). A provider
#: down for everyone is found by each replica's own attempts.
REPLICA_LOCAL = frozenset({"auth_error", "connection_error"})


class KafkaHealthSync(TopicFollower):
    """Follows the usage topic into ``view`` from the first record of the last window; until it
    connects the view is in-process only."""

    name = "health sync"
    log = log
    without_topic = "the view is in-process only"

    def __init__(
        self,
        view: HealthView,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        *,
        client_id: str = "llm-gateway-health",
        **options: Any,
    ) -> None:
        """``options``: :class:`TopicFollower`'s."""
        super().__init__(bootstrap_servers, topic, client_id=client_id, **options)
        self.view = view
        #: records skipped undecoded because their event was already counted (own events)
        self.known = 0

    def since(self) -> datetime:
        return self.view.now() - timedelta(seconds=self.view.config.window_seconds)

    def apply(self, raw: bytes | None) -> None:
        if raw is None:
            return
        # this replica's own events come back already counted (the recorder's observer): known by
        # their id, time and provider, they are skipped without decoding (apply would refuse
        # them as duplicates)
        if self._counted(raw):
            self.known += 1
            return
        try:
            event = decode_event(raw)
        except ValueError:  # undecodable or too new: the projector dead-letters it, health skips it
            log.debug("health sync skipped an unreadable record on %s", self.topic)
            return
        if event.outcome in REPLICA_LOCAL:
            return
        # observe: an event the view cannot apply is logged and skipped; raised here, it
        # stopped the sync for good (a year-9999 stamp overflowed the view's arithmetic)
        self.view.observe(event)

    def _counted(self, raw: bytes) -> bool:
        """Whether the view counts the record's event already, read from the raw record (any
        field not found or not readable there: False, and ``apply`` decides)."""
        found = EVENT_ID.search(raw, 0, ID_WITHIN)
        if found is None:
            return False
        at = _CREATED_AT.search(raw, found.end(), _FIELDS_WITHIN)
        provider = _PROVIDER.search(raw, found.end(), _FIELDS_WITHIN)
        if at is None or provider is None:
            return False
        try:
            ts = datetime.fromisoformat(at.group(1).decode("ascii")).timestamp()
        except (ValueError, OverflowError):  # not a time this reader knows: decoded and judged there
            return False
        decode = bytes.decode
        return self.view.has_counted(
            decode(provider.group(1), "utf-8", "replace"), ts, decode(found.group(1), "ascii", "replace")
        )
