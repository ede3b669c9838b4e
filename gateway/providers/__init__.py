"""Provider adapters: one module per vendor, all behind the ``Provider`` port in ``base``."""
