-- The columns the gateway adds to "LLMUsage" say what they hold (SELECT col_description(...),
-- psql's \d+). The platform's own columns and the table itself keep whatever comments the
-- platform gave them. Applying this also marks the database as written by a gateway whose live
-- projector only inserts: an older consumer (whose projector rewrote stored rows, undoing the
-- corrections of `replay --reprice`: an upgrade review) refuses a database with a migration it
-- does not know, instead of reverting them silently.
COMMENT ON COLUMN "LLMUsage"."requestId" IS 'the client request (x-request-id): one request has one attempt per retry and fallback';
COMMENT ON COLUMN "LLMUsage"."attempt" IS 'attempt number within the request, 1-based over all providers';
COMMENT ON COLUMN "LLMUsage"."outcome" IS 'success, rate_limited, overloaded, quota_exhausted, timeout, connection_error, auth_error, model_not_found, upstream_error, malformed_response, client_error, content_filtered, stream_cut or cancelled';
COMMENT ON COLUMN "LLMUsage"."requestedModel" IS 'the model the client asked for';
COMMENT ON COLUMN "LLMUsage"."providerModel" IS 'the model the gateway asked this provider for (its model group''s name there)';
COMMENT ON COLUMN "LLMUsage"."httpStatus" IS 'the provider''s HTTP status, NULL when it never answered';
COMMENT ON COLUMN "LLMUsage"."errorCode" IS 'the provider''s error code (or the gateway''s) of a failed attempt';
COMMENT ON COLUMN "LLMUsage"."latencyMs" IS 'the attempt''s duration, request sent to last byte (ms)';
COMMENT ON COLUMN "LLMUsage"."ttftMs" IS 'time to the first content (ms): a stream''s first chunk, a non-streaming answer''s whole latency';
COMMENT ON COLUMN "LLMUsage"."cachedTokens" IS 'of promptTokens, those read from the provider''s prompt cache';
COMMENT ON COLUMN "LLMUsage"."cacheCreationTokens" IS 'of promptTokens, those written to the provider''s prompt cache (Anthropic)';
COMMENT ON COLUMN "LLMUsage"."reasoningTokens" IS 'of completionTokens, the model''s hidden reasoning (OpenAI reasoning, Gemini thoughts)';
COMMENT ON COLUMN "LLMUsage"."priceVersion" IS 'the prices costUsd was computed with (built-in table, genai-prices, price file versions)';
COMMENT ON COLUMN "LLMUsage"."billable" IS 'the provider bills the attempt (it produced or read tokens); failed attempts it refused are not';
COMMENT ON COLUMN "LLMUsage"."incomplete" IS 'the answer ended early: a stream cut, or the client left';
COMMENT ON COLUMN "LLMUsage"."stream" IS 'the client asked for a stream';
COMMENT ON COLUMN "LLMUsage"."endpoint" IS 'chat.completions or completions';
COMMENT ON COLUMN "LLMUsage"."apiKeyId" IS 'short digest of the gateway key used (never the key); NULL without keys';
COMMENT ON COLUMN "LLMUsage"."gatewayInstance" IS 'the gateway process that made the attempt (NULL unless configured)';
