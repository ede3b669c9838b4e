-- A store that holds no usage yet (created anew, e.g. its file removed or moved aside) behind an
-- event log that may have been projected before: the group's position lives with the log (the
-- SQLite file's positions, Kafka's committed offsets), not in this store, so the projector went
-- on from that position and every earlier event was missing here (/v1/costs said 0, /healthz ok:
-- an upgrade review). The mark makes the projector read the log from its beginning into this
-- store (its sinks only insert: what the stores hold stays as it is) and is removed once the
-- projector has caught up with the log (consumers/catch_up.py).
CREATE TABLE projection_catch_up (
    marked_at TIMESTAMPTZ NOT NULL
);
INSERT INTO projection_catch_up SELECT now() WHERE NOT EXISTS (SELECT 1 FROM usage_facts);
COMMENT ON TABLE projection_catch_up IS 'A mark while the projector reads the whole event log into a store that held no usage (removed once caught up)';
COMMENT ON COLUMN projection_catch_up.marked_at IS 'when the store was found holding no usage (UTC)';
