-- A full rebuild (`llm-gateway replay --full`) in progress: written before the stores are emptied,
-- deleted once the whole log is in them again. Found by the process that owns this store when it
-- starts, it means the rebuild was cut short (a crash, a kill, a deploy): the stores miss part of
-- the log, and that process runs the rebuild again (consumers/replay_http.py).
CREATE TABLE rebuild_pending (
    started_at TIMESTAMPTZ NOT NULL,
    reprice    BOOLEAN NOT NULL,
    prices     VARCHAR  -- the price file it repriced with, as a JSON document; NULL: the configured one
);
