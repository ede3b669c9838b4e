"""What a replay reports: counts, the diff of cost totals per tenant and model (exact
``Decimal``, at the stores' scale), its text rendering, and the progress bar of the CLI."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gateway.pricing.base import money_text

#: the stores' money scale: DECIMAL(20, 10) / NUMERIC(20, 10), rounded half away from zero
STORE_SCALE = Decimal("1e-10")
ZERO = Decimal(0)


def store_money(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(STORE_SCALE, ROUND_HALF_UP)


@dataclass
class KeyDiff:
    """Old and new totals of one (tenant, model) over the replayed events."""

    tenant_id: str
    model: str
    old_cost: Decimal = ZERO
    new_cost: Decimal = ZERO
    events: int = 0
    changed: int = 0
    #: replayed events DuckDB did not hold before
    added: int = 0
    unpriced_before: int = 0
    unpriced_after: int = 0
    #: rows a ``full`` rebuild dropped that the log no longer has
    removed: int = 0
    #: stored rows whose cost the replay changed, and by how much in all (unpriced counts as 0)
    cost_changed: int = 0
    cost_delta: Decimal = ZERO

    @property
    def delta(self) -> Decimal:
        return self.new_cost - self.old_cost

    @property
    def differs(self) -> bool:
        return bool(self.changed or self.added or self.removed or self.old_cost != self.new_cost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenantId": self.tenant_id,
            "model": self.model,
            "oldCostUsd": money_text(self.old_cost),
            "newCostUsd": money_text(self.new_cost),
            "deltaUsd": money_text(self.delta),
            "events": self.events,
            "changed": self.changed,
            "added": self.added,
            "removed": self.removed,
            "unpricedBefore": self.unpriced_before,
            "unpricedAfter": self.unpriced_after,
            "costChanged": self.cost_changed,
            "costDeltaUsd": money_text(self.cost_delta),
        }


@dataclass
class ReplayReport:
    first: str = "-"
    last: str = "-"
    records_read: int = 0
    #: decoded events in the range (records before ``since`` are not counted)
    events: int = 0
    events_applied: int = 0
    #: events the current price table costs (or versions) differently from the log's record
    repriced: int = 0
    #: events whose stored cost/version differed from the replayed one (incl. added)
    changed: int = 0
    added: int = 0
    #: events already in DuckDB whose cost the replay changed
    cost_changed: int = 0
    #: ... whose cost stayed and whose price version the replay changed (a new table, same rates)
    version_changed: int = 0
    undecodable: int = 0
    refused: int = 0
    unpriced_before: int = 0
    unpriced_after: int = 0
    price_version: str | None = None
    health_rebuilt: bool = False
    dry_run: bool = False
    full: bool = False
    #: records of the range the live projector group had not committed when the replay began
    live_behind: int = 0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)
    by_key: dict[tuple[str, str], KeyDiff] = field(default_factory=dict)

    @property
    def diff(self) -> list[KeyDiff]:
        return [d for _, d in sorted(self.by_key.items()) if d.differs]

    @property
    def rate(self) -> float:
        return self.records_read / self.elapsed if self.elapsed > 0 else 0.0

    def key(self, tenant: str, model: str) -> KeyDiff:
        found = self.by_key.get((tenant, model))
        if found is None:
            found = self.by_key[(tenant, model)] = KeyDiff(tenant, model)
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "range": {"first": self.first, "last": self.last},
            "recordsRead": self.records_read,
            "events": self.events,
            "eventsApplied": self.events_applied,
            "repriced": self.repriced,
            "changed": self.changed,
            "added": self.added,
            "costChanged": self.cost_changed,
            "versionChanged": self.version_changed,
            "undecodable": self.undecodable,
            "refused": self.refused,
            "unpricedBefore": self.unpriced_before,
            "unpricedAfter": self.unpriced_after,
            "priceVersion": self.price_version,
            "healthRebuilt": self.health_rebuilt,
            "dryRun": self.dry_run,
            "full": self.full,
            "liveBehind": self.live_behind,
            "elapsedSeconds": round(self.elapsed, 3),
            "eventsPerSecond": round(self.rate, 1),
            "warnings": list(self.warnings),
            "diff": [d.to_dict() for d in self.diff],
        }


def render_report(doc: dict[str, Any]) -> str:
    """The summary and the diff of a :meth:`ReplayReport.to_dict` document, as text."""
    mode = ("dry run, " if doc["dryRun"] else "") + ("full rebuild, " if doc["full"] else "")
    priced = f"repriced with {doc['priceVersion']}" if doc.get("priceVersion") else "recorded costs"
    lines = [
        f"replay {doc['range']['first']} .. {doc['range']['last']} ({mode}{priced}): "
        f"{doc['recordsRead']:,} records in {doc['elapsedSeconds']:.2f}s ({doc['eventsPerSecond']:,.0f} events/s)",
        f"  events {doc['events']:,}  applied {doc['eventsApplied']:,}  costed unlike the log {doc['repriced']:,}  "
        f"changed {doc['changed']:,} (new rows {doc['added']:,}, new costs {doc['costChanged']:,}, "
        f"same cost at a new price version {doc.get('versionChanged', 0):,})",
        f"  unpriced billable events: {doc['unpricedBefore']:,} before, {doc['unpricedAfter']:,} after",
        f"  undecodable {doc['undecodable']:,}  refused {doc['refused']:,}  "
        f"health history {'rebuilt' if doc['healthRebuilt'] else 'not touched'}",
    ]
    lines += [f"  warning: {w}" for w in doc.get("warnings", [])]
    changes = doc.get("diff") or []
    # the pairs whose stored money changed (rows re-costed, even when their changes offset each
    # other, or rows removed); the others only got new rows or a new price version
    diff = [d for d in changes if d.get("costChanged") or d["removed"]]
    if len(diff) < len(changes):
        lines.append(
            f"  {len(changes) - len(diff):,} tenant/model pairs changed no cost (new rows, or the same cost at a new "
            "price version)"
        )
    if not diff:
        lines.append("no cost changes")
        return "\n".join(lines)
    lines.append("cost changes by tenant and model (USD):")
    header = ("tenant", "model", "events", "re-costed", "removed", "delta (re-costed)", "unpriced")
    table = [header] + [
        (
            d["tenantId"],
            d["model"],
            str(d["events"]),
            str(d["costChanged"]),
            str(d["removed"]),
            ("+" if not d["costDeltaUsd"].startswith("-") else "") + d["costDeltaUsd"],
            f"{d['unpricedBefore']} -> {d['unpricedAfter']}",
        )
        for d in diff
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


class ProgressBar:
    """A one-line text bar on a terminal (stderr); silent when the stream is not a TTY."""

    def __init__(self, stream: Any, *, width: int = 30, interval: float = 0.1) -> None:
        self._stream = stream
        self._enabled = bool(getattr(stream, "isatty", lambda: False)())
        self._width = width
        self._interval = interval
        self._started = time.perf_counter()
        self._shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        now = time.perf_counter()
        if now - self._shown < self._interval and done < total:
            return
        self._shown = now
        fraction = done / total if total else 1.0
        filled = int(self._width * min(fraction, 1.0))
        rate = done / (now - self._started) if now > self._started else 0.0
        self._stream.write(
            f"\rreplay [{'#' * filled}{'.' * (self._width - filled)}] {done:,}/{total:,} ({rate:,.0f}/s)"
        )
        self._stream.flush()

    def finish(self) -> None:
        if self._enabled and self._shown:
            self._stream.write("\n")
            self._stream.flush()
