-- The platform's usage table, projected from usage events (one row per provider attempt).
--
-- Compatible with the platform's existing schema: if "LLMUsage" already exists, it is kept and
-- only the gateway's extra columns are added. "id" is the event id (UUIDv7 text), the
-- idempotency key of the projection. "costUsd" NULL means unpriced (not free); attempts the
-- provider did not bill carry 0. "model" is the served model, else the model asked for.

CREATE TABLE IF NOT EXISTS "LLMUsage" (
    "id"               TEXT PRIMARY KEY,
    "tenantId"         TEXT NOT NULL,
    "provider"         TEXT NOT NULL,
    "model"            TEXT NOT NULL,
    "promptTokens"     INTEGER NOT NULL DEFAULT 0,
    "completionTokens" INTEGER NOT NULL DEFAULT 0,
    "totalTokens"      INTEGER NOT NULL DEFAULT 0,
    "costUsd"          NUMERIC(20, 10),
    "createdAt"        TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE "LLMUsage"
    ADD COLUMN IF NOT EXISTS "requestId"           TEXT,
    ADD COLUMN IF NOT EXISTS "attempt"             INTEGER,
    ADD COLUMN IF NOT EXISTS "outcome"             TEXT,
    ADD COLUMN IF NOT EXISTS "requestedModel"      TEXT,
    ADD COLUMN IF NOT EXISTS "providerModel"       TEXT,
    ADD COLUMN IF NOT EXISTS "httpStatus"          INTEGER,
    ADD COLUMN IF NOT EXISTS "errorCode"           TEXT,
    ADD COLUMN IF NOT EXISTS "latencyMs"           DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS "ttftMs"              DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS "cachedTokens"        INTEGER,
    ADD COLUMN IF NOT EXISTS "cacheCreationTokens" INTEGER,
    ADD COLUMN IF NOT EXISTS "reasoningTokens"     INTEGER,
    ADD COLUMN IF NOT EXISTS "priceVersion"        TEXT,
    ADD COLUMN IF NOT EXISTS "billable"            BOOLEAN,
    ADD COLUMN IF NOT EXISTS "incomplete"          BOOLEAN,
    ADD COLUMN IF NOT EXISTS "stream"              BOOLEAN,
    ADD COLUMN IF NOT EXISTS "endpoint"            TEXT,
    ADD COLUMN IF NOT EXISTS "apiKeyId"            TEXT,
    ADD COLUMN IF NOT EXISTS "gatewayInstance"     TEXT;

CREATE INDEX IF NOT EXISTS "LLMUsage_tenantId_createdAt_idx" ON "LLMUsage" ("tenantId", "createdAt");
CREATE INDEX IF NOT EXISTS "LLMUsage_requestId_idx" ON "LLMUsage" ("requestId");
