"""The audit consumer: JetStream durable → batched, idempotent inserts into PostgreSQL."""
