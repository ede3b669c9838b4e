"""With Kafka, every replica's ledger counts every replica's events: each follows the usage
topic (group-less, as the health sync does) from the start of the earliest current period, an
hour early for records out of time order. Its own events come back from the topic counted
already (:meth:`~gateway.budgets.ledger.SpendLedger.observe_shared` skips them by id).

Until the topic's records of the period are read (``caught_up``), the ledger counts only what it
has read so far and this process's own calls: a budget is then enforced late, never early.
"""

from __future__ import annotations

import logging
from datetime import datetime

from gateway.budgets.ledger import SpendLedger
from gateway.budgets.seed import SKEW
from gateway.event_json import decode_event
from gateway.eventlog.kafka_follow import TopicFollower

log = logging.getLogger("gateway.budgets")


class KafkaBudgetSync(TopicFollower):
    name = "budget sync"
    log = log
    without_topic = "budgets count this replica's calls only"

    def __init__(self, ledger: SpendLedger, bootstrap_servers: str, topic: str, **kwargs: object) -> None:
        super().__init__(bootstrap_servers, topic, **kwargs)  # type: ignore[arg-type]
        self.ledger = ledger
        #: records not counted because they could not be read
        self.unreadable = 0

    def since(self) -> datetime:
        return self.ledger.earliest_start() - SKEW

    def apply(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            event = decode_event(raw)
        except ValueError:  # the projector dead-letters it; it counts for nothing here
            self.unreadable += 1
            return
        self.ledger.observe_shared(event)
