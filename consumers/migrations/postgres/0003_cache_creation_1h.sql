-- Of the cache writes, those to a cache that lives an hour: Anthropic bills them at 2x the input
-- rate, the 5-minute writes at 1.25x, so a replay re-costs them apart. Rows projected before
-- this column existed read NULL: their events carried no such count.
ALTER TABLE "LLMUsage" ADD COLUMN IF NOT EXISTS "cacheCreation1hTokens" INTEGER;
COMMENT ON COLUMN "LLMUsage"."cacheCreation1hTokens" IS 'of cacheCreationTokens, those written to a cache that lives an hour (Anthropic ttl 1h: 2x the input rate instead of 1.25x)';
