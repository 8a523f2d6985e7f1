"""``audit-query`` configuration, all from the environment (README, "Reading the log")."""

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from audit_events.auth import TokenSettings
from audit_events.publishing import ProducerSettings


class Settings(ProducerSettings, TokenSettings):
    """Every knob of ``audit-query``; names are the env vars. ``AUDIT_EVENT_KEYS`` is its own
    key: every read is recorded, signed."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    reader_database_url: str = Field("", alias="AUDIT_READER_DATABASE_URL", repr=False)
    host: str = Field("0.0.0.0", alias="AUDIT_QUERY_HOST")
    port: int = Field(8080, alias="AUDIT_QUERY_PORT")
    statement_timeout_ms: int = Field(5000, ge=100, alias="AUDIT_QUERY_STATEMENT_TIMEOUT_MS")
    db_connections: int = Field(8, ge=1, le=64, alias="AUDIT_QUERY_DB_CONNECTIONS")
    export_seconds: float = Field(300, gt=0, alias="AUDIT_QUERY_EXPORT_SECONDS")
    max_exports: int = Field(2, ge=1, le=32, alias="AUDIT_QUERY_MAX_EXPORTS")
    max_exports_per_reader: int = Field(1, ge=1, alias="AUDIT_QUERY_MAX_EXPORTS_PER_READER")
    fold_seconds: float = Field(60, gt=0, alias="AUDIT_QUERY_FOLD_SECONDS")
    denied_ipv6_prefix: int = Field(64, ge=32, le=128, alias="AUDIT_DENIED_IPV6_PREFIX")
    jaeger_url: str | None = Field(None, alias="AUDIT_JAEGER_URL")  # the viewer links traces
    # The seals' public keys: "sealed" means covered by a seal that checks (trust.py).
    seal_public_keys: str = Field("", alias="AUDIT_SEAL_PUBLIC_KEYS")

    @model_validator(mode="after")
    def _required(self) -> "Settings":
        """It reads with its own SELECT-only login, never the owner's."""
        if not self.reader_database_url:
            raise ValueError("AUDIT_READER_DATABASE_URL is not set (the audit_reader login)")
        return self
