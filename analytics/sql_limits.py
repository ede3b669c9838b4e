"""The SQL endpoint's and command's limits, apart from ``analytics.sql`` so that the command line
can offer them without importing DuckDB (every ``llm-gateway`` process builds that parser:
``serve --no-project`` and Kafka mode would carry DuckDB's 13 MB for nothing)."""

DEFAULT_MAX_ROWS = 1_000
MAX_ROWS_LIMIT = 100_000
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
