"""Pricing: (provider, model, usage, time) -> exact Decimal USD, or unpriced."""
