"""A budget ledger's snapshot: the spend the log brought, the position it was read to, and the
ids of the last records read, so a restart reads only the log after it (not the whole period:
a month of a busy gateway's events took minutes) and still counts a record the log holds twice
once. Kept in the data dir as ``budgets.json``, written atomically every few seconds while it
changes and at a stop.

A snapshot is used only for the log it was made from (``log``: the embedded log or the Kafka
topic, each position checked by the id of the event the log holds there) and for the same
budgets (``config``: a fingerprint of the settings; a tenant given a budget since had its spend
not counted). Otherwise the ledger reads the current periods from the log again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from gateway.atomic_file import write_atomically
from gateway.budgets.config import BudgetSettings
from gateway.budgets.ledger import Spend

log = logging.getLogger("gateway.budgets")

FILE = "budgets.json"
VERSION = 2
#: one snapshot written at a time (the periodic one may still be writing at a stop)
_writing = threading.Lock()


@dataclass
class Snapshot:
    #: ``sqlite`` or ``kafka:<topic>``
    log: str
    #: embedded log: {0: the last ``seq`` read}; Kafka: partition -> the next offset to read
    positions: dict[int, int]
    spent: Spend = field(default_factory=dict)
    #: partition -> the id of the event the log holds at the last position read
    checks: dict[int, str] = field(default_factory=dict)
    #: the ids of the last records read, oldest first
    recent: list[str] = field(default_factory=list)


def fingerprint(config: BudgetSettings) -> str:
    # without metadata budgets, what it was before they came (an upgrade keeps its snapshot)
    dumped = config.model_dump_json(exclude=None if config.metadata else {"metadata"})
    return hashlib.sha256(dumped.encode()).hexdigest()[:32]


def save(path: Path, snapshot: Snapshot, config: BudgetSettings) -> None:
    """Write ``snapshot`` to ``path`` atomically (a temporary file renamed over it)."""
    body = {
        "version": VERSION,
        "config": fingerprint(config),
        "log": snapshot.log,
        "positions": {str(p): o for p, o in snapshot.positions.items()},
        "checks": {str(p): i for p, i in snapshot.checks.items()},
        "spent": [
            [tenant, period, start.isoformat(), str(cost)]
            for tenant, periods in snapshot.spent.items()
            if isinstance(tenant, str)
            for (period, start), cost in periods.items()
        ],
        "scoped": [
            [scope[0], [list(pair) for pair in scope[1]], period, start.isoformat(), str(cost)]
            for scope, periods in snapshot.spent.items()
            if not isinstance(scope, str)
            for (period, start), cost in periods.items()
        ],
        "recent": snapshot.recent,
    }
    with _writing:
        write_atomically(path, json.dumps(body))


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
            return _read(body, log_name)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
            why = f"unreadable ({exc})"
    log.info("budgets: snapshot %s not used (%s): the current periods are read from the log", path, why)
    return None


def _read(body: dict[str, object], log_name: str) -> Snapshot:
    spent: Spend = {}
    for tenant, period, start, cost in body["spent"]:  # type: ignore[attr-defined]
        spent.setdefault(str(tenant), {})[str(period), _start(start)] = _amount(cost)
    for tenant, pairs, period, start, cost in body.get("scoped", []):  # type: ignore[attr-defined]
        scope = (None if tenant is None else str(tenant), tuple((str(k), str(v)) for k, v in pairs))
        spent.setdefault(scope, {})[str(period), _start(start)] = _amount(cost)
    positions = {int(p): int(o) for p, o in body["positions"].items()}  # type: ignore[attr-defined]
    checks = {int(p): str(i) for p, i in body["checks"].items()}  # type: ignore[attr-defined]
    recent = [str(i) for i in body["recent"]]  # type: ignore[attr-defined]
    return Snapshot(log_name, positions, spent, checks, recent)


def _amount(cost: object) -> Decimal:
    amount = Decimal(str(cost))
    if not amount.is_finite() or amount <= 0:  # NaN made the start raise
        raise ValueError(f"spent {cost!r}")
    return amount


def _start(start: object) -> datetime:
    moment = datetime.fromisoformat(str(start))
    if moment.tzinfo is None:
        raise ValueError(f"a period start without its zone: {start!r}")
    return moment
