"""Settings, read once from the environment (and an optional YAML config file), passed down.

Provider credentials use the variables the official SDKs read (``OPENAI_API_KEY``, ...); the
gateway's own settings use the ``LLM_GATEWAY_`` prefix. Nothing else in the code base reads
``os.environ``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway import strict_json, strict_yaml
from gateway.api.metadata import metadata_problem
from gateway.budgets.config import BudgetSettings
from gateway.database_url import dsn_options
from gateway.eventlog.kafka_connection import TLS_PROTOCOLS, KafkaConnection, SaslMechanism, SecurityProtocol
from gateway.events import INDEXED_TEXT
from gateway.health.config import HealthSettings
from gateway.limits.config import RateLimitSettings
from gateway.providers.upstream_proxy import ProxyRules
from gateway.urls import http_url_problem

DEFAULT_PRIORITY = ["openai", "azure", "anthropic", "google", "ollama"]


#: a path step a model name must not hold (it goes into URLs: Gemini's, Azure's deployments)
_PATH_STEP = re.compile(r"(^|/)\.\.?(/|$)")


def _model_name(value: str, what: str) -> None:
    """A model name in the config file: not empty, no blank at its ends, no control character,
    no ``.``/``..`` path step, ``?`` or ``#`` (a vendor's URL may carry it)."""
    if not value or value != value.strip() or not value.isprintable():
        raise ValueError(f"{what}: {value!r} is not a model name (empty, blank-edged or with a control character)")
    if _PATH_STEP.search(value) or "?" in value or "#" in value or value.startswith("/"):
        raise ValueError(f"{what}: {value!r} is not a model name (a URL path step, '?' or '#')")


