"""With Kafka, every replica's ledger counts every replica's events: each follows the usage
topic (group-less, as the health sync does) from its snapshot's offsets, or else from the start
of the earliest current period, an hour early for records out of time order. Its own events
come back from the topic counted already (known by their ids).

Until the topic's records up to the start are read (``caught_up``), the ledger counts only what
it has read so far and this process's own calls: a budget is then enforced late, never early.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from gateway.budgets.follow import SKEW
from gateway.budgets.ledger import SpendLedger
from gateway.budgets.snapshot import Snapshot
from gateway.eventlog.kafka_connection import KafkaConnection
from gateway.eventlog.kafka_follow import TopicFollower

log = logging.getLogger("gateway.budgets")


class KafkaBudgetSync(TopicFollower):
    name = "budget sync"
    log = log
    without_topic = "budgets count this replica's calls only"

    def __init__(
        self,
        ledger: SpendLedger,
        bootstrap_servers: str | KafkaConnection,
        topic: str,
        snapshot: Snapshot | None = None,
        **options: Any,
    ) -> None:
        """``options``: :class:`TopicFollower`'s."""
        super().__init__(bootstrap_servers, topic, **options)
        self.ledger = ledger
        self._snapshot = snapshot

    @property
    def log_name(self) -> str:
        return f"kafka:{self.topic}"

    def since(self) -> datetime:
        return self.ledger.earliest_start() - SKEW

    def resume_at(self) -> dict[int, tuple[int, str | None]]:
        if self._snapshot is None:
            return {}
        # a partition it had read nothing of (no check) is read from the period's start: none of
        # its records before that run's position was counted
        checks = self._snapshot.checks
        return {p: (offset, checks[p]) for p, offset in self._snapshot.positions.items() if p in checks}

    def resumed(self, accepted: bool) -> None:
        if self._snapshot is not None and accepted:
            self.ledger.restore(self._snapshot.spent, self._snapshot.recent)
        elif self._snapshot is not None:
            log.info(
                "budgets: the snapshot's records are not on %s (another topic of that name, or deleted): "
                "the current periods are read",
                self.topic,
            )
        self._snapshot = None

    def apply(self, raw: bytes | None) -> None:
        self.ledger.observe_record(raw)

    def moved(self) -> object:
        """What changes when the follower reads on (a snapshot is written only then)."""
        return tuple(sorted(self.positions.items()))

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.log_name, dict(self.positions), self.ledger.confirmed(), dict(self.checks), self.ledger.recent_ids()
        )
