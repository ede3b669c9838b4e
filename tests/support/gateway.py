"""Start the real gateway (real adapters) against the five provider simulators, on a real port."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from gateway.api.state import STATE
from gateway.app import create_app
from gateway.eventlog.base import EventLog
from gateway.eventlog.memory import MemoryEventLog
from gateway.ids import Clock
from gateway.pricing.base import PriceBook
from gateway.routing.catalog import KNOWN_PROVIDERS
from gateway.settings import Settings
from gateway.simulators.base import Simulator
from gateway.simulators.registry import make_simulator, provider_settings_for
from tests.support.fakes import RecordingSleep


@dataclass
class RunningGateway:
    url: str
    sims: dict[str, Simulator]
    event_log: Any
    sleep: RecordingSleep
    app: web.Application
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


class Answered:
    """The gateway's answers, counted (does the SDK retry a refusal?)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, _request: web.Request, _response: web.StreamResponse) -> None:
        self.count += 1

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(self)


async def start_app(app: web.Application, host: str = "127.0.0.1", **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free port; ``runner_options`` go to ``web.AppRunner``."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{port}"


@asynccontextmanager
async def running_gateway(
    *,
    providers: tuple[str, ...] = KNOWN_PROVIDERS,
    event_log: EventLog | Literal["settings"] | None = None,
    price_book: PriceBook | None = None,
    settings: dict[str, Any] | None = None,
    installers: list[Any] | None = None,
    clock: Clock | None = None,
    configure: Callable[[web.Application], None] | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[RunningGateway]:
    """``clock`` goes to ``create_app`` (event times, health); ``configure(app)`` runs on the built
    app before it starts (to add routes, app keys, cleanup contexts); ``provider_options`` adds
    to a simulated provider's settings (Azure's ``deployments``)."""
    sims: dict[str, Simulator] = {}
    try:
        for name in providers:
            sim = make_simulator(name)
            await sim.start()
            sims[name] = sim
        provider_settings = {name: provider_settings_for(name, sim) for name, sim in sims.items()}
        for name, options in (provider_options or {}).items():
            provider_settings[name] = provider_settings[name].model_copy(update=options)
        # providers without a simulator are switched off (Ollama needs no key)
        for name in KNOWN_PROVIDERS:
            if name not in sims:
                from gateway.settings import ProviderSettings

                provider_settings[name] = ProviderSettings(enabled=False)
        values: dict[str, Any] = {
            "providers": provider_settings,
            "request_timeout": 2.0,
            "connect_timeout": 1.0,
            "stream_idle_timeout": 2.0,
            "_env_file": None,
        }
        values.update(settings or {})
        config = Settings(**values)
        # "settings": the adapter the settings select (embedded SQLite log or Kafka), as in production
        log = None if event_log == "settings" else event_log if event_log is not None else MemoryEventLog()
        sleep = RecordingSleep()
        clock_arg: dict[str, Any] = {"clock": clock} if clock is not None else {}
        app = create_app(
            config,
            event_log=log,
            price_book=price_book,
            sleep=sleep,
            rng=random.Random(0),
            installers=installers,
            **clock_arg,
        )
        if configure is not None:
            configure(app)
        runner, url = await start_app(app)
        try:
            yield RunningGateway(url, sims, log if log is not None else app[STATE].event_log, sleep, app)
        finally:
            await runner.cleanup()
    finally:
        for sim in sims.values():
            await sim.stop()


def remove_analytics_store(data_dir: Path) -> None:
    """A data dir's DuckDB file and what DuckDB keeps beside it (its WAL, its scratch directory)."""
    import shutil

    from consumers.pipeline import ANALYTICS_FILE

    for path in data_dir.glob(ANALYTICS_FILE + "*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
