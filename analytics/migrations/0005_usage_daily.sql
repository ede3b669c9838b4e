-- usage_daily: the daily cost rollup, one row per UTC day, tenant, provider and model, over the
-- billable attempts (the rows v_cost_daily groups). It holds sums, so it is maintained
-- incrementally, in the same transaction as the facts, by the DuckDB sink
-- (consumers/sinks/duckdb.py): a newly inserted fact adds itself; a re-priced fact adds the
-- difference of its cost (and moves between priced and unpriced); a re-delivered, unchanged fact
-- adds nothing; reset() empties both tables. Facts are never deleted one by one, and the columns
-- the rollup groups or sums (other than cost_usd) are never updated, so these sums stay equal to
-- the aggregate of usage_facts (tests/unit/test_usage_daily.py checks it).
--
-- Why: over 10,000,000 facts, v_cost_daily scanned and grouped every row (300-900 ms on 2 cores);
-- over the rollup it reads one row per group. GET /v1/costs takes the totals of whole days from
-- here and only the partial edge days of a window from the facts.

CREATE TABLE usage_daily (
    tenant_id         VARCHAR NOT NULL,
    day               DATE NOT NULL,              -- UTC calendar day of the attempt
    provider          VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,           -- coalesce(served_model, provider_model)
    calls             BIGINT NOT NULL,
    incomplete_calls  BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    tokens            BIGINT NOT NULL,
    cost_usd          DECIMAL(38, 10) NOT NULL,   -- exact, over the priced calls
    unpriced_calls    BIGINT NOT NULL,
    unpriced_tokens   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, provider, model)
);

-- backfill from the facts already there (the same aggregate as REBUILD_DAILY in the sink)
INSERT INTO usage_daily
SELECT
    tenant_id,
    CAST(timezone('UTC', created_at) AS DATE),
    provider,
    coalesce(served_model, provider_model),
    count(*),
    count(*) FILTER (WHERE incomplete),
    coalesce(sum(prompt_tokens), 0),
    coalesce(sum(completion_tokens), 0),
    coalesce(sum(total_tokens), 0),
    coalesce(sum(cost_usd), 0),
    count(*) FILTER (WHERE cost_usd IS NULL),
    coalesce(sum(total_tokens) FILTER (WHERE cost_usd IS NULL), 0)
FROM usage_facts
WHERE billable
GROUP BY ALL;

-- v_cost_daily over the rollup: same columns, same types, same values as 0004's view.
CREATE OR REPLACE VIEW v_cost_daily AS
SELECT
    day,
    tenant_id,
    provider,
    model,
    calls,
    incomplete_calls,
    prompt_tokens,
    completion_tokens,
    tokens,
    cost_usd,
    unpriced_calls,
    unpriced_tokens
FROM usage_daily;

COMMENT ON TABLE usage_daily IS 'Daily cost rollup of usage_facts (billable attempts) per UTC day, tenant, provider and model, kept by the DuckDB sink in the same transaction as the facts; v_cost_daily reads it.';
COMMENT ON VIEW v_cost_daily IS 'Cost and tokens per UTC day, tenant, provider and model. Counts billable attempts only (the usage of GET /v1/costs: successful calls, and streams cut after the provider produced tokens); failed attempts cost nothing and are not here. cost_usd is the exact sum over priced calls; unpriced calls are counted apart (unpriced_calls, unpriced_tokens), never as free.';
COMMENT ON COLUMN v_cost_daily.day IS 'UTC calendar day of the attempt';
COMMENT ON COLUMN v_cost_daily.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN v_cost_daily.calls IS 'billable attempts';
COMMENT ON COLUMN v_cost_daily.incomplete_calls IS 'billable attempts whose stream ended early (cut, or the client left)';
COMMENT ON COLUMN v_cost_daily.tokens IS 'total tokens of the calls, priced or not';
COMMENT ON COLUMN v_cost_daily.cost_usd IS 'exact USD over the priced calls (0 when none is priced)';
COMMENT ON COLUMN v_cost_daily.unpriced_calls IS 'calls without a price (cost_usd NULL in usage_facts): costed by a replay once a price exists';
COMMENT ON COLUMN v_cost_daily.unpriced_tokens IS 'total tokens of the unpriced calls';
