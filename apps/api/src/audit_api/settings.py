"""API configuration, all from the environment (see README)."""

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from audit_events import StreamNames
from audit_events.auth import check_secret
from audit_events.authorship import EventKeys
from audit_events.broker import BrokerSettings


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
        """Refuse guessable JWT secrets and a missing event key before serving anything."""
        check_secret(self.jwt_secret)
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
