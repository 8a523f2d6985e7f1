"""The API's publisher: the shared signed, acknowledged publish (``audit_events.publishing``)
with the API's metrics, behind a small interface that tests replace with a fake.

The API answers a request only after :meth:`Publisher.publish` returned (JetStream acknowledged
the event); a :class:`PublishUnavailable` becomes 503 + ``Retry-After``.
"""

import time
from typing import Protocol

from audit_api.metrics import NATS_CONNECTED, PUBLISH_FAILURES, PUBLISH_SECONDS
from audit_events import AuditEvent
from audit_events.broker import API
from audit_events.publishing import JetStreamPublisher, ProducerSettings, PublishUnavailable

__all__ = ["MeteredPublisher", "PublishUnavailable", "Publisher"]


class Publisher(Protocol):
    """Anything that durably accepts an audit event (NATS in production, a fake in tests)."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: AuditEvent) -> None: ...


class MeteredPublisher(JetStreamPublisher):
    """Publishes as ``audit-api``, counting failures by reason and timing acks."""

    def __init__(self, settings: ProducerSettings) -> None:
        super().__init__(settings, API, on_connection=lambda up: NATS_CONNECTED.set(int(up)))

    async def publish(self, event: AuditEvent) -> None:
        started = time.perf_counter()
        try:
            await super().publish(event)
        except PublishUnavailable as exc:
            PUBLISH_FAILURES.labels(exc.reason).inc()
            raise
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
