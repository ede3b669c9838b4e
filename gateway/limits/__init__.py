"""Per-tenant rate limits: requests and tokens a minute (``rate_limits`` in the settings)."""
