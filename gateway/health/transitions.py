"""Health history: transitions as they happen, and the rows they (and snapshots) become.

A :class:`HealthTransition` is emitted by :class:`gateway.health.view.HealthView` whenever the
circuit of a provider changes (``kind="circuit"``: closed/open/half_open) or the health state
of a provider or a provider+model changes (``kind="state"``: healthy/degraded/down). It carries
the window stats at that moment, so one transition is one row of ``provider_health_history``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from gateway.health.breaker import CircuitState
from gateway.health.rules import HealthState
from gateway.health.window import WindowStats

#: the ``model`` of history rows about a provider as a whole
ALL_MODELS = "*"


@dataclass(frozen=True, slots=True)
class HealthTransition:
    provider: str
    model: str | None  # None: the provider as a whole
    at: datetime
    kind: Literal["circuit", "state"]
    previous: str
    current: str
    reason: str
    #: the health state and circuit after the transition (circuit: None for model rows)
    state: HealthState
    circuit: CircuitState | None
    stats: WindowStats

    def describe(self) -> str:
        subject = self.provider if self.model is None else f"{self.provider}/{self.model}"
        label = "circuit" if self.kind == "circuit" else "health"
        return f"{label} {subject}: {self.previous} -> {self.current} ({self.reason})"


@dataclass(frozen=True, slots=True)
class HealthHistoryRow:
    """One row of ``provider_health_history`` (key: provider, model, window_end)."""

    provider: str
    model: str  # ALL_MODELS for the provider as a whole
    window_end: datetime
    window_seconds: float
    attempts: int
    failures: int
    rate_limited: int
    timeouts: int
    p50_ms: float | None
    p95_ms: float | None
    p50_ttft_ms: float | None
    state: HealthState
    circuit: CircuitState | None
    reason: str | None  # why the state changed; None for a periodic snapshot

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.provider, self.model, self.window_end)


def history_row(
    provider: str,
    model: str | None,
    stats: WindowStats,
    state: HealthState,
    circuit: CircuitState | None,
    reason: str | None = None,
) -> HealthHistoryRow:
    return HealthHistoryRow(
        provider=provider,
        model=ALL_MODELS if model is None else model,
        window_end=stats.window_end,
        window_seconds=stats.window_seconds,
        attempts=stats.attempts,
        failures=stats.failures,
        rate_limited=stats.rate_limited,
        timeouts=stats.timeouts,
        p50_ms=stats.p50_latency_ms,
        p95_ms=stats.p95_latency_ms,
        p50_ttft_ms=stats.p50_ttft_ms,
        state=state,
        circuit=circuit,
        reason=reason,
    )


def transition_rows(transitions: Iterable[HealthTransition]) -> list[HealthHistoryRow]:
    """One row per (provider, model, instant): transitions of one key at one instant (the circuit
    opening and the state going down) merge into one row, reasons joined, the last state wins."""
    rows: dict[tuple[str, str, datetime], HealthHistoryRow] = {}
    for t in transitions:
        if t.model == ALL_MODELS:
            continue  # a model named "*" (a client's): its rows would overwrite the provider's
        stats = t.stats if t.stats.window_end == t.at else replace(t.stats, window_end=t.at)
        row = history_row(t.provider, t.model, stats, t.state, t.circuit, t.describe())
        rows[row.key] = merge_rows(rows.get(row.key), row)
    return list(rows.values())


def merge_rows(old: HealthHistoryRow | None, new: HealthHistoryRow) -> HealthHistoryRow:
    """``new``, keeping the reasons of both (two rows of the same key)."""
    if old is None:
        return new
    reasons = list(dict.fromkeys(r for r in (old.reason, new.reason) if r))
    return replace(new, reason="; ".join(reasons) or None)
