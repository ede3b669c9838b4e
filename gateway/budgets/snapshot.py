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
from decimal import Decimal
from pathlib import Path

from gateway.atomic_file import write_atomically
from gateway.budgets.config import BudgetSettings, Scope
from gateway.budgets.ledger import Spend

log = logging.getLogger("gateway.budgets")

FILE = "budgets.json"
#: more than any period's spend can be (a snapshot's larger amount is no spend: not used)
MAX_SPENT = Decimal(10) ** 18
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
    """The budgets' identity: without metadata budgets, what it was before they came (an upgrade
    keeps its snapshot); with them, whatever their order and their pairs' order."""
    dumped = config.model_dump_json(exclude={"metadata"})
    if config.metadata:
        scoped = sorted(
            [b.tenant is None, b.tenant or "", sorted(b.match.items()), str(b.usd), b.period]
            for b in config.metadata  # (scopes are unique: the sort never compares past them)
        )
        dumped += json.dumps(scoped, default=str)
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
        if path.exists() and not path.is_file():  # a pipe would block the start (a re-test)
            raise ValueError("not a regular file")
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 (a file the start must survive: nested past recursion too)
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
        except Exception as exc:  # noqa: BLE001 (hand-edited: whatever it holds, the log is read instead)
            why = f"unreadable ({type(exc).__name__}: {exc})"
    log.info("budgets: snapshot %s not used (%s): the current periods are read from the log", path, why)
    return None


def _read(body: dict[str, object], log_name: str) -> Snapshot:
    spent: Spend = {}
    for tenant, period, start, cost in body["spent"]:  # type: ignore[attr-defined]
        spent.setdefault(str(tenant), {})[str(period), _start(start)] = _amount(cost)
    for tenant, pairs, period, start, cost in body.get("scoped", []):  # type: ignore[attr-defined]
        spent.setdefault(_scope(tenant, pairs), {})[str(period), _start(start)] = _amount(cost)
    positions = {int(p): _position(o) for p, o in body["positions"].items()}  # type: ignore[attr-defined]
    checks = {int(p): str(i) for p, i in body["checks"].items()}  # type: ignore[attr-defined]
    recent = [str(i) for i in body["recent"]]  # type: ignore[attr-defined]
    return Snapshot(log_name, positions, spent, checks, recent)


def _amount(cost: object) -> Decimal:
    amount = Decimal(str(cost))
    # NaN made the start raise, and so did 1e1000000 (an Overflow adding it up)
    if not amount.is_finite() or not 0 < amount < MAX_SPENT:
        raise ValueError(f"spent {str(cost)[:40]!r}")
    return amount


def _position(offset: object) -> int:
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 2**63:
        raise ValueError(f"position {str(offset)[:40]!r}")
    return offset


def _scope(tenant: object, pairs: object) -> Scope:
    if (tenant is not None and not isinstance(tenant, str)) or not isinstance(pairs, list):
        raise ValueError("a metadata budget's scope")
    scope = []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            raise ValueError("a metadata budget's pair")
        scope.append((pair[0], pair[1]))
    return tenant, tuple(scope)


def _start(start: object) -> datetime:
    moment = datetime.fromisoformat(str(start))
    if moment.tzinfo is None:
        raise ValueError(f"a period start without its zone: {start!r}")
    return moment
