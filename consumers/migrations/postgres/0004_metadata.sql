-- The call's metadata (cost attribution below the tenant: team, feature, environment, ...): the
-- request's `metadata` pairs and its API key's, a JSON object of text values. Rows projected
-- before this column existed read '{}': their events carried none. A platform table that has a
-- "metadata" column already keeps its own, and its comment (jsonb, json or text all take the
-- sink's JSON text). Cost per team: SELECT "metadata"->>'team', sum("costUsd") FROM "LLMUsage" GROUP BY 1.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass('"LLMUsage"') AND attname = 'metadata' AND NOT attisdropped
    ) THEN
        ALTER TABLE "LLMUsage" ADD COLUMN "metadata" JSONB NOT NULL DEFAULT '{}'::jsonb;
        COMMENT ON COLUMN "LLMUsage"."metadata" IS 'the call''s metadata: a JSON object of text values (the request''s metadata and its API key''s); {} when none';
    END IF;
END
$$;
