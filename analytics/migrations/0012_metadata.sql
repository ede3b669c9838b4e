-- The call's metadata (cost attribution below the tenant: team, feature, environment, ...): the
-- request's `metadata` pairs and its API key's, as a JSON object of text values. Facts projected
-- before this column existed read '{}': their events carried none. Read a pair with
-- `metadata->>'team'` (the same SQL as on the Postgres "LLMUsage"."metadata" jsonb).
ALTER TABLE usage_facts ADD COLUMN metadata JSON DEFAULT '{}';
COMMENT ON COLUMN usage_facts.metadata IS 'the call''s metadata: a JSON object of text values (the request''s metadata and its API key''s); {} when none. A pair: metadata->>''team''';

-- llm_usage gains the column, as "LLMUsage" has it (a view replaced loses its comments: all again)
CREATE OR REPLACE VIEW llm_usage AS
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
    incomplete,
    metadata
FROM usage_facts;
COMMENT ON VIEW llm_usage IS 'The platform''s LLMUsage shape over usage_facts (snake_case), one row per attempt: what the Postgres "LLMUsage" table holds.';
COMMENT ON COLUMN llm_usage.id IS 'the usage event id';
COMMENT ON COLUMN llm_usage.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN llm_usage.provider IS 'the provider of the attempt';
COMMENT ON COLUMN llm_usage.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN llm_usage.prompt_tokens IS 'input tokens';
COMMENT ON COLUMN llm_usage.completion_tokens IS 'output tokens';
COMMENT ON COLUMN llm_usage.total_tokens IS 'prompt_tokens + completion_tokens';
COMMENT ON COLUMN llm_usage.cost_usd IS 'exact USD; NULL: billable but unpriced';
COMMENT ON COLUMN llm_usage.created_at IS 'when the attempt ended (UTC)';
COMMENT ON COLUMN llm_usage.request_id IS 'the client request';
COMMENT ON COLUMN llm_usage.attempt IS 'attempt number within the request';
COMMENT ON COLUMN llm_usage.outcome IS 'the attempt''s outcome (see usage_facts.outcome)';
COMMENT ON COLUMN llm_usage.requested_model IS 'the model the client asked for';
COMMENT ON COLUMN llm_usage.price_version IS 'the prices the cost was computed with';
COMMENT ON COLUMN llm_usage.billable IS 'the provider bills the attempt';
COMMENT ON COLUMN llm_usage.incomplete IS 'the answer ended early (a stream cut, or the client left)';
COMMENT ON COLUMN llm_usage.metadata IS 'the call''s metadata: a JSON object of text values; {} when none. A pair: metadata->>''team''';

-- Cost per UTC day, tenant and metadata pair: each call counted once under each of its pairs
-- (a call tagged team=search and env=prod is in both rows; summing over one key never counts a
-- call twice). Calls without metadata are not here (v_cost_daily has every call).
CREATE VIEW v_cost_by_metadata AS
SELECT
    CAST(timezone('UTC', f.created_at) AS DATE)           AS day,
    f.tenant_id,
    j.key                                                 AS key,
    j.value->>'$'                                         AS value,
    count(*)                                              AS calls,
    CAST(sum(f.total_tokens) AS BIGINT)                   AS tokens,
    coalesce(sum(f.cost_usd), 0)                          AS cost_usd,
    count(*) FILTER (WHERE f.cost_usd IS NULL)            AS unpriced_calls,
    coalesce(CAST(sum(f.total_tokens) FILTER (WHERE f.cost_usd IS NULL) AS BIGINT), 0) AS unpriced_tokens
FROM usage_facts f, json_each(f.metadata) AS j
WHERE f.billable
GROUP BY ALL;
COMMENT ON VIEW v_cost_by_metadata IS 'Cost and tokens per UTC day, tenant and metadata pair (key, value), over billable attempts: each call once under each of its pairs, so a sum over one key counts a call once. Calls without metadata are not here. cost_usd is the exact sum over priced calls; unpriced calls are counted apart, never as free.';
COMMENT ON COLUMN v_cost_by_metadata.day IS 'UTC calendar day of the attempt';
COMMENT ON COLUMN v_cost_by_metadata.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN v_cost_by_metadata.key IS 'a metadata key of the calls';
COMMENT ON COLUMN v_cost_by_metadata.value IS 'its value';
COMMENT ON COLUMN v_cost_by_metadata.calls IS 'billable attempts';
COMMENT ON COLUMN v_cost_by_metadata.tokens IS 'total tokens of the calls, priced or not';
COMMENT ON COLUMN v_cost_by_metadata.cost_usd IS 'exact USD over the priced calls (0 when none is priced)';
COMMENT ON COLUMN v_cost_by_metadata.unpriced_calls IS 'calls without a price: costed by a replay once a price exists';
COMMENT ON COLUMN v_cost_by_metadata.unpriced_tokens IS 'total tokens of the unpriced calls';
