"""Per-tenant spend budgets, derived from the usage events (see :mod:`gateway.budgets.ledger`)."""
