"""The health view: provider (and provider+model) health projected from attempt events.

``apply(event)`` is the whole input, whether the event comes from the in-process
``UsageRecorder`` (observer) or from a log consumer (another replica's attempts, a replay):
it is idempotent on ``event_id`` and ignores events older than the window. ``gate(provider)``
plugs into ``Router.circuits``. Transitions are logged on ``gateway.health`` with their reason
and handed to ``listeners`` (the history sink). Time comes from the injected ``clock``; windows
are placed by event time, so replicas fed the same events compute the same view.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gateway.events import UsageEvent
from gateway.health.breaker import CircuitBreaker, CircuitChange, CircuitState
from gateway.health.config import HealthSettings
from gateway.health.rules import HealthState, assess, decide
from gateway.health.transitions import HealthTransition
from gateway.health.window import RollingWindow, Sample, WindowStats
from gateway.ids import Clock, utcnow

log = logging.getLogger("gateway.health")

Listener = Callable[[HealthTransition], None]


@dataclass(frozen=True, slots=True)
class ModelHealth:
    provider: str
    model: str
    state: HealthState
    reason: str
    consecutive_failures: int
    stats: WindowStats
    last_transition: HealthTransition | None


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    provider: str
    state: HealthState
    reason: str
    circuit: CircuitState
    consecutive_failures: int
    stats: WindowStats
    opened_at: datetime | None
    retry_at: datetime | None
    cooldown_seconds: float
    probe_in_flight: bool
    last_transition: HealthTransition | None
    models: dict[str, ModelHealth]


class SeenIds:
    """Events counted at a time other than their own, each forgotten once that time is older
    than the window, in the order they came: the view's events stamped ahead of its clock,
    counted as "now" (the provider window, which knows the others, would look for them at
    their own time).

    An event is known by the 64-bit hash of its id (the view's key), not the id: an int in the
    set and 16 bytes in the two ``array`` columns (hash, time)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self._order = array("q")  # the hashes, in arrival order from self._start on
        self._times = array("d")  # their POSIX seconds, aligned with _order
        self._start = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: int) -> bool:
        return key in self.ids

    def add(self, key: int, at: float) -> None:
        self.ids.add(key)
        self._order.append(key)
        self._times.append(at)

    def forget(self, cutoff: float) -> None:
        """Forget ids from the front for as long as their event time is before ``cutoff``."""
        times, start = self._times, self._start
        end = len(times)
        if start == end or times[start] >= cutoff:
            return
        ids, order = self.ids, self._order
        while start < end and times[start] < cutoff:
            ids.discard(order[start])
            start += 1
        if start * 2 >= end:
            del times[:start]
            del order[:start]
            start = 0
        self._start = start


@dataclass(slots=True)
class _Track:
    """One window with its consecutive-failure run and last reported state."""

    window: RollingWindow
    consecutive_failures: int = 0
    state: HealthState = "healthy"
    last_transition: HealthTransition | None = None

    def add(self, sample: Sample, key: int = 0) -> None:
        self.window.add(sample, key)
        if sample.kind == "failure":
            self.consecutive_failures += 1
        elif sample.kind == "success":
            self.consecutive_failures = 0


#: model tracks a provider holds before the idle ones are forgotten (then twice what remained)
MODEL_SWEEP_AT = 64
#: the most model tracks a provider holds at once. Model names are the clients': a burst of
#: made-up names took a track each (about 5 KB, in each of the embedded ``serve``'s two views),
#: a history row each per minute and an entry each in the health API (15,000 names in 20 s:
#: +210 MB of memory, a 6.9 MB health answer; a review). A name met while the provider holds
#: this many active ones counts for the provider alone, until idle ones are forgotten
MAX_MODEL_TRACKS = 256
#: seconds of event time between two sweeps of a provider that holds MAX_MODEL_TRACKS
_FULL_SWEEP_EVERY = 1.0


@dataclass(slots=True)
class _Provider:
    track: _Track
    breaker: CircuitBreaker
    models: dict[str, _Track] = field(default_factory=dict)
    circuit_reason: str = ""
    sweep_at: int = MODEL_SWEEP_AT
    #: when the models may be swept again while they are MAX_MODEL_TRACKS (POSIX seconds)
    full_sweep_after: float = 0.0


