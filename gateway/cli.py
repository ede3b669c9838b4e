"""``llm-gateway``: serve, simulate, and the operator commands. Reads settings once, runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import yaml

from gateway.errors import GatewayError
from gateway.json_log import FORMATS, LOG_FORMAT_ENV, say, use_json
from gateway.runtime import Termination, listening_socket, quiet_accept_errors, tune_gc, tune_logging
from gateway.settings import Settings, load_settings, unknown_environment
from gateway.startup import startup_failure, warn_if_open, warn_if_readable
from gateway.strict_json import DuplicateKey

if TYPE_CHECKING:
    from gateway.simulators.base import Simulator

log = logging.getLogger("gateway")


class _RateLimit(logging.Filter):
    """Let each distinct message template of ``prefix`` loggers through once per ``seconds``."""

    def __init__(self, prefix: str, seconds: float) -> None:
        super().__init__()
        self.prefix = prefix
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        if not record.name.startswith(self.prefix):
            return True
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


def _configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if log_format == "json":
        use_json()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiokafka logs a connection error every ~100 ms while a broker is down; the spool already
    # warns with its depth, so keep one line per message per 30 s
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RateLimit("aiokafka", 30.0))


#: requests a simulator started from the CLI keeps (for nothing but debugging)
SIMULATED_REQUESTS_KEPT = 1000


def simulated(settings: Settings, providers: Iterable[str]) -> list[str]:
    """The providers ``serve --simulate`` simulates: all but those the configuration turns off
    (``enabled: false``; they were simulated and served all the same: a docs review)."""
    return [name for name in providers if settings.provider(name).enabled is not False]


async def _start_simulators(settings: Settings, providers: list[str]) -> tuple[Settings, list[Simulator]]:
    from gateway.simulators.registry import make_simulator, provider_settings_for

    sims: list[Simulator] = []
    overrides = dict(settings.providers)
    for name in providers:
        sim = make_simulator(name, max_requests=SIMULATED_REQUESTS_KEPT)
        await sim.start()
        sims.append(sim)
        # the simulator's address and key, the rest as configured (deployments, headers, the
        # api-version: they were dropped, so a configuration could not be tried on them: a review)
        endpoint = provider_settings_for(name, sim)
        update = {"api_key": endpoint.api_key, "base_url": endpoint.base_url}
        overrides[name] = settings.provider(name).model_copy(update=update)
        log.info("simulated %s listening on %s", name, sim.base_url)
    return settings.model_copy(update={"providers": overrides}), sims


async def _serve(settings: Settings, simulate: bool) -> None:
    from aiohttp import web

    from gateway.api.drain import CANCELLED, RUNNER_BACKSTOP
    from gateway.api.state import STATE
    from gateway.app import create_app
    from gateway.server import server_installers

    sims: list[Simulator] = []
    if simulate:
        from gateway.routing.catalog import KNOWN_PROVIDERS

        settings, sims = await _start_simulators(settings, simulated(settings, KNOWN_PROVIDERS))
    quiet_accept_errors(asyncio.get_running_loop())
    sock = listening_socket(settings.bind_host, settings.port)  # a taken port fails before anything opens
    app = create_app(settings, installers=server_installers(settings))
    # the app drains its requests within the shutdown timeout itself (gateway/api/drain.py)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=RUNNER_BACKSTOP)
    stopping = False
    terminated = Termination()  # a SIGTERM during the start stops the gateway once it has
    try:
        # inside the try: a start that fails half-way (a DuckDB file another process holds)
        # must still close what it opened; asyncio.run tore the generators down instead, with
        # an ERROR traceback before the one-line reason
        await runner.setup()
        await web.SockSite(runner, sock).start()
        log.info("llm-gateway listening on http://%s:%s", settings.bind_host, sock.getsockname()[1])
        warn_if_open(bool(settings.api_keys), settings.bind_host, "gateway")
        warn_if_readable(settings.data_dir)
        await terminated.wait()
        stopping = True
    finally:
        await runner.cleanup()
        for sim in sims:
            await sim.stop()
    lost = app[STATE].event_log.lost() if STATE in app else 0
    if lost:
        # the data dir refused them to the end (a full disk): not "their events are on the log"
        log.error(
            "llm-gateway stopped: %d usage event(s) of answered calls could not be written (the data dir "
            "refused them to the end: a full disk?); each is in an ERROR line above, not on the log",
            lost,
        )
        raise SystemExit(1)
    # events a Kafka spool keeps for the next start are stored, not on the log: the line above
    # said "left in the spool" and this one "on the log" (a review)
    left = app[STATE].event_log.pending() if STATE in app else 0
    where = "on the log" if not left else f"stored ({left} of them in the spool, sent at the next start)"
    if stopping and CANCELLED in app and app[CANCELLED]:  # a log alone tells a clean stop from a kill (a review)
        log.info(
            "llm-gateway stopped: %d call(s) still running after the shutdown timeout were cancelled; "
            "every call's events are %s",
            app[CANCELLED],
            where,
        )
    elif stopping:
        log.info("llm-gateway stopped: the calls in flight finished and their events are %s", where)


async def _simulate(host: str, port: int) -> None:
    from gateway.routing.catalog import KNOWN_PROVIDERS
    from gateway.simulators.registry import SIMULATED_KEY, SIMULATORS, make_simulator

    env_names = {
        "openai": ("OPENAI_BASE_URL", "OPENAI_API_KEY"),
        "azure": ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"),
        "anthropic": ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
        "google": ("GOOGLE_GEMINI_BASE_URL", "GEMINI_API_KEY"),
        "ollama": ("OLLAMA_HOST", None),
    }
    sims = []
    lines = []
    try:
        for offset, name in enumerate(KNOWN_PROVIDERS):
            sim = make_simulator(name, max_requests=SIMULATED_REQUESTS_KEPT)
            await sim.start(host, port + offset if port else 0)
            sims.append(sim)
            url_var, key_var = env_names[name]
            lines.append(f"export {url_var}={SIMULATORS[name].base_url.format(url=sim.base_url)}")
            if key_var:
                lines.append(f"export {key_var}={SIMULATED_KEY}")
        # printed once all five listen: a later port taken left the first lines on stdout for an
        # ``eval`` to take, pointing providers at simulators that were gone (a re-test)
        print("\n".join(lines), flush=True)
        await asyncio.Event().wait()
    finally:
        for sim in sims:
            await sim.stop()


def _env_json_error(exc: BaseException) -> str | None:
    """pydantic-settings' "error parsing value for field "budgets" from source
    "EnvSettingsSource"" named neither the variable nor what is wrong: the variable, and where
    its JSON breaks (the decoder's position, never the value: it may hold a key)."""
    found = re.search(r'field "(\w+)" from source "(?:EnvSettingsSource|_EnvSource)"', str(exc))
    if found is None:
        return None
    cause = exc.__cause__
    if isinstance(cause, DuplicateKey):  # (a key's name, not a value)
        return f"LLM_GATEWAY_{found.group(1).upper()} is refused: {cause}"
    where = f": {cause}" if isinstance(cause, json.JSONDecodeError) else ""
    return f"LLM_GATEWAY_{found.group(1).upper()} is not valid JSON{where}"


def config_error(exc: BaseException) -> str:
    """What is wrong with the configuration, without the values given: pydantic's text quotes
    each bad input, and an ``api_keys`` entry or a provider's settings hold secrets (a review saw
    38 of a 49-character admin key on stderr)."""
    from pydantic import ValidationError
    from yaml import MarkedYAMLError

    if isinstance(exc, MarkedYAMLError):
        # where and what, not PyYAML's snippet of the file: the lines around a syntax error are
        # the api_keys entry it is in (a review saw an admin key on stderr)
        parts = []
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
            if text:
                parts.append(
                    text if mark is None else f'{text} in "{mark.name}", line {mark.line + 1}, column {mark.column + 1}'
                )
        return "; ".join(parts)
    if not isinstance(exc, ValidationError):
        return _env_json_error(exc) or str(exc)
    from gateway.strict_yaml import shown_key

    def where(loc: tuple[int | str, ...]) -> str:
        # a location's parts are settings' names and list indexes, but an unknown key's is the
        # operator's text, which may be an API key written as a mapping's key (re-test);
        # "[key]" is pydantic's mark of a mapping's key itself
        return ".".join(str(p) if isinstance(p, int) or p == "[key]" else shown_key(p) for p in loc) or "(settings)"

    def hint(loc: tuple[int | str, ...], kind: str) -> str:
        # a tenant id YAML read as a number (``123:``, ``tenant: 123``) or a bool (``yes:``)
        tenant_key = len(loc) == 4 and loc[1] == "tenants" and loc[3] == "[key]"
        key_tenant = len(loc) == 3 and loc[0] == "api_keys" and loc[2] == "tenant"
        budget_tenant = len(loc) == 4 and loc[:2] == ("budgets", "metadata") and loc[3] == "tenant"
        if kind != "string_type":
            return ""
        if tenant_key or key_tenant or budget_tenant:
            return " (a tenant id is text: quote it)"
        # a key's metadata or a budget's pairs YAML read as a number, a bool or a date
        # (``cost_center: 0042``, a key ``0042:`` read as the octal 34)
        key_pairs = len(loc) >= 4 and loc[0] == "api_keys" and loc[2] == "metadata"
        if key_pairs or (len(loc) >= 5 and loc[:2] == ("budgets", "metadata") and loc[3] == "match"):
            return " (metadata keys and values are text: quote a number, a date or yes/no, as '0042')"
        return ""

    problems = [
        f"{where(error['loc'])}: {error['msg']}{hint(error['loc'], error['type'])}"
        for error in exc.errors(include_input=False, include_url=False)
    ]
    return f"{len(problems)} problem(s): " + "; ".join(problems)


def _host(value: str) -> str:
    """``simulate --host``: not empty (the URLs it printed had no host: ``http://:46900``)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give an address such as 127.0.0.1")
    return value


def _first_port(value: str) -> int:
    """``simulate --port``: the first of five ports, so at most 65531 (a bad one was a traceback)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if port != 0 and not 1 <= port <= 65535 - 4:
        raise argparse.ArgumentTypeError(f"{port} is not 0 or a first port from 1 to 65531 (five ports follow)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        help="text lines, or one JSON object a line with the cost line's values as fields "
        "(default: LLM_GATEWAY_LOG_FORMAT, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (embedded event log and cost store by default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--config", help="YAML config file (api keys, model groups, providers, prices; default: LLM_GATEWAY_CONFIG)"
    )
    serve.add_argument(
        "--simulate", action="store_true", help="serve every provider from built-in simulators (no API keys)"
    )
    serve.add_argument(
        "--no-project",
        dest="project",
        action="store_false",
        default=None,
        help="no projector in this process: run `llm-gateway consume` on the same data dir for the cost store",
    )

    simulate = sub.add_parser("simulate", help="run the five provider simulators and print the env vars to use them")
    simulate.add_argument("--host", type=_host, default="127.0.0.1")
    simulate.add_argument("--port", type=_first_port, default=0, help="first port (the next four follow); 0 = any")

    from gateway.commands import register_commands

    register_commands(sub)
    # every command that reads the settings takes the config file as `serve` does: the operator
    # commands found no admin key in it, with a `serve --config` beside them (a docs review)
    for name, command in sub.choices.items():
        if name not in ("serve", "simulate"):
            command.add_argument("--config", help="YAML config file (default: LLM_GATEWAY_CONFIG)")
    return parser


def _asks_json(argv: Sequence[str]) -> bool:
    """Whether the command line or the environment asks for JSON logs, read before argparse."""
    given = list(argv)
    for i, arg in enumerate(given):
        if arg == "--log-format" and i + 1 < len(given):
            return given[i + 1].lower() == "json"
        if arg.startswith("--log-format="):
            return arg.partition("=")[2].lower() == "json"
    return os.environ.get(LOG_FORMAT_ENV, "").strip().lower() == "json"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s arguments; with JSON logs asked, a refused command line is one JSON line (it
    was argparse's usage and error in text, the one thing the log pipeline got from the start)."""
    given = sys.argv[1:] if argv is None else argv
    if not _asks_json(given):
        return parser.parse_args(given)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser.parse_args(given)
    except SystemExit as exc:
        if exc.code:
            _configure_logging("INFO", "json")
            say(said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else "llm-gateway: bad arguments")
        else:
            sys.stderr.write(said.getvalue())
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    log_format = args.log_format or os.environ.get(LOG_FORMAT_ENV, "text").strip().lower() or "text"
    if log_format not in FORMATS:
        parser.error(f"{LOG_FORMAT_ENV}={log_format!r}: choose from {', '.join(FORMATS)}")
    _configure_logging(args.log_level, log_format)
    tune_logging()
    tune_gc()
    # the files it creates (the event log, the cost store, spools) hold tenants' usage and the
    # vendors' error texts: for its own user only (a review read them, 0644, as any local user)
    os.umask(0o077)
    if args.command == "simulate":
        try:
            asyncio.run(_simulate(args.host, args.port))
        except KeyboardInterrupt:
            pass
        except (OSError, OverflowError) as exc:  # a port taken or past 65535, a host unknown
            print(f"llm-gateway simulate: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "config_file": getattr(args, "config", None),
            "project": getattr(args, "project", None),
        }.items()
        if v is not None
    }
    for name in unknown_environment():
        say(f"llm-gateway: warning: {name} is set but is no setting (ignored; misspelled?)", logging.WARNING)
    try:
        settings = load_settings(**overrides)
        if args.command == "serve":
            settings.proxy_rules()  # a proxy the calls cannot use stops the start
        if settings.price_file is not None:  # read now: a bad price file is a bad configuration
            from gateway.pricing.pricefile import load_price_file

            load_price_file(settings.price_file)
    except (ValueError, OSError, yaml.YAMLError, GatewayError) as exc:  # ValidationError is a ValueError
        say(f"llm-gateway: invalid configuration: {config_error(exc)}")
        return 2
    if args.command == "serve":
        try:
            asyncio.run(_serve(settings, args.simulate))
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            if (reason := startup_failure(exc)) is None:
                raise
            say(f"llm-gateway serve: cannot start: {reason}")
            return 1
        return 0
    from gateway.commands import run_command

    try:
        return run_command(args, settings)
    except BrokenPipeError:  # `llm-gateway costs ... | head -1`: the reader left, not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor a second one at exit
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
