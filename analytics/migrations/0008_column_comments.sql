-- Every column an analyst queries carries its meaning as a DuckDB comment
-- (SELECT table_name, column_name, comment FROM duckdb_columns()): the views' columns that had
-- none (a docs review counted v_provider_outcomes at 0 of 7), and the tables under them.

-- usage_facts: one row per provider attempt (the UsageEvent fields)
COMMENT ON TABLE usage_facts IS 'One row per provider attempt, keyed by the usage event id: every field of the event. cost_usd NULL means unpriced (not free); attempts the provider did not bill cost 0 and are not billable.';
COMMENT ON COLUMN usage_facts.event_id IS 'the usage event id (UUIDv7 text): the idempotency key of the projection';
COMMENT ON COLUMN usage_facts.schema_version IS 'version of the usage event schema the gateway wrote';
COMMENT ON COLUMN usage_facts.request_id IS 'the client request (x-request-id): one request has one attempt per retry and fallback';
COMMENT ON COLUMN usage_facts.attempt IS 'attempt number within the request, 1-based over all providers';
COMMENT ON COLUMN usage_facts.created_at IS 'when the attempt ended and was priced (UTC)';
COMMENT ON COLUMN usage_facts.tenant_id IS 'the tenant billed: the API key''s tenant, or the body''s tenantId (admin keys, or no keys configured)';
COMMENT ON COLUMN usage_facts.api_key_id IS 'short digest of the gateway key used (never the key); NULL without keys';
COMMENT ON COLUMN usage_facts.endpoint IS 'chat.completions or completions';
COMMENT ON COLUMN usage_facts.stream IS 'the client asked for a stream';
COMMENT ON COLUMN usage_facts.provider IS 'openai, azure, anthropic, google or ollama';
COMMENT ON COLUMN usage_facts.requested_model IS 'the model the client asked for';
COMMENT ON COLUMN usage_facts.provider_model IS 'the model the gateway asked this provider for (its model group''s name there)';
COMMENT ON COLUMN usage_facts.served_model IS 'the model the provider says served the answer (a dated snapshot); NULL when it did not say';
COMMENT ON COLUMN usage_facts.outcome IS 'success, rate_limited, overloaded, quota_exhausted, timeout, connection_error, auth_error, model_not_found, upstream_error, malformed_response, client_error, content_filtered, stream_cut or cancelled';
COMMENT ON COLUMN usage_facts.http_status IS 'the provider''s HTTP status, NULL when it never answered';
COMMENT ON COLUMN usage_facts.error_code IS 'the provider''s error code (or the gateway''s) of a failed attempt';
COMMENT ON COLUMN usage_facts.error_message IS 'the failure''s message, at most 500 characters, secrets redacted';
COMMENT ON COLUMN usage_facts.latency_ms IS 'the attempt''s duration, request sent to last byte (ms)';
COMMENT ON COLUMN usage_facts.ttft_ms IS 'time to the first content (ms): a stream''s first chunk, a non-streaming answer''s whole latency; NULL when none came';
COMMENT ON COLUMN usage_facts.prompt_tokens IS 'input tokens the provider reported (cached and cache-write tokens included)';
COMMENT ON COLUMN usage_facts.completion_tokens IS 'output tokens the provider reported (reasoning tokens included)';
COMMENT ON COLUMN usage_facts.cached_tokens IS 'of prompt_tokens, those read from the provider''s prompt cache';
COMMENT ON COLUMN usage_facts.cache_creation_tokens IS 'of prompt_tokens, those written to the provider''s prompt cache (Anthropic)';
COMMENT ON COLUMN usage_facts.reasoning_tokens IS 'of completion_tokens, the model''s hidden reasoning (OpenAI reasoning, Gemini thoughts)';
COMMENT ON COLUMN usage_facts.total_tokens IS 'prompt_tokens + completion_tokens';
COMMENT ON COLUMN usage_facts.cost_usd IS 'exact USD of the attempt at price_version; NULL: billable but unpriced (no price, or usage unknown), never free';
COMMENT ON COLUMN usage_facts.price_version IS 'the prices the cost was computed with (built-in table, genai-prices, price file versions)';
COMMENT ON COLUMN usage_facts.billable IS 'the provider bills the attempt (it produced or read tokens); failed attempts it refused are not';
COMMENT ON COLUMN usage_facts.incomplete IS 'the answer ended early: a stream cut, or the client left';
COMMENT ON COLUMN usage_facts.gateway_instance IS 'the gateway process that made the attempt (NULL unless configured)';

