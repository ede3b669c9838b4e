"""The commands' garbage-collector and logging settings (gateway/runtime.py)."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.runtime import GC_THRESHOLDS, SecondCachedFormatter, tune_gc, tune_logging


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_the_thresholds_and_freezes_what_exists() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # far fewer young collections than CPython's default
    assert gc.get_freeze_count() > 0
    assert survivor  # frozen objects stay alive and usable


@pytest.mark.usefixtures("restore_gc", "restore_logging")
def test_every_command_runs_with_tuned_logging_and_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "tune_logging", lambda: calls.append("logging"))
    monkeypatch.setattr(cli, "tune_gc", lambda: calls.append("gc"))
    import gateway.commands

    monkeypatch.setattr(gateway.commands, "run_command", lambda args, settings: calls.append(args.command) or 0)
    assert cli.main(["costs", "--tenant", "t"]) == 0
    assert calls == ["logging", "gc", "costs"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    import logging

    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    handlers = [(h, h.formatter) for h in logging.getLogger().handlers]
    yield
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved
    for handler, formatter in handlers:
        handler.setFormatter(formatter)


def test_second_cached_formatter_prints_utc_iso_times(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import time
    from datetime import UTC, datetime

    monkeypatch.setenv("TZ", "America/New_York")  # the local time is not what it prints
    time.tzset()
    try:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        cached = SecondCachedFormatter(fmt)
        # within one second, across a second, back again, and a far date: every line the instant's
        for created in (1_764_400_000.001, 1_764_400_000.999, 1_764_400_001.5, 1_764_400_000.25, 1_900_000_000.0):
            record = logging.LogRecord("gateway.cost", logging.INFO, "x.py", 1, "Cost | %s", ("t",), None)
            record.created, record.msecs = created, (created - int(created)) * 1000
            at = datetime.fromtimestamp(created, UTC)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"
            assert cached.format(record) == f"{stamp} INFO gateway.cost: Cost | t"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    custom, standard = SecondCachedFormatter(fmt, datefmt="%H:%M"), logging.Formatter(fmt, datefmt="%H:%M")
    standard.converter = time.gmtime
    assert custom.format(record) == standard.format(record)


@pytest.mark.usefixtures("restore_logging")
def test_tune_logging_keeps_the_lines_and_drops_the_caller_lookup() -> None:
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        tune_logging()
        assert isinstance(handler.formatter, SecondCachedFormatter)
        assert logging._srcfile is None and not logging.logThreads
        logging.getLogger("gateway.cost").warning("Cost | tenant=%s cost=%s", "t1", "$0.000150")
    finally:
        root.removeHandler(handler)
    line = stream.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING gateway.cost: Cost \| tenant=t1 cost=\$0.000150\n", line
    )


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("LLM_GATEWAY_DUCKDB_MEMORY_LIMIT", "lots", "duckdb_memory_limit"),
        ("LLM_GATEWAY_PORT", "abc", "port"),
        # a JSON setting names the variable and where its JSON breaks (pydantic-settings said
        # "error parsing value for field "budgets" from source "EnvSettingsSource"")
        ("LLM_GATEWAY_BUDGETS", "{bad", "LLM_GATEWAY_BUDGETS is not valid JSON: Expecting property name"),
        ("LLM_GATEWAY_HEALTH", "", "LLM_GATEWAY_HEALTH is not valid JSON: Expecting value"),
        ("LLM_GATEWAY_BUDGETS", '{"default": {"usd": 12.5}}', 'as a string, e.g. usd: "12.5"'),
        # a key given twice is refused, as in a config file (json kept the last one silently)
        (
            "LLM_GATEWAY_BUDGETS",
            '{"metadata": [{"match": {"team": "a", "team": "b"}, "usd": "1"}]}',
            "LLM_GATEWAY_BUDGETS is refused: the key 'team' is given twice in one object",
        ),
        (
            "LLM_GATEWAY_RATE_LIMITS",
            '{"tenants": {"acme": {"requests_per_minute": 1}, "acme": {"requests_per_minute": 9}}}',
            "LLM_GATEWAY_RATE_LIMITS is refused: the key 'acme' is given twice",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["costs", "--tenant", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-gateway: invalid configuration:") and named in err and "Traceback" not in err


@pytest.mark.usefixtures("restore_gc", "restore_logging")
def test_a_missing_config_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(tmp_path / "absent.yaml"))
    assert cli.main(["costs", "--tenant", "t"]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def assert_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str, named: str
) -> None:
    """``config`` (``{dir}``: tmp_path) as the config file: the CLI refuses it in one message."""
    path = tmp_path / "gw.yaml"
    path.write_text(config.replace("{dir}", str(tmp_path)), encoding="utf-8")
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(path))
    assert cli.main(["costs", "--tenant", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-gateway: invalid configuration:") and named in err and "Traceback" not in err


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("price_file: {dir}/absent-prices.yaml\n", "absent-prices.yaml"),
        ("price_file: {dir}/prices.yaml\n", "input_per_1k"),  # a price file with a negative price
        ("request_timeout: -1\n", "request_timeout"),  # every call timed out at once
        ("connect_timeout: 0\n", "connect_timeout"),
        ("retry_attempts: 0\n", "retry_attempts"),
        ("max_body_bytes: -1\n", "max_body_bytes"),  # every request was a 413
        ("unknown_key: 1\n", "unknown_key"),  # ignored silently
        # a tenant id YAML reads as a number: it said "<a key not shown: it may be a secret>" (a review)
        (
            "rate_limits: {tenants: {123: {requests_per_minute: 5}}}\n",
            "tenants.123.[key]: Input should be a valid string (a tenant id is text: quote it)",
        ),
        ("budgets: {tenants: {yes: {usd: '1'}}}\n", "(a tenant id is text: quote it)"),
        ("api_keys: [{key: sk-a, tenant: 123}]\n", "api_keys.0.tenant: Input should be a valid string (a tenant id"),
        # a key's metadata YAML reads as a number, a bool or a date (a review)
        (
            "api_keys: [{key: sk-a, tenant: t, metadata: {cost_center: 0042}}]\n",
            "api_keys.0.metadata.cost_center: Input should be a valid string (metadata keys and values are text",
        ),
        ("api_keys: [{key: sk-a, tenant: t, metadata: {since: 2026-01-01}}]\n", "(metadata keys and values are text"),
        ("api_keys: [{key: sk-a, tenant: t, metadata: {0042: x}}]\n", "(metadata keys and values are text"),
        ("api_keys: [{key: sk-a, tenant: t, metadata: {team: 'a\tb'}}]\n", "must be printable"),
        # a budget's pairs and tenant alike
        (
            "budgets: {metadata: [{match: {cost_center: 0042}, usd: '1'}]}\n",
            "budgets.metadata.0.match.cost_center: Input should be a valid string (metadata keys and values are text",
        ),
        ("budgets: {metadata: [{match: {0042: x}, usd: '1'}]}\n", "(metadata keys and values are text"),
        ("budgets: {metadata: [{match: {a: b}, tenant: 7, usd: '1'}]}\n", "(a tenant id is text: quote it)"),
        ("rate_limits: {default: {requests_per_minute: 0}}\n", "rate_limits.default.requests_per_minute"),
        ("priority: [openai\n", 'gw.yaml", line 1'),  # PyYAML named it "<unicode string>"
        ("providers: {ollama: {enbled: false}}\n", "enbled"),  # the typo left Ollama enabled
        ("providers: {bogus: {enabled: false}}\n", "bogus"),
        ("priority: [openai, bogus]\n", "bogus"),
        ("priority: [openai, openai]\n", "at most once"),
        ("priority: []\n", "at least one"),
        ("model_groups: {gpt-4o: {bogus: x}}\n", "bogus"),  # a traceback after start-up
        ("api_keys: [{key: '', tenant: t}]\n", "api_keys"),
        ("api_keys: [{key: sk-a, tenant: ''}]\n", "api_keys"),
        ("api_keys: [{key: sk-a, tenant: t1}, {key: sk-a, tenant: t2}]\n", "more than once"),  # who pays?
        # the last entry won, so the key was silently an admin (or not) by the order (review)
        ("api_keys: [{key: sk-a, tenant: t1}, {key: sk-a, tenant: t1, admin: true}]\n", "more than once"),
        ("api_keys: [{key: ' sk-a', tenant: t}]\n", "api_keys.0.key"),  # a client's key is read without its blanks
        ("api_keys: [{key: sk-a, tenant: '   '}]\n", "api_keys.0.tenant"),
        ('api_keys: [{key: sk-a, tenant: "a\\tb"}]\n', "control characters"),
        ('api_keys: [{key: "sk-a\\x01b", tenant: t}]\n', "api_keys.0.key"),
        ("api_keys: [{key: sk-a, tenant: t, extra: 1}]\n", "extra"),
        # accepted before, each misbehaving at run time (an operator review):
        ("topic_partitions: 0\n", "topic_partitions"),  # the topic was never created
        ("database_url: notaurl\n", "postgresql://"),  # retried forever as a database outage
        ("providers: {openai: {base_url: 'ftp://x'}}\n", "http://"),  # every call a connection error
        ("default_tenant: ''\n", "default_tenant"),  # billed to a tenant no query can name
        ("request_timeout: .inf\n", "request_timeout"),
        ("retry_budget_seconds: .nan\n", "retry_budget_seconds"),
        ("health: {window_seconds: .inf}\n", "window_seconds"),  # a traceback at start
        ("health: {window_seconds: 1.0e+15}\n", "window_seconds"),
        ("health: {cooldown_seconds: 1.0e+15}\n", "cooldown_seconds"),  # the projector failed later
        ("request_timeout: 1.0e+300\n", "request_timeout"),  # a call never timed out
        ("retry_attempts: 1000000000\n", "retry_attempts"),
        ("default_tenant: '   '\n", "default_tenant"),
        # stored with its blanks in every event's gatewayInstance (a re-test); a '/' in the spool's name
        ("instance_id: ' gw 8 '\n", "instance_id"),
        ("instance_id: 'eu/2'\n", "without '/'"),
        # longer than any store's index holds: every call's usage event was refused
        ("default_tenant: " + "t" * 513 + "\n", "default_tenant"),
        ("api_keys: [{key: sk-a, tenant: " + "t" * 513 + "}]\n", "api_keys"),
        ("providers: {openai: {base_url: 'https://'}}\n", "with a host"),  # fell back quietly
        # no scheme: every call a connection error (a docs review)
        ("providers: {openai: {base_url: 'api.openai.com/v1'}}\n", "start with http://"),
        ("providers: {anthropic: {base_url: 'localhost:8080'}}\n", "start with http://"),
        ("providers: {openai: {base_url: 'https://:443/v1'}}\n", "with a host"),  # a port, no host (re-test)
        # a port that is no number: refused by --url and image URLs, taken here (a diff review)
        ("providers: {openai: {base_url: 'https://api.openai.com:abc/v1'}}\n", "a port that is a number"),
    ],
)
def test_a_configuration_that_would_misbehave_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str, named: str
) -> None:
    (tmp_path / "prices.yaml").write_text(
        "version: v1\nprices:\n  - {model: my-ft, input_per_1k: '-0.1', output_per_1k: '0.2'}\n", encoding="utf-8"
    )
    assert_refused(monkeypatch, capsys, tmp_path, config, named)


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize(
    ("config", "prices", "named"),
    [
        ("priority: [openai]\npriority: [anthropic]\n", None, "'priority' is given twice"),
        ("providers:\n  ollama: {enabled: false}\n  ollama: {enabled: true}\n", None, "'ollama' is given twice"),
        ("price_file: {dir}/prices.yaml\n", "version: v1\nversion: v2\nprices: []\n", "'version' is given twice"),
    ],
)
def test_a_key_given_twice_in_an_operators_file_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config: str,
    prices: str | None,
    named: str,
) -> None:
    """PyYAML keeps the last of two equal keys silently: one of the operator's two lines was
    ignored without a word."""
    if prices is not None:
        (tmp_path / "prices.yaml").write_text(prices, encoding="utf-8")
    assert_refused(monkeypatch, capsys, tmp_path, config, named)


@pytest.mark.usefixtures("restore_gc", "restore_logging")
def test_a_pgbouncer_url_is_refused_at_start_saying_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prisma's ``pgbouncer=true`` was dropped and the URL taken: transaction pooling cannot
    carry the sink's session settings and temporary staging table. Refused in one line."""
    for url in (
        "postgresql://u:s3cr3t-pw@pool:6432/app?connection_limit=1&pgbouncer=true",
        "postgresql://u:s3cr3t-pw@pool:6432/app?pgbouncer=%74rue#x",  # as the URL's reader decodes it
    ):
        monkeypatch.setenv("DATABASE_URL", url)
        assert cli.main(["costs", "--tenant", "t"]) == 2
        err = capsys.readouterr().err
        assert "PgBouncer" in err and "s3cr3t" not in err


