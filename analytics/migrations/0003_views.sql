-- Analytics views: ready-made answers over usage_facts and provider_health_history, for
-- `llm-gateway sql` and POST /v1/analytics/sql. Each view carries its documentation as a
-- DuckDB comment, so it can be read from SQL itself:
--     SELECT view_name, comment FROM duckdb_views() WHERE NOT internal ORDER BY view_name;
--     SELECT column_name, data_type, comment FROM duckdb_columns() WHERE table_name = 'v_cost_daily';
--
-- Conventions: `day` is the UTC calendar day of the attempt (independent of the session time
-- zone); money is exact DECIMAL, summed over priced attempts only (unpriced usage is counted
-- apart, never as free); `model` is the model that served the call (the provider's answer),
-- else the model the gateway asked the provider for; rates are DOUBLE in [0, 1].

CREATE VIEW v_cost_daily AS
SELECT
    CAST(timezone('UTC', created_at) AS DATE)             AS day,
    tenant_id,
    provider,
    coalesce(served_model, provider_model)                AS model,
    count(*)                                              AS calls,
    count(*) FILTER (WHERE incomplete)                    AS incomplete_calls,
    CAST(sum(prompt_tokens) AS BIGINT)                    AS prompt_tokens,
    CAST(sum(completion_tokens) AS BIGINT)                AS completion_tokens,
    CAST(sum(total_tokens) AS BIGINT)                     AS tokens,
    coalesce(sum(cost_usd), 0)                            AS cost_usd,
    count(*) FILTER (WHERE cost_usd IS NULL)              AS unpriced_calls,
    coalesce(CAST(sum(total_tokens) FILTER (WHERE cost_usd IS NULL) AS BIGINT), 0) AS unpriced_tokens
FROM usage_facts
WHERE billable
GROUP BY ALL;

COMMENT ON VIEW v_cost_daily IS 'Cost and tokens per UTC day, tenant, provider and model. Counts billable attempts only (the usage of GET /v1/costs: successful calls, and streams cut after the provider produced tokens); failed attempts cost nothing and are not here. cost_usd is the exact sum over priced calls; unpriced calls are counted apart (unpriced_calls, unpriced_tokens), never as free.';
COMMENT ON COLUMN v_cost_daily.day IS 'UTC calendar day of the attempt';
COMMENT ON COLUMN v_cost_daily.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN v_cost_daily.calls IS 'billable attempts';
COMMENT ON COLUMN v_cost_daily.incomplete_calls IS 'billable attempts whose stream ended early (cut, or the client left)';
COMMENT ON COLUMN v_cost_daily.tokens IS 'total tokens of the calls, priced or not';
COMMENT ON COLUMN v_cost_daily.cost_usd IS 'exact USD over the priced calls (0 when none is priced)';
COMMENT ON COLUMN v_cost_daily.unpriced_calls IS 'calls without a price (cost_usd NULL in usage_facts): costed by a replay once a price exists';
COMMENT ON COLUMN v_cost_daily.unpriced_tokens IS 'total tokens of the unpriced calls';


CREATE VIEW v_requests AS
SELECT
    request_id,
    arg_min(tenant_id, attempt)                           AS tenant_id,
    min(created_at)                                       AS first_attempt_at,
    max(created_at)                                       AS last_attempt_at,
    arg_min(requested_model, attempt)                     AS requested_model,
    count(*)                                              AS attempts,
    count(DISTINCT provider)                              AS providers_tried,
    arg_min(provider, attempt)                            AS first_provider,
    arg_max(provider, attempt)                            AS last_provider,
    arg_max(outcome, attempt)                             AS final_outcome,
    bool_or(outcome = 'success')                          AS served,
    min(attempt) FILTER (WHERE outcome = 'success')       AS served_attempt,
    count(DISTINCT provider) > 1                          AS fell_back,
    count(*) > count(DISTINCT provider)                   AS retried,
    coalesce(sum(cost_usd) FILTER (WHERE billable), 0)    AS cost_usd,
    count(*) FILTER (WHERE billable AND cost_usd IS NULL) AS unpriced_attempts
FROM usage_facts
GROUP BY request_id;

COMMENT ON VIEW v_requests IS 'One row per client request (request_id), from its attempts. fell_back: the request tried more than one provider. retried: some provider was tried more than once (a rate limit retried on the same provider). served_attempt: the attempt number (1-based, over all providers) that succeeded, NULL if none did. Share of requests served by a fallback: SELECT avg(fell_back::INT) FROM v_requests WHERE served.';
COMMENT ON COLUMN v_requests.attempts IS 'provider attempts of the request (retries and fallbacks included)';
COMMENT ON COLUMN v_requests.providers_tried IS 'distinct providers attempted';
COMMENT ON COLUMN v_requests.first_provider IS 'provider of attempt 1';
COMMENT ON COLUMN v_requests.last_provider IS 'provider of the last attempt (the serving one when served)';
COMMENT ON COLUMN v_requests.final_outcome IS 'outcome of the last attempt';
COMMENT ON COLUMN v_requests.served IS 'an attempt succeeded';
COMMENT ON COLUMN v_requests.served_attempt IS 'number of the successful attempt; > 1 means the request needed a retry or a fallback';
COMMENT ON COLUMN v_requests.fell_back IS 'more than one provider was attempted';
COMMENT ON COLUMN v_requests.retried IS 'some provider was attempted more than once';
COMMENT ON COLUMN v_requests.cost_usd IS 'exact USD of the priced billable attempts';


CREATE VIEW v_provider_attempts AS
WITH attempts AS (
    SELECT
        *,
        max(attempt) OVER (PARTITION BY request_id)       AS request_last_attempt,
        max(attempt) OVER (PARTITION BY request_id, provider) AS provider_last_attempt
    FROM usage_facts
),
per_day AS (
    SELECT
        CAST(timezone('UTC', created_at) AS DATE)         AS day,
        provider,
        count(*)                                          AS attempts,
        count(*) FILTER (WHERE outcome = 'success')       AS successes,
        count(*) FILTER (WHERE outcome <> 'success')      AS failures,
        count(*) FILTER (WHERE outcome IN ('overloaded', 'timeout', 'connection_error', 'upstream_error',
                                           'malformed_response', 'stream_cut')) AS provider_failures,
        count(*) FILTER (WHERE outcome = 'rate_limited')  AS rate_limited,
        count(*) FILTER (WHERE outcome = 'timeout')       AS timeouts,
        count(DISTINCT request_id)                        AS requests,
        count(DISTINCT request_id) FILTER (WHERE outcome = 'success') AS served_requests,
        count(DISTINCT request_id) FILTER (WHERE request_last_attempt > provider_last_attempt) AS fallbacks,
        count(*) FILTER (WHERE billable)                  AS billable_attempts,
        CAST(sum(total_tokens) AS BIGINT)                 AS tokens,
        coalesce(sum(cost_usd) FILTER (WHERE billable), 0) AS cost_usd,
        quantile_disc(latency_ms, 0.5) FILTER (WHERE outcome = 'success') AS p50_latency_ms,
        quantile_disc(latency_ms, 0.95) FILTER (WHERE outcome = 'success') AS p95_latency_ms
    FROM attempts
    GROUP BY ALL
)
SELECT
    day, provider, attempts, successes, failures, provider_failures, rate_limited, timeouts,
    requests, served_requests, fallbacks,
    fallbacks / requests                                  AS fallback_rate,
    failures / attempts                                   AS failure_rate,
    billable_attempts, tokens, cost_usd, p50_latency_ms, p95_latency_ms
FROM per_day;

COMMENT ON VIEW v_provider_attempts IS 'Attempts per UTC day and provider, all outcomes (health counts every attempt, costs only billable ones). A request falls back from a provider when, after its last attempt on that provider, the gateway made another attempt on a different provider (the provider failed for good and the next one was tried); retries on the same provider are not fallbacks. fallback_rate = fallbacks / requests: the share of the requests that tried this provider and then left it. Failures by outcome: v_provider_outcomes.';
COMMENT ON COLUMN v_provider_attempts.attempts IS 'every attempt on the provider (successes, failures, retries)';
COMMENT ON COLUMN v_provider_attempts.failures IS 'attempts whose outcome is not success (v_provider_outcomes splits them)';
COMMENT ON COLUMN v_provider_attempts.provider_failures IS 'failures that are the provider''s fault (overloaded, timeout, connection_error, upstream_error, malformed_response, stream_cut): what health counts as errors';
COMMENT ON COLUMN v_provider_attempts.requests IS 'distinct requests with an attempt on the provider that day';
COMMENT ON COLUMN v_provider_attempts.served_requests IS 'requests the provider served (an attempt succeeded)';
COMMENT ON COLUMN v_provider_attempts.fallbacks IS 'requests that left the provider for another one (an attempt on another provider came after its last attempt here)';
COMMENT ON COLUMN v_provider_attempts.fallback_rate IS 'fallbacks / requests';
COMMENT ON COLUMN v_provider_attempts.failure_rate IS 'failures / attempts';
COMMENT ON COLUMN v_provider_attempts.cost_usd IS 'exact USD of the priced billable attempts';
COMMENT ON COLUMN v_provider_attempts.p50_latency_ms IS 'median latency of successful attempts (nearest rank)';
COMMENT ON COLUMN v_provider_attempts.p95_latency_ms IS '95th percentile latency of successful attempts (nearest rank)';


CREATE VIEW v_provider_outcomes AS
SELECT
    CAST(timezone('UTC', created_at) AS DATE)             AS day,
    provider,
    outcome,
    count(*)                                              AS attempts,
    count(DISTINCT request_id)                            AS requests,
    mode(http_status)                                     AS most_common_http_status,
    mode(error_code)                                      AS most_common_error_code
FROM usage_facts
GROUP BY ALL;

COMMENT ON VIEW v_provider_outcomes IS 'Attempts per UTC day, provider and outcome (success, rate_limited, overloaded, quota_exhausted, timeout, connection_error, auth_error, model_not_found, upstream_error, malformed_response, client_error, content_filtered, stream_cut, cancelled): failures by outcome.';


CREATE VIEW v_provider_health_history AS
SELECT
    provider,
    model,
    window_end - to_microseconds(CAST(round(window_seconds * 1000000) AS BIGINT)) AS window_start,
    window_end,
    window_seconds,
    attempts,
    failures,
    rate_limited,
    timeouts,
    CASE WHEN attempts > 0 THEN failures / attempts END   AS failure_rate,
    CASE WHEN attempts > 0 THEN rate_limited / attempts END AS rate_limit_rate,
    p50_ms,
    p95_ms,
    p50_ttft_ms,
    state,
    circuit,
    reason,
    reason IS NOT NULL                                    AS is_transition
FROM provider_health_history;

COMMENT ON VIEW v_provider_health_history IS 'Provider health over time, as the gateways saw it (from provider_health_history, computed from the usage events with event time): one row per transition (is_transition, reason says what changed) and one periodic snapshot per window for every provider with traffic. model = ''*'' is the provider as a whole (it alone has a circuit: closed, open, half_open); state is healthy, degraded or down. The stats cover [window_start, window_end].';
COMMENT ON COLUMN v_provider_health_history.model IS '''*'': the provider as a whole; else one of its models';
COMMENT ON COLUMN v_provider_health_history.failure_rate IS 'failures / attempts in the window (NULL without attempts)';
COMMENT ON COLUMN v_provider_health_history.rate_limit_rate IS 'rate_limited / attempts in the window (NULL without attempts)';
COMMENT ON COLUMN v_provider_health_history.is_transition IS 'a health transition happened at window_end (false: a periodic snapshot)';


CREATE VIEW v_unpriced_usage AS
SELECT
    provider,
    coalesce(served_model, provider_model)                AS model,
    count(*)                                              AS calls,
    count(DISTINCT tenant_id)                             AS tenants,
    CAST(sum(prompt_tokens) AS BIGINT)                    AS prompt_tokens,
    CAST(sum(completion_tokens) AS BIGINT)                AS completion_tokens,
    CAST(sum(total_tokens) AS BIGINT)                     AS tokens,
    min(created_at)                                       AS first_seen,
    max(created_at)                                       AS last_seen,
    list(DISTINCT requested_model ORDER BY requested_model) AS requested_models
FROM usage_facts
WHERE billable AND cost_usd IS NULL
GROUP BY ALL;

COMMENT ON VIEW v_unpriced_usage IS 'Billable usage that has no price yet, per provider and model: what the price table is missing. These calls are not free: add a price (price file) and replay the log to cost them; the rows themselves are SELECT * FROM llm_usage WHERE billable AND cost_usd IS NULL.';
COMMENT ON COLUMN v_unpriced_usage.model IS 'served model, else the model the gateway asked the provider for (the key a price needs)';
COMMENT ON COLUMN v_unpriced_usage.requested_models IS 'the model names clients asked for that led here';
