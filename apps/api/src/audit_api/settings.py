"""API configuration, all from the environment (see README)."""

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from audit_events import StreamNames
from audit_events.authorship import EventKeys
from audit_events.broker import BrokerSettings

PUBLISHED_SECRETS = {"dev-only-secret-change-me-0123456789abcdef"}
"""Secrets earlier versions shipped in examples: public knowledge, refused."""


class Settings(BrokerSettings):
    """Every knob of ``audit-api``; names are the env vars."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    jwt_secret: str = Field("", alias="AUDIT_JWT_SECRET", repr=False)
    event_keys: str = Field("", alias="AUDIT_EVENT_KEYS", repr=False)
    host: str = Field("0.0.0.0", alias="AUDIT_API_HOST")
    port: int = Field(8000, alias="AUDIT_API_PORT")
    workers: int = Field(1, ge=1, le=64, alias="AUDIT_API_WORKERS")
    publish_timeout_seconds: float = Field(2.0, gt=0, le=30, alias="AUDIT_PUBLISH_TIMEOUT_SECONDS")
    retry_after_seconds: int = Field(1, ge=1, alias="AUDIT_RETRY_AFTER_SECONDS")
    forwarded_allow_ips: str = Field("127.0.0.1", alias="AUDIT_FORWARDED_ALLOW_IPS")
    # Denied requests per source address (denials.py): defaults bound one attacking source to
    # 1.1 rows/s (~0.26 GB/day at maximum field sizes) per process, and 50 requests/s.
    denied_window_seconds: float = Field(10.0, gt=0, le=3600, alias="AUDIT_DENIED_WINDOW_SECONDS")
    denied_events_per_source: int = Field(10, ge=1, alias="AUDIT_DENIED_EVENTS_PER_SOURCE")
    denied_requests_per_source: int = Field(500, ge=1, alias="AUDIT_DENIED_REQUESTS_PER_SOURCE")
    names: StreamNames = Field(default_factory=StreamNames)

    @model_validator(mode="after")
    def _secret_is_real(self) -> "Settings":
        """An audit trail is only as good as its actor ids: refuse guessable JWT secrets."""
        if not self.jwt_secret:
            raise ValueError(
                "AUDIT_JWT_SECRET is empty: set a random secret of 32+ bytes (audit-keygen)"
            )
        if len(self.jwt_secret.encode()) < 32 or self.jwt_secret in PUBLISHED_SECRETS:
            raise ValueError(
                "AUDIT_JWT_SECRET is shorter than 32 bytes or a published example;"
                " generate one with audit-keygen"
            )
        if not self.event_keys:
            raise ValueError(
                "AUDIT_EVENT_KEYS is empty: the API signs every event it publishes and consumers"
                " store only signed ones; generate a key with audit-keygen"
            )
        self.keys  # noqa: B018 - fails here, not at the first publish
        return self

    @property
    def keys(self) -> EventKeys:
        return EventKeys.parse(self.event_keys)
