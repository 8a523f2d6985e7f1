"""Consumer and ``audit-setup`` configuration, all from the environment (see README)."""

from datetime import timedelta

from pydantic import AwareDatetime, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_consumer.bounds import Bounds
from audit_events import StreamNames
from audit_events.authorship import EventKeySettings
from audit_events.broker import BrokerSettings


class ProvisionSettings(BaseSettings):
    """How ``audit-setup provision`` configures the streams and the durable (jetstream.py)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    stream_replicas: int = Field(1, ge=1, le=5, alias="AUDIT_STREAM_REPLICAS")
    stream_max_bytes: int = Field(-1, alias="AUDIT_STREAM_MAX_BYTES")
    duplicate_window_seconds: float = Field(300.0, ge=120, alias="AUDIT_DUPLICATE_WINDOW_SECONDS")
    ack_wait_seconds: float = Field(30.0, gt=0, alias="AUDIT_ACK_WAIT_SECONDS")
    max_ack_pending: int = Field(50_000, ge=1, alias="AUDIT_MAX_ACK_PENDING")


class Settings(BrokerSettings, EventKeySettings):
    """Every knob of ``audit-consumer`` and ``audit-setup``; names are the env vars."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/postgres", alias="DATABASE_URL")
    writer_database_url: str | None = Field(None, alias="AUDIT_WRITER_DATABASE_URL")
    reader_database_url: str | None = Field(None, alias="AUDIT_READER_DATABASE_URL")
    query_database_url: str | None = Field(None, alias="AUDIT_QUERY_DATABASE_URL")
    health_port: int = Field(8001, alias="AUDIT_HEALTH_PORT")
    health_host: str = Field("0.0.0.0", alias="AUDIT_HEALTH_HOST")

    batch_size: int = Field(500, ge=1, le=10_000, alias="AUDIT_BATCH_SIZE")
    db_connections: int = Field(2, ge=1, le=8, alias="AUDIT_DB_CONNECTIONS")
    fetch_wait_seconds: float = Field(1.0, gt=0, le=30, alias="AUDIT_FETCH_WAIT_SECONDS")
    backoff_max_seconds: float = Field(10.0, gt=0, alias="AUDIT_BACKOFF_MAX_SECONDS")
    liveness_seconds: float = Field(60.0, gt=0, alias="AUDIT_LIVENESS_SECONDS")
    shutdown_seconds: float = Field(20.0, gt=0, alias="AUDIT_SHUTDOWN_SECONDS")

    # integrity (README, "Integrity")
    seal_key: str = Field("", alias="AUDIT_SEAL_KEY", repr=False)
    # Keys besides its own whose seals the sealer extends (while rotating the sealing key).
    seal_public_keys: str = Field("", alias="AUDIT_SEAL_PUBLIC_KEYS")
    seal_interval_seconds: float = Field(1.0, gt=0, le=60, alias="AUDIT_SEAL_INTERVAL_SECONDS")
    accept_unsigned_until: AwareDatetime | None = Field(None, alias="AUDIT_ACCEPT_UNSIGNED_UNTIL")

    # partitions (README, "Retention")
    partition_days: int = Field(1, ge=1, le=31, alias="AUDIT_PARTITION_DAYS")
    partition_ahead_days: int = Field(7, ge=1, le=366, alias="AUDIT_PARTITION_AHEAD_DAYS")
    max_clock_skew_seconds: float = Field(300.0, ge=0, alias="AUDIT_MAX_CLOCK_SKEW_SECONDS")
    retention_days: int = Field(0, ge=0, alias="AUDIT_RETENTION_DAYS")  # exported for alerts

    # audit-setup
    setup_wait_seconds: float = Field(60.0, ge=0, alias="AUDIT_SETUP_WAIT_SECONDS")
    migrations_dir: str | None = Field(None, alias="AUDIT_MIGRATIONS_DIR")

    names: StreamNames = Field(default_factory=StreamNames)
    provision: ProvisionSettings = Field(default_factory=ProvisionSettings)

    def require_keys(self) -> None:
        """A consumer cannot check authorship or seal without its keys: say so at start."""
        missing = [
            name
            for name, value in (
                ("AUDIT_EVENT_KEYS", self.event_keys),
                ("AUDIT_SEAL_KEY", self.seal_key),
            )
            if not value
        ]
        if missing:
            raise SystemExit(f"{' and '.join(missing)} not set: generate them with audit-keygen")

    def bounds(self) -> Bounds:
        """The partition policy, before the first look at the partitions."""
        return Bounds(
            skew=timedelta(seconds=self.max_clock_skew_seconds),
            ahead=timedelta(days=self.partition_ahead_days),
            step=timedelta(days=self.partition_days),
        )

    @property
    def consumer_database_url(self) -> str:
        """The consumer writes as the least-privileged writer when it has its own URL."""
        return self.writer_database_url or self.database_url
