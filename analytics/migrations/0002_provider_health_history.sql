-- Provider health history: one row per health transition, plus periodic snapshots,
-- written by consumers/sinks/health_history.py from the usage events.
CREATE TABLE provider_health_history (
    provider       VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,      -- '*': the provider as a whole
    window_end     TIMESTAMPTZ NOT NULL,  -- the instant the row describes (event time)
    window_seconds DOUBLE NOT NULL,       -- the stats cover [window_end - window_seconds, window_end]
    attempts       BIGINT NOT NULL,
    failures       BIGINT NOT NULL,
    rate_limited   BIGINT NOT NULL,
    timeouts       BIGINT NOT NULL,
    p50_ms         DOUBLE,                -- latency of successful attempts, nearest rank
    p95_ms         DOUBLE,
    p50_ttft_ms    DOUBLE,
    state          VARCHAR NOT NULL,      -- healthy | degraded | down
    circuit        VARCHAR,               -- closed | open | half_open ('*' rows only)
    reason         VARCHAR,               -- the transition(s) at this instant; NULL: periodic snapshot
    PRIMARY KEY (provider, model, window_end)
);
