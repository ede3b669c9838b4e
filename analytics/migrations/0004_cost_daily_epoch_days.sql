-- v_cost_daily, faster: the UTC day is computed as an integer day number (epoch arithmetic) and
-- the rows are grouped on it; it becomes a DATE only after aggregation. Same columns, same
-- values. Measured over 10,000,000 usage rows on 2 cores: the day conversion dominated the view
-- (CAST(timezone('UTC', created_at) AS DATE) per row); integer days are 2-3x faster
-- (python -m tests.bench.analytics).

CREATE OR REPLACE VIEW v_cost_daily AS
SELECT
    CAST(DATE '1970-01-01' + CAST(day_number AS INTEGER) AS DATE) AS day,
    tenant_id, provider, model, calls, incomplete_calls, prompt_tokens, completion_tokens, tokens,
    cost_usd, unpriced_calls, unpriced_tokens
FROM (
    SELECT
        epoch_ms(created_at) // 86400000                      AS day_number,
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
    GROUP BY ALL
);

COMMENT ON VIEW v_cost_daily IS 'Cost and tokens per UTC day, tenant, provider and model. Counts billable attempts only (the usage of GET /v1/costs: successful calls, and streams cut after the provider produced tokens); failed attempts cost nothing and are not here. cost_usd is the exact sum over priced calls; unpriced calls are counted apart (unpriced_calls, unpriced_tokens), never as free.';
COMMENT ON COLUMN v_cost_daily.day IS 'UTC calendar day of the attempt';
COMMENT ON COLUMN v_cost_daily.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN v_cost_daily.calls IS 'billable attempts';
COMMENT ON COLUMN v_cost_daily.incomplete_calls IS 'billable attempts whose stream ended early (cut, or the client left)';
COMMENT ON COLUMN v_cost_daily.tokens IS 'total tokens of the calls, priced or not';
COMMENT ON COLUMN v_cost_daily.cost_usd IS 'exact USD over the priced calls (0 when none is priced)';
COMMENT ON COLUMN v_cost_daily.unpriced_calls IS 'calls without a price (cost_usd NULL in usage_facts): costed by a replay once a price exists';
COMMENT ON COLUMN v_cost_daily.unpriced_tokens IS 'total tokens of the unpriced calls';