@pytest.mark.usefixtures("restore_gc", "restore_logging")
def test_a_database_url_refused_is_not_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://gw:s3cr3t-pw@db/gw")
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://files.example")
    assert cli.main(["costs", "--tenant", "t"]) == 2
    err = capsys.readouterr().err
    assert "postgresql://" in err and "s3cr3t" not in err
    # OLLAMA_HOST was taken at start and crashed the first use, its password in the traceback
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.setenv("OLLAMA_HOST", "ftp://u:S3CRETPW@h:1")
    assert cli.main(["costs", "--tenant", "t"]) == 2
    err = capsys.readouterr().err
    assert "http://" in err and "S3CRETPW" not in err and "Traceback" not in err


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize("variable", ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "AZURE_OPENAI_ENDPOINT"])
def test_an_upstream_url_without_a_scheme_is_refused_but_ollamas_host_may_leave_it_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    """``OPENAI_BASE_URL=api.openai.com/v1`` started, and every call failed as the provider's
    connection error (a docs review); ``OLLAMA_HOST=host:port`` is Ollama's own form."""
    from gateway.settings import Settings

    monkeypatch.setenv(variable, "api.example.com/v1")
    assert cli.main(["costs", "--tenant", "t"]) == 2
    assert "start with http://" in capsys.readouterr().err
    monkeypatch.delenv(variable)
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434")
    assert Settings(_env_file=None).ollama_host == "gpu-box:11434"  # type: ignore[call-arg]
    assert (
        Settings(_env_file=None, providers={"ollama": {"base_url": "gpu-box"}}).provider("ollama").base_url == "gpu-box"
    )  # type: ignore[call-arg]