-- llm_usage: the platform's LLMUsage shape
COMMENT ON VIEW llm_usage IS 'The platform''s LLMUsage shape over usage_facts (snake_case), one row per attempt: what the Postgres "LLMUsage" table holds.';
COMMENT ON COLUMN llm_usage.id IS 'the usage event id';
COMMENT ON COLUMN llm_usage.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN llm_usage.provider IS 'the provider of the attempt';
COMMENT ON COLUMN llm_usage.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN llm_usage.prompt_tokens IS 'input tokens';
COMMENT ON COLUMN llm_usage.completion_tokens IS 'output tokens';
COMMENT ON COLUMN llm_usage.total_tokens IS 'prompt_tokens + completion_tokens';
COMMENT ON COLUMN llm_usage.cost_usd IS 'exact USD; NULL: billable but unpriced';
COMMENT ON COLUMN llm_usage.created_at IS 'when the attempt ended (UTC)';
COMMENT ON COLUMN llm_usage.request_id IS 'the client request';
COMMENT ON COLUMN llm_usage.attempt IS 'attempt number within the request';
COMMENT ON COLUMN llm_usage.outcome IS 'the attempt''s outcome (see usage_facts.outcome)';
COMMENT ON COLUMN llm_usage.requested_model IS 'the model the client asked for';
COMMENT ON COLUMN llm_usage.price_version IS 'the prices the cost was computed with';
COMMENT ON COLUMN llm_usage.billable IS 'the provider bills the attempt';
COMMENT ON COLUMN llm_usage.incomplete IS 'the answer ended early (a stream cut, or the client left)';

-- usage_daily: the daily rollup
COMMENT ON TABLE usage_daily IS 'The daily cost rollup of the billable attempts, one row per UTC day, tenant, provider and model, kept in the facts'' transaction (what v_cost_daily reads).';
COMMENT ON COLUMN usage_daily.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN usage_daily.day IS 'UTC calendar day of the attempts';
COMMENT ON COLUMN usage_daily.provider IS 'the provider';
COMMENT ON COLUMN usage_daily.model IS 'served model, else the model the gateway asked the provider for';
COMMENT ON COLUMN usage_daily.calls IS 'billable attempts';
COMMENT ON COLUMN usage_daily.incomplete_calls IS 'billable attempts whose answer ended early';
COMMENT ON COLUMN usage_daily.prompt_tokens IS 'input tokens of the calls';
COMMENT ON COLUMN usage_daily.completion_tokens IS 'output tokens of the calls';
COMMENT ON COLUMN usage_daily.tokens IS 'total tokens of the calls, priced or not';
COMMENT ON COLUMN usage_daily.cost_usd IS 'exact USD over the priced calls';
COMMENT ON COLUMN usage_daily.unpriced_calls IS 'calls without a price';
COMMENT ON COLUMN usage_daily.unpriced_tokens IS 'total tokens of the unpriced calls';

