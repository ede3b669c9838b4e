"""The event log port (``base``) and its adapters: in-memory, embedded SQLite, Kafka."""
