"""``audit-query`` configuration, all from the environment (README, "Reading the log")."""

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from audit_events import StreamNames
from audit_events.auth import check_secret
from audit_events.authorship import EventKeys
from audit_events.broker import BrokerSettings


class Settings(BrokerSettings):
    """Every knob of ``audit-query``; names are the env vars."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    reader_database_url: str = Field("", alias="AUDIT_READER_DATABASE_URL", repr=False)
    jwt_secret: str = Field("", alias="AUDIT_JWT_SECRET", repr=False)
    host: str = Field("0.0.0.0", alias="AUDIT_QUERY_HOST")
    port: int = Field(8080, alias="AUDIT_QUERY_PORT")
    statement_timeout_ms: int = Field(5000, ge=100, alias="AUDIT_QUERY_STATEMENT_TIMEOUT_MS")
    db_connections: int = Field(8, ge=1, le=64, alias="AUDIT_QUERY_DB_CONNECTIONS")
    export_seconds: float = Field(300, gt=0, alias="AUDIT_QUERY_EXPORT_SECONDS")
    fold_seconds: float = Field(60, gt=0, alias="AUDIT_QUERY_FOLD_SECONDS")
    publish_timeout_seconds: float = Field(2.0, gt=0, le=30, alias="AUDIT_PUBLISH_TIMEOUT_SECONDS")
    jaeger_url: str | None = Field(None, alias="AUDIT_JAEGER_URL")  # the viewer links traces
    event_keys: str = Field("", alias="AUDIT_EVENT_KEYS", repr=False)
    names: StreamNames = Field(default_factory=StreamNames)

    @model_validator(mode="after")
    def _required(self) -> "Settings":
        """It reads with its own SELECT-only login, never the owner's, and needs the issuer's
        secret to check tokens."""
        if not self.reader_database_url:
            raise ValueError("AUDIT_READER_DATABASE_URL is not set (the audit_reader login)")
        check_secret(self.jwt_secret)
        if not self.event_keys:
            raise ValueError("AUDIT_EVENT_KEYS is not set: every read is recorded, signed")
        self.keys  # noqa: B018 - a bad key fails here, not at the first read
        return self

    @property
    def keys(self) -> EventKeys:
        return EventKeys.parse(self.event_keys)
