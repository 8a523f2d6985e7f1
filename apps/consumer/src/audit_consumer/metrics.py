"""Prometheus metrics of a consumer worker, served on ``/metrics`` of its probe port.

Bounded labels only (``result`` has three values). ``audit_consumer_lag_messages`` is what KEDA
scales on: the durable's ``num_pending + num_ack_pending``, polled from JetStream.
"""

from prometheus_client import Counter, Gauge, Histogram, Info

RESULTS = ("stored", "duplicate", "dead_lettered")
MESSAGES = Counter(
    "audit_consumer_messages_total",
    "Messages handled, by result: stored, duplicate (already stored), dead_lettered",
    ["result"],
)
for _result in RESULTS:
    # Every series exists at 0 from the start: `increase()` over a series that first appears
    # at 1 is 0, so the first dead letter of a process would never fire AuditDeadLetter.
    MESSAGES.labels(_result)
REDELIVERIES = Counter(
    "audit_consumer_redeliveries_total", "Messages received more than once from JetStream"
)
BATCH_SIZE = Histogram(
    "audit_consumer_batch_size_messages",
    "Messages per fetched batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
WRITE_SECONDS = Histogram(
    "audit_consumer_write_duration_seconds",
    "One batch's PostgreSQL transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LAST_WRITE = Gauge(
    "audit_consumer_last_write_timestamp_seconds", "Unix time of the last committed batch"
)
LAG = Gauge("audit_consumer_lag_messages", "Durable's num_pending + num_ack_pending (polled)")
TRIM_OK = Gauge(
    "audit_consumer_trim_ok",
    "0 while this worker cannot trim AUDIT below the ack floor (refused or failing), else 1",
)
TRIM_OK.set(1)
DB_UP = Gauge("audit_consumer_db_up", "1 if the last PostgreSQL connect/write succeeded")
NATS_UP = Gauge("audit_consumer_nats_connected", "1 if connected to NATS")
DEAD_LETTERS = Counter(
    "audit_consumer_dead_letters_total",
    "Messages dead-lettered, by kind: invalid, rejected (by PostgreSQL), signature (forged,"
    " altered or unsigned)",
    ["kind"],
)
for _kind in ("invalid", "rejected", "signature"):
    DEAD_LETTERS.labels(_kind)
SEALS = Counter("audit_consumer_seals_total", "Seals this process wrote")
SEALED_ROWS = Counter("audit_consumer_sealed_rows_total", "Rows covered by the seals it wrote")
SEAL_LAG = Gauge(
    "audit_consumer_seal_lag_seconds",
    "Age of the oldest committed batch not yet sealed (0 when everything is sealed)",
)
SEAL_HEAD = Info(
    "audit_consumer_seal_head",
    "The last seal this process wrote: its number and hash (pin it: audit-verify --head)",
)
SEAL_CHAIN_OK = Gauge(
    "audit_consumer_seal_chain_ok",
    "0 while the newest seal cannot be extended (its signature fails, or it claims rows that"
    " cannot exist yet): sealing has stopped; see the log for why",
)
SEAL_CHAIN_OK.set(1)
ROWS_MISSING = Counter(
    "audit_consumer_rows_missing_total",
    "Rows PostgreSQL did not insert although it accepted the batch (a trigger or rule dropped"
    " them): acknowledged events not stored; audit-verify names their sequences",
)
HORIZON_HOLDER = Gauge(
    "audit_consumer_horizon_holder_age_seconds",
    "Age of the oldest transaction holding back sealing and the feed (0 when none does)",
    ["pid", "user", "database", "application"],
)
PARTITION_RUNWAY = Gauge(
    "audit_consumer_partition_runway_seconds",
    "How far ahead of now the newest partition of audit_events ends (AuditPartitionRunwayShort)",
)
PARTITION_OLDEST = Gauge(
    "audit_consumer_partition_oldest_timestamp_seconds",
    "Start of the oldest partition still taking rows: older events are refused (dead-lettered)",
)
PARTITION_UNHELD = Gauge(
    "audit_consumer_partition_unheld_oldest_timestamp_seconds",
    "Start of the oldest partition under no legal hold: what retention should remove first"
    " (AuditRetentionBehind; held partitions are kept on purpose)",
)
RETENTION_DAYS = Gauge(
    "audit_consumer_retention_days",
    "AUDIT_RETENTION_DAYS as this consumer was given it (0: retention off); AuditRetentionBehind"
    " compares the oldest partition under no hold with it",
)
