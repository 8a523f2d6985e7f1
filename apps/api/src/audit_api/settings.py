"""API configuration, all from the environment (see README)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from audit_events.auth import TokenSettings
from audit_events.publishing import ProducerSettings


class Settings(ProducerSettings, TokenSettings):
    """Every knob of ``audit-api``; names are the env vars."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    host: str = Field("0.0.0.0", alias="AUDIT_API_HOST")
    port: int = Field(8000, alias="AUDIT_API_PORT")
    workers: int = Field(1, ge=1, le=64, alias="AUDIT_API_WORKERS")
    retry_after_seconds: int = Field(1, ge=1, alias="AUDIT_RETRY_AFTER_SECONDS")
    forwarded_allow_ips: str = Field("127.0.0.1", alias="AUDIT_FORWARDED_ALLOW_IPS")
    # Denied requests per source address (audit_events.folding; the storage this bounds one
    # attacking source to: docs/performance.md).
    denied_window_seconds: float = Field(10.0, gt=0, le=3600, alias="AUDIT_DENIED_WINDOW_SECONDS")
    denied_events_per_source: int = Field(10, ge=1, alias="AUDIT_DENIED_EVENTS_PER_SOURCE")
    denied_requests_per_source: int = Field(500, ge=1, alias="AUDIT_DENIED_REQUESTS_PER_SOURCE")
    denied_ipv6_prefix: int = Field(64, ge=32, le=128, alias="AUDIT_DENIED_IPV6_PREFIX")
