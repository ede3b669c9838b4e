-- Of the cache writes, those to a cache that lives an hour (Anthropic's ttl "1h"): billed at 2x
-- the input rate instead of the 5-minute write's 1.25x, so they are kept apart for a replay to
-- re-cost. Facts projected before read 0: their events carried no such count. (DuckDB adds no
-- NOT NULL column to a table with an index; the sink always writes a number.)
ALTER TABLE usage_facts ADD COLUMN cache_creation_1h_tokens BIGINT DEFAULT 0;
COMMENT ON COLUMN usage_facts.cache_creation_1h_tokens IS 'of cache_creation_tokens, those written to a cache that lives an hour (Anthropic ttl 1h: 2x the input rate instead of 1.25x)';
