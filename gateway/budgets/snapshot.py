"""A budget ledger's snapshot: the spend the log brought, and the position it was read to, so a
restart reads only the log after it (not the whole period: a month of a busy gateway's events
took minutes). Kept in the data dir as ``budgets.json``, written atomically every few seconds
while it changes and at a stop.

A snapshot is used only for the log it was made from (``log``: the embedded log, checked by the
id of the event at its position; or the Kafka topic, checked by its offsets) and for the same
budgets (``config``: a fingerprint of the settings; a tenant given a budget since had its spend
not counted). Otherwise the ledger reads the current periods from the log again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from gateway.budgets.config import BudgetSettings
from gateway.budgets.ledger import Spend

log = logging.getLogger("gateway.budgets")

FILE = "budgets.json"
VERSION = 1


@dataclass
class Snapshot:
    #: ``sqlite`` or ``kafka:<topic>``
    log: str
    #: embedded log: {0: the last ``seq`` read}; Kafka: partition -> the next offset to read
    positions: dict[int, int]
    spent: Spend = field(default_factory=dict)
    #: embedded log: the id of the event at the last ``seq`` read
    check: str | None = None


def fingerprint(config: BudgetSettings) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:32]


def save(path: Path, snapshot: Snapshot, config: BudgetSettings) -> None:
    """Write ``snapshot`` to ``path`` atomically (a temporary file renamed over it)."""
    body = {
        "version": VERSION,
        "config": fingerprint(config),
        "log": snapshot.log,
        "positions": {str(p): o for p, o in snapshot.positions.items()},
        "check": snapshot.check,
        "spent": [
            [tenant, period, start.isoformat(), str(cost)]
            for tenant, periods in snapshot.spent.items()
            for (period, start), cost in periods.items()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as out:
        json.dump(body, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def load(path: Path, config: BudgetSettings, log_name: str) -> Snapshot | None:
    """The snapshot at ``path`` when it was made for ``log_name`` and ``config``, else None (and
    why, at INFO)."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("budgets: snapshot %s unreadable (%s): the current periods are read from the log", path, exc)
        return None
    why = None
    if not isinstance(body, dict) or body.get("version") != VERSION:
        why = "another version"
    elif body.get("config") != fingerprint(config):
        why = "the budgets changed"
    elif body.get("log") != log_name:
        why = f"made from another log ({body.get('log')!r})"
    if why is None:
        try:
            spent: Spend = {}
            for tenant, period, start, cost in body["spent"]:
                spent.setdefault(str(tenant), {})[str(period), datetime.fromisoformat(start)] = Decimal(cost)
            positions = {int(p): int(o) for p, o in body["positions"].items()}
            check = body.get("check")
            return Snapshot(log_name, positions, spent, None if check is None else str(check))
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            why = f"unreadable ({exc})"
    log.info("budgets: snapshot %s not used (%s): the current periods are read from the log", path, why)
    return None