class ApiKey(BaseModel):
    """A gateway API key: its calls bill ``tenant``; ``admin`` may act for any tenant."""

    model_config = ConfigDict(extra="forbid")

    #: no blank at its ends: the key a client presents is read without them, so such a key
    #: could never match
    key: str = Field(min_length=1, pattern=r"^\S(.*\S)?$")
    #: at most the longest tenant every store holds (``INDEXED_TEXT``): a longer one made every
    #: call of the key fail to record its usage event; printable, no blank at its ends (what
    #: the API takes as a ``tenantId``)
    tenant: str = Field(min_length=1, max_length=INDEXED_TEXT, pattern=r"^\S(.*\S)?$")
    admin: bool = False
    #: the models the key may ask for: exact names, or prefixes ending in ``*`` (None: any);
    #: ``gateway/api/access.py``
    models: list[str] | None = None
    #: the providers its calls may reach, fallbacks included (None: any): data residency
    providers: list[str] | None = None
    #: metadata pairs on every call of the key, which a call may not change (cost attribution:
    #: ``gateway/api/metadata.py``); as a request's: 16 pairs, keys of 1 to 64 characters, values
    #: of at most 512, printable
    metadata: dict[str, str] | None = None

    @field_validator("models", "providers")
    @classmethod
    def _limits(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        what = info.field_name
        if not value:
            raise ValueError(f"{what}: an empty list allows no call; leave it out to allow every one")
        if what == "providers":
            _known(value)
        for name in value:
            if not name.strip() or name != name.strip() or not name.isprintable() or "*" in name[:-1]:
                raise ValueError(f"{what}: {name!r} is no model name or prefix (a '*' only at its end)")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (problem := metadata_problem(value)) is not None:
            raise ValueError(problem.message)
        return value or None

    @field_validator("key", "tenant")
    @classmethod
    def _printable(cls, value: str) -> str:
        # a key with one could never be sent in a header (re-test)
        if not value.isprintable():
            raise ValueError("must not contain control characters (line breaks, tabs, NUL, ...)")
        return value


class ProviderSettings(BaseModel):
    """Connection settings of one provider, from the SDK variables or the config file."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    #: Azure: requested model -> deployment name (defaults to the model name)
    deployments: dict[str, str] = Field(default_factory=dict)

    @field_validator("deployments")
    @classmethod
    def _deployment_names(cls, value: dict[str, str]) -> dict[str, str]:
        from gateway.pricing.models import normalize_model

        spelled: dict[str, tuple[str, str]] = {}
        for model, deployment in value.items():
            _model_name(model, "deployments")
            _model_name(deployment, f"deployments: {model}")
            # one model under both spellings (``gpt-35-turbo``, ``gpt-3.5-turbo``), to two
            # deployments: the adapter is sent one spelling, so one entry was never used
            other = spelled.setdefault(normalize_model(model), (model, deployment))
            if other[1] != deployment:
                raise ValueError(
                    f"deployments: {other[0]!r} and {model!r} are one model, mapped to {other[1]!r} and {deployment!r}"
                )
        return value

    #: Azure: use the v1 path (/openai/v1/chat/completions) instead of deployment URLs
    use_v1: bool = False
    enabled: bool | None = None
    #: Anthropic: the ``max_tokens`` sent for a request that sets none (Anthropic requires one;
    #: OpenAI's models then write up to their own cap). 4096 by default: Anthropic reserves
    #: ``max_tokens`` against the output-tokens-per-minute limit when a call starts, 8,000 a
    #: minute at its first tier, so each model's cap (64,000) would refuse every such call
    #: there. Capped at the model's own limit.
    default_max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)  # ``true`` is no 1
    #: headers sent on every call to the provider, over the adapter's own of the same name: an
    #: API gateway's subscription key in front of Azure (``Ocp-Apim-Subscription-Key``), a
    #: corporate proxy's token in front of Ollama, Anthropic's ``anthropic-beta`` flags. Names
    #: are kept in lower case; the ones the HTTP exchange owns are refused (:data:`OWN_HEADERS`)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, text in value.items():
            lowered = _header_name(name)
            if lowered in headers:  # which one would be sent? (the last was, silently: a review)
                raise ValueError(f"headers: {lowered} is given twice (names are case-insensitive)")
            headers[lowered] = _header_value(name, text)
        return headers


class _EnvSource(EnvSettingsSource):
    """The environment, its JSON read strictly (:mod:`gateway.strict_json`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        # the base decides whether the field is decoded at all (``NoDecode``): when it is, the
        # text is read again, strictly (once, at start)
        decoded = super().decode_complex_value(field_name, field, value)
        return value if decoded is value else strict_json.loads(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_GATEWAY_", extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment's JSON read strictly (:mod:`gateway.strict_json`), with the options the
        default source was given. (A ``.env`` file, read only when ``_env_file`` names one, is
        not: the gateway names none.)"""
        env = env_settings
        if isinstance(env, EnvSettingsSource):
            env = _EnvSource(
                settings_cls,
                case_sensitive=env.case_sensitive,
                env_prefix=env.env_prefix,
                env_prefix_target=env.env_prefix_target,
                env_nested_delimiter=env.env_nested_delimiter,
                env_nested_max_split=env.env_nested_max_split,
                env_ignore_empty=env.env_ignore_empty,
                env_parse_none_str=env.env_parse_none_str,
                env_parse_enums=env.env_parse_enums,
            )
        return init_settings, env, dotenv_settings, file_secret_settings

    # --- HTTP server ------------------------------------------------------------------------
    host: str | None = None
    port: int = Field(default=8080, ge=0, le=65535)
    #: ``llm-gateway consume``'s analytics API port (where the operator commands look for it)
    consume_port: int = Field(default=8081, ge=0, le=65535)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0)  # images travel as base64 in the body
    config_file: Path | None = Field(default=None, validation_alias=AliasChoices("LLM_GATEWAY_CONFIG", "config_file"))

    # --- routing / retry --------------------------------------------------------------------
    #: ``LLM_GATEWAY_PRIORITY``: a JSON list or comma-separated names (``openai,anthropic``)
    priority: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_PRIORITY))
    #: a vendor's own model (claude-3-haiku, gemini-pro) goes to that vendor first, the rest after
    native_first: bool = True
    retry_attempts: int = Field(default=3, ge=1, le=100)
    retry_initial_wait: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    retry_max_wait: float = Field(default=8.0, ge=0, allow_inf_nan=False)
    #: longest server-requested wait honoured; longer waits fall back at once
    retry_max_server_wait: float = Field(default=20.0, ge=0, allow_inf_nan=False)
    #: total time budget for retry waits of one request, across providers
    retry_budget_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    #: at most a day each (1e300 s was taken: a call never timed out)
    request_timeout: float = Field(default=120.0, gt=0, le=86_400)
    connect_timeout: float = Field(default=5.0, gt=0, le=86_400)
    stream_idle_timeout: float = Field(default=60.0, gt=0, le=86_400)
    #: how long a stop (SIGTERM) lets the calls in flight finish; then they are cancelled, their
    #: attempts recorded ``cancelled``. Keep it under the orchestrator's grace period (Kubernetes
    #: 30 s, ``docker stop`` 10 s by default): its SIGKILL loses the events of calls still running
    shutdown_timeout: float = Field(default=25.0, gt=0, le=86_400)
    #: ``GET /metrics`` takes an admin key (when keys are configured): the metrics name every
    #: model called, fine-tunes included. Prometheus sends one with ``authorization`` in its
    #: scrape config. Off by default: a scraper without a key would get 401s
    metrics_auth: bool = False

    # --- provider health ---------------------------------------------------------------------
    health: HealthSettings = Field(default_factory=HealthSettings)

    # --- tenants ------------------------------------------------------------------------------
    #: spending limits per tenant and UTC day or month (``gateway.budgets``)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    #: requests and tokens a minute per tenant (``gateway.limits``)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    #: a tenant id (an empty one billed calls to a tenant no cost query can name)
    default_tenant: str = Field(default="default", min_length=1, max_length=INDEXED_TEXT, pattern=r"^\S(.*\S)?$")

    # --- events ---------------------------------------------------------------------------------
    data_dir: Path = Path(".llm-gateway")
    topic: str = "llm.usage"
    topic_partitions: int = Field(default=3, ge=1)
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers")
    )
    #: the codec of the gateway's batches on the Kafka topic (``LLM_GATEWAY_KAFKA_COMPRESSION``).
    #: The events are JSON and the topic is kept for good: ``zstd`` took 500 of the tests'
    #: events from 376,749 bytes of the broker's log to 14,880 (generated events, more alike
    #: than real traffic's). Any codec is read, whatever this says (a topic or a cluster may have
    #: the broker compress what it stores)
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    #: how the clients reach the cluster (``gateway/eventlog/kafka_connection.py``): TLS
    #: (``SSL``, ``SASL_SSL``) against ``kafka_ssl_cafile`` (else the system's CAs), a client
    #: certificate for mutual TLS, SASL credentials (``PLAIN``, ``SCRAM-SHA-256``/``512``).
    #: The variables Kafka tools use: ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ...
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol")
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        default="PLAIN", validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism")
    )
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username")
    )
    kafka_sasl_password: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password")
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile")
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile")
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")
    )
    kafka_ssl_key_password: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("KAFKA_SSL_KEY_PASSWORD", "kafka_ssl_key_password")
    )
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    #: names the gateway process in its events and its spool's file: no blank at its ends, no
    #: path separator, printable (``" gw 8 "`` was stored with its blanks; a re-test)
    #: (at most 200: ``spool-<id>.sqlite3.lock`` within a file name's 255 bytes)
    instance_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")
    #: ``serve`` projects the log into the stores in its own process: None (default) does on the
    #: embedded log and does not on Kafka (``consume`` processes do). False on the embedded log
    #: leaves it to ``llm-gateway consume`` run next to the gateway on the same data dir: the
    #: gateway process then holds no DuckDB (``LLM_GATEWAY_PROJECT``, ``serve --no-project``)
    project: bool | None = None
    #: days the embedded log keeps an event once every reader has projected it (None: for good;
    #: ``gateway/eventlog/retention.py``). At least a budget's period and a day (a restart
    #: without its snapshot reads the current periods from the log)
    log_retention_days: int | None = Field(default=None, ge=1, le=36_500)

    # --- analytics store (DuckDB, written by the projector of serve / consume) -----------------
    #: DuckDB's buffer memory in this process: bigger queries spill to disk instead of growing
    #: the gateway (an unbounded DuckDB takes 80% of RAM; a 10M-row COUNT DISTINCT peaked at
    #: 1 GB). ``LLM_GATEWAY_DUCKDB_MEMORY_LIMIT``, DuckDB syntax ("128MB", "2GB").
    duckdb_memory_limit: str | None = Field(default="128MB", pattern=r"(?i)^\s*\d+(\.\d+)?\s*(b|[kmgt]i?b)\s*$")
    #: DuckDB worker threads (default: one per core)
    duckdb_threads: int | None = Field(default=None, ge=1)
    #: where ``llm-gateway export-parquet`` (``POST /v1/analytics/export``) writes the usage facts
    #: as Parquet, one file a UTC day (default: ``<data_dir>/export``); the store may write there
    export_dir: Path | None = None

    # --- provider credentials (the SDKs' own variable names) ----------------------------------
    openai_api_key: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    openai_org_id: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_ORG_ID", "openai_org_id"))
    openai_project_id: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_PROJECT_ID", "openai_project_id")
    )
    azure_openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("AZURE_OPENAI_API_KEY", "azure_openai_api_key")
    )
    azure_openai_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("AZURE_OPENAI_ENDPOINT", "azure_openai_endpoint")
    )
    openai_api_version: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_VERSION", "openai_api_version")
    )
    anthropic_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "anthropic_base_url")
    )
    gemini_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY", "gemini_api_key")
    )
    google_gemini_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_GEMINI_BASE_URL", "google_gemini_base_url")
    )
    ollama_host: str | None = Field(default=None, validation_alias=AliasChoices("OLLAMA_HOST", "ollama_host"))
    #: the HTTP proxy the provider calls go through, as the SDKs and curl read it
    #: (``gateway/providers/upstream_proxy.py``): ``HTTPS_PROXY`` for https providers (a
    #: CONNECT tunnel, TLS end to end), ``HTTP_PROXY`` for http ones, ``NO_PROXY`` the hosts
    #: reached directly (loopback always is)
    #: (the config file's; without it, the variables as curl reads them: :meth:`proxy_rules`)
    https_proxy: str | None = Field(default=None, repr=False)
    http_proxy: str | None = Field(default=None, repr=False)
    no_proxy: str | None = None

    # --- from the config file (or constructor) -------------------------------------------------
    api_keys: list[ApiKey] = Field(default_factory=list)
    #: requested model -> {provider: provider model}; merged over the built-in groups
    model_groups: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: provider -> settings; merged over what the SDK variables give
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    #: path of an operator price file (YAML/JSON), overriding built-in and database prices
    price_file: Path | None = None
    #: seconds between two looks at the price file for changes (0: read at start only)
    price_reload_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("priority must be a JSON list or comma-separated provider names") from None
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: list[str]) -> list[str]:
        _known(value)
        if not value or len(set(value)) != len(value):
            raise ValueError(f"priority must name each provider at most once, and at least one: got {value}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        """A DSN asyncpg takes; anything else was retried forever as a database outage. The
        message leaves the value out (it holds a password)."""
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must be a postgresql:// (or postgres://) URL")
        if value is not None and dsn_options(value).pgbouncer:
            # transaction pooling hands each transaction any server connection: the sink's
            # session settings (search path, idle timeout), which PgBouncer refuses at connect,
            # and its temporary staging table would not follow it
            raise ValueError(
                "DATABASE_URL names a PgBouncer (pgbouncer=true): point it at PostgreSQL itself "
                "(the projection holds at most 2 connections per process)"
            )
        return value

    @field_validator("openai_base_url", "anthropic_base_url", "google_gemini_base_url", "azure_openai_endpoint")
    @classmethod
    def _env_base_url(cls, value: str | None) -> str | None:
        return _http_url(value, bare_host=False)

    @field_validator("ollama_host")
    @classmethod
    def _ollama_host(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("openai_org_id", "openai_project_id")
    @classmethod
    def _openai_header(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Sent as headers: checked at start, in one line without the value (a bad one was a
        traceback printing it when the providers were built: a review)."""
        if value is None:
            return None
        variable = "OPENAI_ORG_ID" if info.field_name == "openai_org_id" else "OPENAI_PROJECT_ID"
        try:
            return _header_value(variable, value)
        except ValueError:
            raise ValueError(f"{variable} has a character HTTP headers cannot carry") from None

    def proxy_rules(self, environ: Mapping[str, str] | None = None) -> ProxyRules:
        """The proxy of the provider calls: the config file's keys, else the variables with
        curl's precedence (``https_proxy`` before ``HTTPS_PROXY``: pydantic's reading took
        whichever came last in the environment; a review). A value the client cannot use is a
        ValueError: ``serve`` refuses to start on it; the operator commands, which call no
        provider, do not read it (a shell's SOCKS proxy stopped ``costs``: a review)."""
        names = os.environ if environ is None else environ

        def read(field: str) -> str | None:
            configured: str | None = getattr(self, field)
            if configured is not None:
                return configured
            lower = names.get(field)  # an empty one is no setting (compose passes an unset one as "")
            return lower if lower and lower.strip() else names.get(field.upper())

        return ProxyRules.from_settings(read("https_proxy"), read("http_proxy"), read("no_proxy"))

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: dict[str, ProviderSettings]) -> dict[str, ProviderSettings]:
        _known(value)
        for name, provider in value.items():
            if provider.default_max_tokens is not None and name != "anthropic":
                # the others' models write up to their own cap without one: it would do nothing
                raise ValueError(f"{name}.default_max_tokens: only anthropic takes it (its API requires max_tokens)")
            if name != "ollama":
                try:
                    _http_url(provider.base_url, bare_host=False)
                except ValueError as e:
                    raise ValueError(f"{name}.base_url: {e}") from None
        return value

    @field_validator("log_retention_days", mode="before")
    @classmethod
    def _days_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML's ``yes`` was taken for 1 day (a review)
            raise ValueError("give a number of days")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """Kafka's security settings make one way to reach a cluster, and its files are there:
        refused at start, not at the first event (the spool would fill, a consumer wait)."""
        connection = self._kafka_connection(self.kafka_bootstrap_servers or "unset")  # raises what is wrong
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if self.kafka_bootstrap_servers and connection.security_protocol in TLS_PROTOCOLS:
            # read to check the files (raises ValueError naming the file): a CA that is no
            # certificate, a wrong key, an encrypted key without its password
            connection.ssl_context  # noqa: B018
        return self

    @model_validator(mode="after")
    def _retention_covers_budgets(self) -> Settings:
        days = self.log_retention_days
        # (with Kafka the setting has no effect: the topic's retention is the operator's)
        if days is not None and self.budgets.enabled and not self.kafka_bootstrap_servers:
            needed = 32 if any(b.period == "month" for b in self.budgets.every_budget()) else 2
            if days < needed:
                raise ValueError(
                    f"log_retention_days {days} is shorter than the budgets' periods: give at least {needed} "
                    "(a restart without the budgets' snapshot reads the current periods from the log)"
                )
        return self

    @field_validator("instance_id")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.isprintable() or "/" in value or "\\" in value):
            raise ValueError("must be printable, without '/' or '\\' (it names the spool's file)")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_names_in_any_case(cls, value: Any) -> Any:
        # Kafka's Java clients take ``sasl_ssl`` as SASL_SSL; it was refused here (a review)
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("data_dir", "config_file", "price_file", "export_dir", mode="before")
    @classmethod
    def _not_empty_path(cls, value: Any) -> Any:
        # an empty LLM_GATEWAY_DATA_DIR put the event log and the cost store in the working
        # directory (and a warning then said to chmod it all); an empty LLM_GATEWAY_CONFIG read
        # "." (a review)
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: unset it for the default, or give a path")
        return value

    @field_validator("model_groups")
    @classmethod
    def _model_groups(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        # a model name a client could not send or a vendor could not take: every call of the
        # group was sent ``model: ""`` (or a path with ``..`` to Gemini's URL) and refused with
        # a 400 that ends the call (a review)
        for name, group in value.items():
            _model_name(name, "a model group's name")
            if not group:
                raise ValueError(f"model group {name!r} names no provider")
            _known(group)
            for provider, model in group.items():
                _model_name(model, f"model group {name!r}: {provider}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _one_tenant_per_key(cls, value: list[ApiKey]) -> list[ApiKey]:
        seen: dict[str, str] = {}
        for entry in value:
            if entry.key in seen:  # even with the same tenant: which entry's ``admin`` would hold?
                raise ValueError(f"an API key is listed more than once (tenants {seen[entry.key]!r}, {entry.tenant!r})")
            seen[entry.key] = entry.tenant
        return value

    def provider(self, name: str) -> ProviderSettings:
        """The effective settings of one provider: SDK variables, then the config file."""
        env = _ENV_PROVIDER_SETTINGS[name](self) if name in _ENV_PROVIDER_SETTINGS else ProviderSettings()
        override = self.providers.get(name)
        if override is None:
            return env
        merged = env.model_dump()
        merged.update({k: v for k, v in override.model_dump(exclude_unset=True).items()})
        merged["headers"] = {**env.headers, **override.headers}  # the file's add to the variables'
        return ProviderSettings(**merged)

    @property
    def kafka(self) -> KafkaConnection:
        """How the Kafka clients reach the cluster (``kafka_bootstrap_servers`` must be set)."""
        if not self.kafka_bootstrap_servers:
            raise ValueError("no Kafka bootstrap servers are configured")
        return self._kafka_connection(self.kafka_bootstrap_servers)

    def _kafka_connection(self, servers: str) -> KafkaConnection:
        return KafkaConnection(
            servers,
            self.kafka_security_protocol,
            self.kafka_sasl_mechanism,
            self.kafka_sasl_username,
            self.kafka_sasl_password,
            None if self.kafka_ssl_cafile is None else str(self.kafka_ssl_cafile),
            None if self.kafka_ssl_certfile is None else str(self.kafka_ssl_certfile),
            None if self.kafka_ssl_keyfile is None else str(self.kafka_ssl_keyfile),
            self.kafka_ssl_key_password,
        )

    @property
    def kafka_compression_type(self) -> str | None:
        """``kafka_compression`` as the Kafka client names it (None: uncompressed)."""
        return None if self.kafka_compression == "none" else self.kafka_compression

    @property
    def admin_key(self) -> str | None:
        """The first admin key configured: what the operator commands (costs, sql, replay)
        present to the running service unless given ``--api-key``."""
        return next((k.key for k in self.api_keys if k.admin), None)

    @property
    def event_instance(self) -> str:
        """What the gateway's usage events name as their process (``gateway_instance``, Postgres
        ``"gatewayInstance"``): ``instance_id``, else the host's name (a Kubernetes pod's, a
        container's). A review found every row NULL with two replicas in Kafka mode: no attempt,
        billed ones of a replica killed among them, could be traced to its replica. (The spool's
        file is named by ``instance_id`` alone, so a data dir keeps its spool across upgrades.)"""
        return self.instance_id or socket.gethostname()[:255] or "localhost"

    @property
    def bind_host(self) -> str:
        """Open (keyless) gateways bind to loopback unless told otherwise."""
        if self.host:
            return self.host
        return "0.0.0.0" if self.api_keys else "127.0.0.1"


def _openai(s: Settings) -> ProviderSettings:
    headers = {}
    if s.openai_org_id:  # the SDK's variables: which organization and project a call bills
        headers["openai-organization"] = s.openai_org_id
    if s.openai_project_id:
        headers["openai-project"] = s.openai_project_id
    return ProviderSettings(api_key=s.openai_api_key, base_url=s.openai_base_url, headers=headers)


def _azure(s: Settings) -> ProviderSettings:
    return ProviderSettings(
        api_key=s.azure_openai_api_key, base_url=s.azure_openai_endpoint, api_version=s.openai_api_version
    )


def _anthropic(s: Settings) -> ProviderSettings:
    return ProviderSettings(api_key=s.anthropic_api_key, base_url=s.anthropic_base_url)


def _google(s: Settings) -> ProviderSettings:
    return ProviderSettings(api_key=s.gemini_api_key, base_url=s.google_gemini_base_url)


def _ollama(s: Settings) -> ProviderSettings:
    return ProviderSettings(base_url=s.ollama_host)


_ENV_PROVIDER_SETTINGS = {
    "openai": _openai,
    "azure": _azure,
    "anthropic": _anthropic,
    "google": _google,
    "ollama": _ollama,
}


#: headers of the exchange itself, which a provider's ``headers`` may not set: the framing and the
#: connection (a second content-length would make the request two), what the adapters ask for
#: per call (``accept``, ``content-type``) and what the client sends on every call
OWN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-connection",
        "content-type",
        "content-encoding",
        "accept",
        "accept-encoding",
        "user-agent",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):  # (match's $ let "x-foo\n" through: a review)
        raise ValueError(f"headers: {name!r} is no HTTP header name")
    lowered = name.lower()
    if lowered in OWN_HEADERS:
        raise ValueError(f"headers: {lowered} is the gateway's own to send")
    return lowered


def _header_value(name: str, value: str) -> str:
    """Printable Latin-1 without line breaks (what HTTP/1.1 carries), trimmed; the message leaves
    the value out (it is often a secret)."""
    text = value.strip()
    if not all(" " <= ch <= "~" or "\xa0" <= ch <= "\xff" or ch == "\t" for ch in text):
        raise ValueError(f"headers: the value of {name!r} has a character HTTP headers cannot carry")
    return text


def _http_url(value: str | None, *, bare_host: bool = True) -> str | None:
    """An upstream base URL is http(s) with a host (Ollama's host may leave the scheme out, as
    its client allows: ``bare_host``): an ``ftp://`` one failed every call as the provider's
    connection error, ``https://`` without a host fell back quietly, and one without a scheme
    (``api.openai.com/v1``, the commonest slip) failed every call. The message leaves the value
    out (a URL can hold a password)."""
    if value and "://" not in value and not bare_host:
        raise ValueError("an upstream URL must start with http:// or https:// (and name a host)")
    if value and "://" in value and http_url_problem(value) is not None:  # https://:443/v1: no host
        raise ValueError("an upstream URL must be http:// or https:// with a host (and a port that is a number)")
    return value


def _known(names: Any) -> None:
    """Provider names are the five the gateway has adapters for: a misspelled one would be
    ignored silently (a provider left enabled, a fallback order not as written)."""
    unknown = sorted({str(n) for n in names} - set(DEFAULT_PRIORITY))
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}: the providers are {', '.join(DEFAULT_PRIORITY)}")


#: documented variables that are no setting: ``compose.yaml`` reads LLM_GATEWAY_SIMULATE itself,
#: the CLI LLM_GATEWAY_LOG_FORMAT (the logs are set up before the settings are read)
_READ_ELSEWHERE = frozenset({"LLM_GATEWAY_SIMULATE", "LLM_GATEWAY_LOG_FORMAT"})


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``LLM_GATEWAY_*`` variables set that are no setting (a misspelled one was ignored
    without a word: a docs review), but for the test suite's ``LLM_GATEWAY_TEST_*``."""
    known = {f"LLM_GATEWAY_{name}".upper() for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            known.update(str(choice).upper() for choice in field.validation_alias.choices)
    known.update(_READ_ELSEWHERE)
    names = os.environ if environ is None else environ
    return sorted(
        name
        for name in names
        if name.upper().startswith("LLM_GATEWAY_")
        and name.upper() not in known
        and not name.upper().startswith("LLM_GATEWAY_TEST_")
    )


#: a config file's relative paths that are read next to it
_FILES_NEXT_TO_THE_CONFIG = ("price_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, then the config file it names (file values win), then overrides."""
    settings = Settings(**overrides)
    if settings.config_file is None:
        return settings
    data = strict_yaml.load(Path(settings.config_file).read_text(), str(settings.config_file)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {settings.config_file} must hold a mapping")
    # ``x-`` keys are the file's own (as in compose files): a place to define YAML anchors
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    unknown = sorted(strict_yaml.shown_key(k) for k in data if k not in Settings.model_fields)
    if unknown:
        raise ValueError(f"config file {settings.config_file}: unknown key(s) {unknown}")
    for name in _FILES_NEXT_TO_THE_CONFIG:
        path = data.get(name)
        if isinstance(path, str) and path.strip() and not Path(path).is_absolute():
            # next to the config file that names it, wherever the gateway is started from (the
            # TLS files were read from the working directory: a review)
            data[name] = Path(settings.config_file).absolute().parent / path
    return Settings(**{**data, **overrides, "config_file": settings.config_file})
