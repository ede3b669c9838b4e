-- Closed UTC days of usage_facts rewritten in (tenant_id, created_at) order, with their row
-- count at that time (analytics/compaction.py): a day whose count changed since (a late event)
-- is rewritten again.
CREATE TABLE compacted_days (
    day_number   INTEGER PRIMARY KEY,  -- days since 1970-01-01, UTC
    row_count    BIGINT NOT NULL,
    compacted_at TIMESTAMPTZ NOT NULL
);