-- provider_health_history
COMMENT ON TABLE provider_health_history IS 'Provider health over time, computed from the usage events with event time: a row per transition (reason set) and a periodic snapshot per window (reason NULL). v_provider_health_history reads it with rates added.';
COMMENT ON COLUMN provider_health_history.provider IS 'the provider';
COMMENT ON COLUMN provider_health_history.model IS '''*'': the provider as a whole; else one of its models';
COMMENT ON COLUMN provider_health_history.window_end IS 'the instant the row describes (event time)';
COMMENT ON COLUMN provider_health_history.window_seconds IS 'the stats cover [window_end - window_seconds, window_end]';
COMMENT ON COLUMN provider_health_history.attempts IS 'attempts in the window';
COMMENT ON COLUMN provider_health_history.failures IS 'attempts that failed by the provider''s fault';
COMMENT ON COLUMN provider_health_history.rate_limited IS 'attempts refused with a rate limit';
COMMENT ON COLUMN provider_health_history.timeouts IS 'attempts that timed out';
COMMENT ON COLUMN provider_health_history.p50_ms IS 'median latency of the successful attempts (nearest rank)';
COMMENT ON COLUMN provider_health_history.p95_ms IS '95th percentile latency of the successful attempts (nearest rank)';
COMMENT ON COLUMN provider_health_history.p50_ttft_ms IS 'median time to first token of the successful streams';
COMMENT ON COLUMN provider_health_history.state IS 'healthy, degraded or down';
COMMENT ON COLUMN provider_health_history.circuit IS 'closed, open or half_open (the provider as a whole only; NULL for a model)';
COMMENT ON COLUMN provider_health_history.reason IS 'what changed and why (a transition); NULL for a periodic snapshot';

-- v_cost_daily
COMMENT ON COLUMN v_cost_daily.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN v_cost_daily.provider IS 'the provider';
COMMENT ON COLUMN v_cost_daily.prompt_tokens IS 'input tokens of the calls';
COMMENT ON COLUMN v_cost_daily.completion_tokens IS 'output tokens of the calls';

-- v_requests
COMMENT ON COLUMN v_requests.request_id IS 'the client request (x-request-id)';
COMMENT ON COLUMN v_requests.tenant_id IS 'the tenant billed';
COMMENT ON COLUMN v_requests.first_attempt_at IS 'when the first attempt ended';
COMMENT ON COLUMN v_requests.last_attempt_at IS 'when the last attempt ended';
COMMENT ON COLUMN v_requests.requested_model IS 'the model the client asked for';
COMMENT ON COLUMN v_requests.unpriced_attempts IS 'billable attempts without a price (cost_usd leaves them out)';

-- v_provider_attempts
COMMENT ON COLUMN v_provider_attempts.day IS 'UTC calendar day of the attempts';
COMMENT ON COLUMN v_provider_attempts.provider IS 'the provider';
COMMENT ON COLUMN v_provider_attempts.successes IS 'attempts that succeeded';
COMMENT ON COLUMN v_provider_attempts.rate_limited IS 'attempts refused with a rate limit';
COMMENT ON COLUMN v_provider_attempts.timeouts IS 'attempts that timed out';
COMMENT ON COLUMN v_provider_attempts.billable_attempts IS 'attempts the provider bills';
COMMENT ON COLUMN v_provider_attempts.tokens IS 'total tokens of the attempts';

-- v_provider_outcomes
COMMENT ON COLUMN v_provider_outcomes.day IS 'UTC calendar day of the attempts';
COMMENT ON COLUMN v_provider_outcomes.provider IS 'the provider';
COMMENT ON COLUMN v_provider_outcomes.outcome IS 'the attempts'' outcome (see usage_facts.outcome)';
COMMENT ON COLUMN v_provider_outcomes.attempts IS 'attempts with this outcome';
COMMENT ON COLUMN v_provider_outcomes.requests IS 'distinct requests with such an attempt';
COMMENT ON COLUMN v_provider_outcomes.most_common_http_status IS 'the most frequent HTTP status of these attempts (NULL: none answered)';
COMMENT ON COLUMN v_provider_outcomes.most_common_error_code IS 'the most frequent error code of these attempts';

-- v_provider_health_history
COMMENT ON COLUMN v_provider_health_history.provider IS 'the provider';
COMMENT ON COLUMN v_provider_health_history.window_start IS 'start of the window the stats cover';
COMMENT ON COLUMN v_provider_health_history.window_end IS 'the instant the row describes (event time)';
COMMENT ON COLUMN v_provider_health_history.window_seconds IS 'window_end - window_start, in seconds';
COMMENT ON COLUMN v_provider_health_history.attempts IS 'attempts in the window';
COMMENT ON COLUMN v_provider_health_history.failures IS 'attempts that failed by the provider''s fault';
COMMENT ON COLUMN v_provider_health_history.rate_limited IS 'attempts refused with a rate limit';
COMMENT ON COLUMN v_provider_health_history.timeouts IS 'attempts that timed out';
COMMENT ON COLUMN v_provider_health_history.p50_ms IS 'median latency of the successful attempts (nearest rank)';
COMMENT ON COLUMN v_provider_health_history.p95_ms IS '95th percentile latency of the successful attempts (nearest rank)';
COMMENT ON COLUMN v_provider_health_history.p50_ttft_ms IS 'median time to first token of the successful streams';
COMMENT ON COLUMN v_provider_health_history.state IS 'healthy, degraded or down';
COMMENT ON COLUMN v_provider_health_history.circuit IS 'closed, open or half_open (the provider as a whole only; NULL for a model)';
COMMENT ON COLUMN v_provider_health_history.reason IS 'what changed and why (a transition); NULL for a periodic snapshot';

-- v_unpriced_usage
COMMENT ON COLUMN v_unpriced_usage.provider IS 'the provider';
COMMENT ON COLUMN v_unpriced_usage.calls IS 'billable attempts without a price';
COMMENT ON COLUMN v_unpriced_usage.tenants IS 'distinct tenants of those calls';
COMMENT ON COLUMN v_unpriced_usage.prompt_tokens IS 'input tokens of those calls';
COMMENT ON COLUMN v_unpriced_usage.completion_tokens IS 'output tokens of those calls';
COMMENT ON COLUMN v_unpriced_usage.tokens IS 'total tokens of those calls';
COMMENT ON COLUMN v_unpriced_usage.first_seen IS 'the first such call';
COMMENT ON COLUMN v_unpriced_usage.last_seen IS 'the last such call';