def test_a_misspelled_gateway_variable_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``LLM_GATEWAY_PRIORTY`` was ignored without a word, where an unknown key in the config
    file is refused (a docs review); the known ones and the tests' own are not named."""
    from gateway.settings import unknown_environment

    environ = {
        "LLM_GATEWAY_PRIORTY": "anthropic",
        "LLM_GATEWAY_PRIORITY": "openai",
        "llm_gateway_port": "1",
        "LLM_GATEWAY_CONFIG": "x",
        "LLM_GATEWAY_HEALTH": "{}",
        "LLM_GATEWAY_TEST_KAFKA": "k",
        "LLM_GATEWAY_SIMULATE": "1",  # compose.yaml's own (re-test)
        "OPENAI_API_KEY": "k",
    }
    assert unknown_environment(environ) == ["LLM_GATEWAY_PRIORTY"]
    monkeypatch.setenv("LLM_GATEWAY_PRIORTY", "anthropic")
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", "/nonexistent/gw.yaml")  # stops it right after the warning
    assert cli.main(["costs", "--tenant", "t"]) == 2
    assert "LLM_GATEWAY_PRIORTY is set but is no setting" in capsys.readouterr().err


def test_the_priority_variable_takes_a_json_list_or_comma_separated_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLM_GATEWAY_PRIORITY=openai,anthropic`` was an error that did not say JSON was expected."""
    from gateway.settings import Settings

    for value in ("openai,anthropic", " openai , anthropic ", '["openai", "anthropic"]'):
        monkeypatch.setenv("LLM_GATEWAY_PRIORITY", value)
        assert Settings(_env_file=None).priority == ["openai", "anthropic"]  # type: ignore[call-arg]
    monkeypatch.setenv("LLM_GATEWAY_PRIORITY", "[openai")
    with pytest.raises(ValueError, match="JSON list or comma-separated"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_relative_price_file_is_found_next_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was resolved against the working directory: `serve --config cfg/gateway.yaml` started
    from elsewhere failed with "cannot read the price file"."""
    from gateway.settings import load_settings

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "gateway.yaml").write_text("price_file: prices.yaml\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config_file="../cfg/gateway.yaml", _env_file=None)
    assert settings.price_file is not None and settings.price_file.resolve() == (tmp_path / "cfg" / "prices.yaml")


def test_relative_kafka_tls_files_are_found_next_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the price file: they were read from the working directory (a review)."""
    import subprocess

    from gateway.settings import load_settings

    cfg = tmp_path / "cfg"
    (cfg / "tls").mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cfg / "tls" / "client.key",
         "-out", cfg / "tls" / "client.pem", "-days", "1", "-subj", "/CN=client"],
        check=True, capture_output=True,
    )  # fmt: skip
    (cfg / "gateway.yaml").write_text(
        "kafka_bootstrap_servers: k1:9093\nkafka_security_protocol: SSL\nkafka_ssl_cafile: tls/client.pem\n"
        "kafka_ssl_certfile: tls/client.pem\nkafka_ssl_keyfile: tls/client.key\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config_file="cfg/gateway.yaml", _env_file=None)
    kafka = settings.kafka
    assert (kafka.ssl_cafile, kafka.ssl_keyfile) == (str(cfg / "tls" / "client.pem"), str(cfg / "tls" / "client.key"))


def test_anchors_and_merge_keys_still_work() -> None:
    from gateway import strict_yaml

    assert strict_yaml.load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n") == {
        "base": {"x": 1, "y": 2},
        "other": {"x": 1, "y": 3},
    }


def test_a_config_files_x_keys_hold_anchors(tmp_path: Path) -> None:
    """Top-level ``x-`` keys are the file's own (a place to define anchors, as in compose
    files): ignored, while any other unknown key is still refused."""
    from gateway.settings import load_settings

    path = tmp_path / "gw.yaml"
    path.write_text("x-timeouts: &t 7\nrequest_timeout: *t\nconnect_timeout: *t\n", encoding="utf-8")
    settings = load_settings(config_file=str(path), _env_file=None)
    assert (settings.request_timeout, settings.connect_timeout) == (7, 7)
    path.write_text("base: &t 7\nrequest_timeout: *t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['base'\]"):
        load_settings(config_file=str(path), _env_file=None)


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize(
    "config",
    [
        "api_keys:\n  - key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a\n    admin: true\n",  # no tenant
        "api_keys:\n"  # the same key twice
        "  - {key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a, tenant: a}\n"
        "  - {key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a, tenant: b}\n",
        "providers:\n  openai:\n    api_key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a\n    apikey: x\n",
        # YAML syntax errors: PyYAML's message quotes the lines around the error (review)
        "api_keys:\n  - {key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a, tenant: t1, admin: true\n",
        "api_keys:\n  - key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a\n"
        "    key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1b\n",
        "api_keys:\n  - key: sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a\n   tenant: t\n",
        # keys written as a mapping's keys: unknown keys, named in the error (re-test)
        "api_keys:\n  - {sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a: t}\n",
        "sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a: t\n",
        "providers:\n  openai: {sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a: x}\n",
        "api_keys:\n  - {sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a: x,\n"
        "     sk-gw-adm-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a: y}\n",
    ],
)
def test_a_bad_configuration_never_prints_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str
) -> None:
    """pydantic's message quotes the bad input: 38 of a 49-character admin key reached stderr."""
    path = tmp_path / "gw.yaml"
    path.write_text(config, encoding="utf-8")
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(path))
    assert cli.main(["costs", "--tenant", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-gateway: invalid configuration:") and (
        "api_key" in err.replace("apikey", "api_key") or 'gw.yaml", line' in err or "not shown" in err
    )
    assert "4f9a8b" not in err and "4d3e2f1a" not in err and "sk-gw" not in err


async def test_out_of_file_descriptors_is_logged_once_in_a_while(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio logs every failed accept with its traceback: thousands of clients holding
    half-sent requests made 807 MB of log in two minutes. Once per 10 s now, with a count."""
    from gateway.runtime import quiet_accept_errors

    loop = asyncio.get_running_loop()
    now = [100.0]
    previous = loop.get_exception_handler()
    quiet_accept_errors(loop, clock=lambda: now[0])
    try:
        context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
        for _ in range(1000):
            loop.call_exception_handler(context)
        now[0] += 11
        loop.call_exception_handler(context)
        loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(previous)
    mine = [r.getMessage() for r in caplog.records if r.name == "gateway"]
    assert len(mine) == 2 and "(999 more like it in the last 11 s)" in mine[1]
    assert any("something else" in r.getMessage() for r in caplog.records if r.name == "asyncio")


@pytest.mark.usefixtures("restore_gc", "restore_logging")
@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_consume_refuses_a_batch_size_that_projects_nothing(capsys: pytest.CaptureFixture[str], size: str) -> None:
    """``--batch-size 0`` made a consumer that said ``ok`` and never applied an event."""
    with pytest.raises(SystemExit) as info:
        cli.main(["consume", "--batch-size", size])
    assert info.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_a_keyless_service_beyond_loopback_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.startup import warn_if_open

    warn_if_open(False, "127.0.0.1", "consumer")
    warn_if_open(True, "0.0.0.0", "consumer")
    assert caplog.records == []
    warn_if_open(False, "0.0.0.0", "consumer")
    [record] = caplog.records
    assert record.levelname == "WARNING" and "consumer listens on 0.0.0.0" in record.getMessage()
    assert "start replays" in record.getMessage()


def test_serve_simulate_leaves_out_the_providers_the_configuration_turns_off() -> None:
    """``serve --simulate --config`` with the README's ``ollama: {enabled: false}`` simulated
    Ollama and served calls with it (a docs review)."""
    from gateway.cli import simulated
    from gateway.routing.catalog import KNOWN_PROVIDERS
    from gateway.settings import Settings

    off = Settings(_env_file=None, providers={"ollama": {"enabled": False}, "azure": {"enabled": True}})  # type: ignore[call-arg]
    assert simulated(off, KNOWN_PROVIDERS) == [p for p in KNOWN_PROVIDERS if p != "ollama"]
    assert simulated(Settings(_env_file=None), KNOWN_PROVIDERS) == list(KNOWN_PROVIDERS)  # type: ignore[call-arg]


async def test_a_sigterm_during_the_start_stops_the_server_once_started() -> None:
    """The handler was installed after the start: a SIGTERM while ``consume`` joined its group
    killed it (exit 143, no LeaveGroup; its partitions unprojected for 12 s, a re-test)."""
    import os
    import signal

    from gateway.runtime import Termination

    terminated = Termination()  # before the start
    assert terminated.handled  # else the signal below would end this test run
    os.kill(os.getpid(), signal.SIGTERM)  # during the start
    await asyncio.sleep(0.05)
    await asyncio.wait_for(terminated.wait(), 2)  # returns at once, once started


async def test_serve_simulate_keeps_the_rest_of_each_providers_configuration() -> None:
    """The simulators take the providers' addresses and keys; the deployments, headers and
    api-version configured stay (they were dropped: a configuration could not be tried on the
    simulators; a review)."""
    from gateway.cli import _start_simulators
    from gateway.settings import Settings

    configured = Settings(  # type: ignore[call-arg]
        _env_file=None,
        providers={
            "azure": {"deployments": {"gpt-4o": "prod-gpt4o"}, "headers": {"Ocp-Apim-Subscription-Key": "k" * 32}},
            "anthropic": {"default_max_tokens": 1000, "api_key": "sk-ant-real"},
        },
    )
    settings, sims = await _start_simulators(configured, ["azure", "anthropic"])
    try:
        azure, anthropic = settings.provider("azure"), settings.provider("anthropic")
        assert azure.deployments == {"gpt-4o": "prod-gpt4o"}
        assert azure.headers == {"ocp-apim-subscription-key": "k" * 32}
        assert azure.base_url == sims[0].base_url and anthropic.base_url == sims[1].base_url
        assert anthropic.default_max_tokens == 1000
        assert anthropic.api_key != "sk-ant-real"  # the simulator's: a real key never goes to it
    finally:
        for sim in sims:
            await sim.stop()


def test_the_environment_is_read_as_pydantic_settings_reads_it_its_json_strictly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gateway's own environment source (strict JSON) keeps the default source's reading:
    names in any case, a comma list where JSON is not decoded, an alias, options given at init."""
    monkeypatch.setenv("llm_gateway_priority", "anthropic,openai")
    monkeypatch.setenv("Llm_Gateway_Budgets", '{"default": {"usd": "5"}}')
    monkeypatch.setenv("LLM_GATEWAY_CONFIG", str(tmp_path / "gw.yaml"))
    monkeypatch.setenv("OTHER_PORT", "9999")
    from gateway.settings import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.priority == ["anthropic", "openai"] and settings.config_file == tmp_path / "gw.yaml"
    assert settings.budgets.default is not None and settings.budgets.default.usd == 5
    assert Settings(_env_file=None, _env_prefix="OTHER_").port == 9999  # type: ignore[call-arg]
