"""Test doubles for unit tests (integration tests use real NATS and PostgreSQL)."""

from audit_api.publisher import PublishUnavailable
from audit_events import AuditEvent


class FakePublisher:
    """Records what was published; ``fail = True`` makes it behave like an unreachable broker."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.fail = False

    @property
    def ready(self) -> bool:
        return not self.fail

    async def publish(self, event: AuditEvent) -> None:
        if self.fail:
            raise PublishUnavailable("broker down (fake)")
        self.events.append(event)