class HealthView:
    def __init__(
        self,
        config: HealthSettings | None = None,
        *,
        clock: Clock = utcnow,
        listeners: list[Listener] | None = None,
        log_transitions: bool = True,
        steady: bool = False,
    ) -> None:
        """``log_transitions``: log each transition on ``gateway.health`` (False for a view that
        only feeds its listeners, such as the history sink's, which in the embedded ``serve``
        runs beside the live view: every transition was logged twice). ``steady``: ``clock`` is
        the wall clock, which may step; cool-downs and probe slots are also bounded in real time
        (the live view's; the history's clock is the events' time)."""
        self.config = config or HealthSettings()
        self._log_transitions = log_transitions
        self._steady = steady
        self._clock = clock
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self._span = timedelta(seconds=self.config.window_seconds)
        self._span_seconds = self.config.window_seconds
        self._providers: dict[str, _Provider] = {}
        #: events stamped ahead of the clock (counted as now); the others are known by their
        #: provider's window (``holds``): a set of every id in the window beside it cost about
        #: 100 bytes an event, 18 MB a view at 3,000 events/s
        self._ahead = SeenIds()

    def now(self) -> datetime:
        return self._clock()

    # --- input ------------------------------------------------------------------------------------
    def apply(self, event: UsageEvent) -> bool:
        """Count one attempt; False if it was seen already or is older than the window."""
        now = self._clock()
        now_ts = now.timestamp()
        cutoff = now_ts - self._span_seconds
        at = event.created_at.timestamp()
        key = hash(event.event_id)
        if at < cutoff or self._counted(event.provider, at, key, cutoff):
            return False
        sample = Sample.of(event, at)
        if at > now_ts:
            # stamped ahead of this view's clock (another replica's clock ahead, a clock stepped
            # back): counted as now. Taken as stamped, 5 failures from a replica 50 min ahead
            # opened the circuit on every replica until 50 min later, and the id was kept for as
            # long
            at = now_ts
            sample = replace(sample, t=now, ts=now_ts)
            self._ahead.add(key, at)
        provider = self._provider(event.provider)
        # a cool-down that ended before this event: its half_open transition counts what came
        # before it (it counted this event too, stamped at the cool-down's end: review)
        provider.breaker.tick(now)
        provider.track.add(sample, key)
        model = provider.models.get(event.provider_model)
        if model is None and event.outcome != "model_not_found":  # a name the provider has not
            model = self._new_model(event.provider, provider, event.provider_model, now, cutoff)  # None: full
        if model is not None:
            model.add(sample)
        provider.breaker.observe(sample, now, cutoff)
        # only the provider and this model can change on this event; the other models' states
        # only age, and are refreshed when read (health(), snapshot())
        self._refresh(event.provider, provider, now, only_model=event.provider_model, cutoff=cutoff)
        return True

    def _new_model(self, name: str, provider: _Provider, model: str, now: datetime, cutoff: float) -> _Track | None:
        """A track for ``model``, or None while the provider holds MAX_MODEL_TRACKS active ones
        (the attempt then counts for the provider alone)."""
        models = provider.models
        at = now.timestamp()
        full = len(models) >= MAX_MODEL_TRACKS
        if len(models) >= provider.sweep_at or (full and at >= provider.full_sweep_after):
            # full: also the healthy tracks that only keep a run of failures (a made-up name a
            # provider failed once would hold its place for good)
            _forget_idle_models(provider, cutoff, keep_failing=not full)
            if len(models) >= MAX_MODEL_TRACKS:
                # still full: the idle ones degraded or down, each said so first (kept, 256
                # names that failed five times each held every place for good: a diff review)
                self._forget_idle_failing(name, provider, now, cutoff)
            provider.sweep_at = max(MODEL_SWEEP_AT, 2 * len(models))
            provider.full_sweep_after = at + _FULL_SWEEP_EVERY
        if len(models) >= MAX_MODEL_TRACKS:
            return None
        track = models[model] = _Track(self._window())
        return track

    def _forget_idle_failing(self, name: str, provider: _Provider, now: datetime, cutoff: float) -> None:
        """Forget the provider's model tracks with no attempt in the window that are degraded or
        down, each with a transition to healthy that says why (as a fresh track would say)."""
        for model, track in list(provider.models.items()):
            track.window.evict_before(cutoff)
            if len(track.window) or track.state == "healthy":
                continue
            reason = f"forgotten: no attempt in the window while the provider holds {MAX_MODEL_TRACKS} models"
            stats = track.window.stats(now)
            change = HealthTransition(name, model, now, "state", track.state, "healthy", reason, "healthy", None, stats)
            self._emit(track, change)
            del provider.models[model]

    def has_counted(self, provider: str, at: float, event_id: str) -> bool:
        """Whether the event with this id, provider and ``created_at`` (POSIX seconds) is counted
        in the current window (``apply`` would refuse it)."""
        cutoff = self._clock().timestamp() - self._span_seconds
        return at >= cutoff and self._counted(provider, at, hash(event_id), cutoff)

    def _counted(self, provider: str, at: float, key: int, cutoff: float) -> bool:
        """Whether the event keyed ``key`` (its id's hash) is counted: ahead of the clock, or
        in its provider's window at its time."""
        ahead = self._ahead
        ahead.forget(cutoff)
        if key in ahead:
            return True
        tracked = self._providers.get(provider)
        return tracked is not None and tracked.track.window.holds(at, key)

    def observe(self, event: UsageEvent) -> None:
        """The ``UsageRecorder`` observer: runs on the response path, so it never raises."""
        try:
            self.apply(event)
        except Exception:  # health must never fail a call that already happened
            log.exception("provider health could not apply event %s", event.event_id)

    # --- routing ----------------------------------------------------------------------------------
    def gate(self, provider: str) -> bool:
        """``Router.circuits``: False while the provider's circuit is open (or its one half-open
        probe is in flight)."""
        tracked = self._providers.get(provider)
        if tracked is None or not self.config.circuit_breaker:
            return True
        return tracked.breaker.allow(self._clock())

    def reopens_in(self, provider: str) -> float | None:
        """``Router.circuits``: seconds until the provider's open circuit lets a probe through;
        None when it is not open."""
        tracked = self._providers.get(provider)
        if tracked is None:
            return None
        return tracked.breaker.reopens_in(self._clock())

    def peek(self, provider: str) -> bool:
        """``Router.circuits``: what :meth:`gate` would say now, without taking the half-open probe's
        place."""
        tracked = self._providers.get(provider)
        if tracked is None or not self.config.circuit_breaker:
            return True
        return tracked.breaker.would_allow(self._clock())

    # --- reading ----------------------------------------------------------------------------------
    def providers(self) -> list[str]:
        return sorted(self._providers)

    def health(self, provider: str) -> ProviderHealth:
        now = self._clock()
        tracked = self._providers.get(provider) or _Provider(
            _Track(self._window()), CircuitBreaker(provider, self.config, _ignore)
        )
        tracked.breaker.tick(now)
        self._refresh(provider, tracked, now)
        _forget_idle_models(tracked, (now - self._span).timestamp())
        state, reason, stats = self._provider_state(tracked, now)
        breaker = tracked.breaker
        return ProviderHealth(
            provider=provider,
            state=state,
            reason=reason,
            circuit=breaker.state,
            consecutive_failures=breaker.consecutive_failures,
            stats=stats,
            opened_at=breaker.opened_at,
            retry_at=breaker.retry_at,
            cooldown_seconds=breaker.cooldown_seconds,
            probe_in_flight=breaker.state == "half_open" and breaker.probe_since is not None,
            last_transition=tracked.track.last_transition,
            models={
                name: self._model_health(provider, name, track, now) for name, track in sorted(tracked.models.items())
            },
        )

    def provider_states(self) -> dict[str, tuple[HealthState, CircuitState]]:
        """Each provider's state and circuit now, without the statistics :meth:`health` makes
        (its models' among them): for the metrics' scrape."""
        now = self._clock()
        cutoff = (now - self._span).timestamp()
        states = {}
        for name, tracked in self._providers.items():
            tracked.breaker.tick(now)
            states[name] = (self._quick_provider_state(tracked, cutoff), tracked.breaker.state)
        return states

    def snapshot(self) -> dict[str, ProviderHealth]:
        return {name: self.health(name) for name in self.providers()}

    # --- internals --------------------------------------------------------------------------------
    def _provider(self, name: str) -> _Provider:
        tracked = self._providers.get(name)
        if tracked is None:
            breaker = CircuitBreaker(
                name, self.config, lambda change: self._circuit_changed(name, change), steady=self._steady
            )
            # the provider's window is keyed: it knows which events the view counts
            tracked = self._providers[name] = _Provider(_Track(self._window(keyed=True)), breaker)
        return tracked

    def _window(self, *, keyed: bool = False) -> RollingWindow:
        c = self.config
        return RollingWindow(
            c.window_seconds, latency_limit=c.degraded_p95_latency_ms, ttft_limit=c.degraded_p95_ttft_ms, keyed=keyed
        )

    def _provider_state(self, tracked: _Provider, now: datetime) -> tuple[HealthState, str, WindowStats]:
        stats = tracked.track.window.stats(now)
        if tracked.breaker.state != "closed":
            return "down", f"circuit {tracked.breaker.state}: {tracked.circuit_reason}", stats
        state, reason = assess(
            stats, tracked.breaker.consecutive_failures, self.config, can_be_down=False, previous=tracked.track.state
        )
        return state, reason, stats

    def _quick_provider_state(self, tracked: _Provider, cutoff: float) -> HealthState:
        """The state :meth:`_provider_state` decides, without its snapshot and reason
        (``cutoff``: the window's start, POSIX seconds)."""
        if tracked.breaker.state != "closed":
            return "down"
        window = tracked.track.window
        window.evict_before(cutoff)
        state, _ = decide(
            window, tracked.breaker.consecutive_failures, self.config, can_be_down=False, previous=tracked.track.state
        )
        return state

    def _model_health(self, provider: str, model: str, track: _Track, now: datetime) -> ModelHealth:
        stats = track.window.stats(now)
        state, reason = assess(stats, track.consecutive_failures, self.config, previous=track.state)
        return ModelHealth(provider, model, state, reason, track.consecutive_failures, stats, track.last_transition)

    def _refresh(
        self, name: str, tracked: _Provider, now: datetime, only_model: str | None = None, cutoff: float | None = None
    ) -> None:
        """Emit the state transitions of a provider and its models (or one of them) since the
        last look. ``cutoff``: ``(now - window).timestamp()`` if the caller has it (every window
        of the view has the same span)."""
        if name not in self._providers:
            return
        if cutoff is None:
            cutoff = (now - self._span).timestamp()
        # judged on the live counters first (a few comparisons); the stats snapshot and the
        # reason text are made only for a transition
        if self._quick_provider_state(tracked, cutoff) != tracked.track.state:
            state, reason, stats = self._provider_state(tracked, now)
            previous, tracked.track.state = tracked.track.state, state
            self._emit(
                tracked.track,
                HealthTransition(
                    name, None, now, "state", previous, state, reason, state, tracked.breaker.state, stats
                ),
            )
        if only_model is None:
            models: Iterable[tuple[str, _Track]] = tracked.models.items()
        else:
            track = tracked.models.get(only_model)  # None: not tracked (a 404's name, or too many)
            models = () if track is None else ((only_model, track),)
        for model, track in models:
            track.window.evict_before(cutoff)
            state, _ = decide(track.window, track.consecutive_failures, self.config, previous=track.state)
            if state == track.state:
                continue
            health = self._model_health(name, model, track, now)
            if health.state != track.state:
                previous, track.state = track.state, health.state
                self._emit(
                    track,
                    HealthTransition(
                        name,
                        model,
                        now,
                        "state",
                        previous,
                        health.state,
                        health.reason,
                        health.state,
                        None,
                        health.stats,
                    ),
                )

    def _circuit_changed(self, name: str, change: CircuitChange) -> None:
        tracked = self._providers[name]
        tracked.circuit_reason = change.reason
        state, _, stats = self._provider_state(tracked, self._clock())
        self._emit(
            tracked.track,
            HealthTransition(
                name,
                None,
                change.at,
                "circuit",
                change.previous,
                change.current,
                change.reason,
                state,
                change.current,
                stats,
            ),
        )

    def _emit(self, track: _Track, transition: HealthTransition) -> None:
        track.last_transition = transition
        if self._log_transitions:
            worse = transition.current in ("open", "down", "degraded")
            log.log(logging.WARNING if worse else logging.INFO, "%s", transition.describe())
        for listener in self.listeners:
            listener(transition)


def _ignore(_: CircuitChange) -> None:
    return None


def _forget_idle_models(tracked: _Provider, cutoff: float, *, keep_failing: bool = True) -> None:
    """Drop the model tracks with no attempt in the window and nothing to report (healthy, no
    run of failures): a fresh track would say the same. Model names come from clients (any
    ``gpt-...`` name goes upstream as is), so without this the view kept one track per name
    ever seen, and the health API listed them all. ``keep_failing`` False: also the healthy
    ones that keep a run of failures."""
    idle = []
    for name, track in tracked.models.items():
        if track.state == "healthy" and (not keep_failing or not track.consecutive_failures):
            track.window.evict_before(cutoff)
            if not len(track.window):
                idle.append(name)
    for name in idle:
        del tracked.models[name]
