"""JetStream names shared by the API, the consumer, ``audit-setup`` and the Helm KEDA trigger.

One set of environment variables (``AUDIT_STREAM``, ``AUDIT_DLQ_STREAM``, ``AUDIT_DURABLE``,
``AUDIT_SUBJECT_PREFIX``) feeds every process, so the publisher, the durable and the autoscaler
can never disagree about where events live.
"""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


class StreamNames(BaseSettings):
    """Names of the event stream, its dead-letter stream and the durable pull consumer."""

    model_config = SettingsConfigDict(env_prefix="AUDIT_", frozen=True, extra="ignore")

    stream: str = Field("AUDIT", pattern=NAME_PATTERN)
    dlq_stream: str = Field("AUDIT_DLQ", pattern=NAME_PATTERN)
    durable: str = Field("audit-writer", pattern=NAME_PATTERN)
    subject_prefix: str = Field("audit", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

    @property
    def events_subjects(self) -> str:
        """Wildcard bound to the event stream, e.g. ``audit.events.>``."""
        return f"{self.subject_prefix}.events.>"

    @property
    def dlq_subjects(self) -> str:
        """Wildcard bound to the dead-letter stream, e.g. ``audit.dlq.>``."""
        return f"{self.subject_prefix}.dlq.>"

    def event_subject(self, action: str) -> str:
        """Subject of one event: ``audit.events.account.update`` for action ``account.update``."""
        return f"{self.subject_prefix}.events.{action}"

    def dlq_subject(self, kind: str) -> str:
        """Subject of a dead letter: ``audit.dlq.invalid`` or ``audit.dlq.rejected``."""
        return f"{self.subject_prefix}.dlq.{kind}"


ACCOUNT_ACTIONS = {"GET": "account.read", "PATCH": "account.update", "DELETE": "account.delete"}
"""The placeholder API's actions, by HTTP method (what it records; the viewer offers them)."""
