"""Sinks: idempotent projections of usage events (DuckDB, Postgres LLMUsage, health history)."""
