-- Analytics schema v1: every usage event field, dead letters.
-- (schema_migrations itself is created by the migration runner, analytics/store.py, before
-- it reads which migrations were applied.)

-- One row per provider attempt, keyed by the event id (the idempotency key). Columns are the
-- UsageEvent fields, named as in the event. cost_usd NULL = unpriced (not free); money is
-- DECIMAL(20,10): exact, to 1e-10 USD.
CREATE TABLE usage_facts (
    event_id              VARCHAR PRIMARY KEY,
    schema_version        INTEGER NOT NULL,
    request_id            VARCHAR NOT NULL,
    attempt               INTEGER NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    tenant_id             VARCHAR NOT NULL,
    api_key_id            VARCHAR,
    endpoint              VARCHAR NOT NULL,
    stream                BOOLEAN NOT NULL,
    provider              VARCHAR NOT NULL,
    requested_model       VARCHAR NOT NULL,
    provider_model        VARCHAR NOT NULL,
    served_model          VARCHAR,
    outcome               VARCHAR NOT NULL,
    http_status           INTEGER,
    error_code            VARCHAR,
    error_message         VARCHAR,
    latency_ms            DOUBLE NOT NULL,
    ttft_ms               DOUBLE,
    prompt_tokens         BIGINT NOT NULL,
    completion_tokens     BIGINT NOT NULL,
    cached_tokens         BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    reasoning_tokens      BIGINT NOT NULL,
    total_tokens          BIGINT NOT NULL,
    cost_usd              DECIMAL(20, 10),
    price_version         VARCHAR,
    billable              BOOLEAN NOT NULL,
    incomplete            BOOLEAN NOT NULL,
    gateway_instance      VARCHAR
);

-- Records the projector could not use (undecodable, too new a schema, rejected by a sink),
-- kept byte for byte so they can be replayed once fixed. id = sha256(position, raw): the same
-- record dead-lettered again (redelivery, replay) is kept once.
CREATE TABLE dead_letters (
    id               VARCHAR PRIMARY KEY,
    position         VARCHAR NOT NULL,
    reason           VARCHAR NOT NULL,
    raw              BLOB NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL
);

-- The platform's LLMUsage shape over the facts (snake_case): one row per attempt.
CREATE VIEW llm_usage AS
SELECT
    event_id                               AS id,
    tenant_id,
    provider,
    coalesce(served_model, provider_model) AS model,
    prompt_tokens,
    completion_tokens,
    total_tokens,
    cost_usd,
    created_at,
    request_id,
    attempt,
    outcome,
    requested_model,
    price_version,
    billable,
    incomplete
FROM usage_facts;
