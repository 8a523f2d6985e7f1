"""The one way a producer puts an event on the record: signed, published to JetStream, and
acknowledged before anything that depends on it is claimed.

Every producer (the API for requests, the query service for reads, the DLQ tool for replays)
answers only after :meth:`JetStreamPublisher.publish` returned, and that happens only once
JetStream acknowledged the event (stored in the stream, fsynced per the server's policy). Every
event is signed (``Audit-Signature``, an HMAC with the first of the producer's event keys):
consumers store only events a producer key signed, for the actions that key may sign.
``Nats-Msg-Id`` is the event id: a retried publish is dropped by JetStream inside its duplicate
window. A publish that fails or times out raises :class:`PublishUnavailable` (with a fixed
``reason``), which callers turn into 503 + ``Retry-After``: nothing is claimed that was not
stored.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import Field, model_validator

from audit_events import tracing
from audit_events.authorship import EventKeySettings, signed
from audit_events.broker import BrokerSettings, connect_forever
from audit_events.model import AuditEvent
from audit_events.naming import StreamNames

log = logging.getLogger("audit.publishing")
TRACER = trace.get_tracer("audit_events.publishing")


class PublishUnavailable(Exception):
    """The broker did not acknowledge the event; ``reason`` is one of ``not_connected``,
    ``timeout``, ``error``. The caller must not claim the event was recorded."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ProducerSettings(BrokerSettings, EventKeySettings):
    """What every producer needs beyond reaching NATS: its event key(s), the stream's names and
    how long to wait for an ack. A producer without a key cannot start."""

    publish_timeout_seconds: float = Field(2.0, gt=0, le=30, alias="AUDIT_PUBLISH_TIMEOUT_SECONDS")
    names: StreamNames = Field(default_factory=StreamNames)

    @model_validator(mode="after")
    def _has_key(self) -> "ProducerSettings":
        if not self.event_keys:
            raise ValueError(
                "AUDIT_EVENT_KEYS is empty: every event is signed and consumers store only"
                " signed ones; generate a key with audit-keygen"
            )
        self.keys  # noqa: B018 - a bad key fails here, not at the first publish
        return self


class JetStreamPublisher:
    """One NATS connection per process as ``identity``, reconnecting forever; publishes signed
    events and waits for JetStream's ack. ``on_connection`` hears every (dis)connection."""

    def __init__(
        self,
        settings: ProducerSettings,
        identity: str,
        on_connection: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.settings, self.identity, self.on_connection = settings, identity, on_connection
        self.names, self.keys = settings.names, settings.keys
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None  # one per connection, not per publish
        self.stream_ok = True  # the stream exists (publishes to a deleted one are refused)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False  # a disconnect then is the shutdown, not an outage

    @property
    def ready(self) -> bool:
        """Connected, and the stream exists: a load balancer should not send us requests we
        can only answer 503."""
        return self.nc is not None and self.nc.is_connected and self.stream_ok

    async def start(self) -> None:
        """Connect in the background: the service serves (and answers 503) while NATS is away."""
        self._tasks = [
            asyncio.create_task(self._connect()),
            asyncio.create_task(self._watch_stream()),
        ]

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()

    async def _connect(self) -> None:
        self.nc = await connect_forever(
            self.settings,
            self.identity,
            error_cb=_log_error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        self.js = self.nc.jetstream()
        self.on_connection(True)
        log.info("connected to NATS")

    async def _disconnected(self) -> None:
        self.on_connection(False)
        if self._closing:
            log.info("disconnected from NATS (shutting down)")
        else:
            log.warning("disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.on_connection(True)
        log.info("reconnected to NATS")

    def _stream_state(self, ok: bool, why: str = "") -> None:
        """Say it once when the stream goes missing or comes back."""
        if ok and not self.stream_ok:
            log.info("stream %s is back", self.names.stream)
        elif not ok and self.stream_ok:
            log.error(
                "stream %s is missing (%s): not ready; run audit-setup", self.names.stream, why
            )
        self.stream_ok = ok

    async def _watch_stream(self, every: float = 5.0) -> None:
        """Notice a deleted (or re-created) stream even when nothing is published."""
        while True:
            await asyncio.sleep(every)
            if self.js is None or self.nc is None or not self.nc.is_connected:
                continue
            try:
                await self.js.stream_info(self.names.stream)
                self._stream_state(True)
            except NotFoundError as exc:
                self._stream_state(False, str(exc) or "not found")
            except Exception as exc:
                log.debug("stream check failed: %s", exc)

    async def publish(self, event: AuditEvent) -> None:
        """Publish ``event`` signed and wait for the ack, or raise :class:`PublishUnavailable`."""
        # Fail fast while disconnected: nats-py would buffer and the caller would wait the
        # whole timeout for an ack that cannot come.
        if self.nc is None or self.js is None or not self.nc.is_connected:
            raise PublishUnavailable("not_connected", "not connected to NATS")
        subject = self.names.event_subject(event.action)
        data, headers = signed(event, self.keys)
        try:
            with _span(subject, event):
                if tracing.enabled():
                    tracing.inject(headers)  # traceparent of the publish span
                await self.js.publish(
                    subject,
                    data,
                    timeout=self.settings.publish_timeout_seconds,
                    stream=self.names.stream,
                    headers=headers,
                )
        except Exception as exc:  # timeout, no responders, stream full, connection lost
            if isinstance(exc, NoRespondersError):  # nothing stores this subject: no stream
                self._stream_state(False, "no stream answers the publish")
            reason = "timeout" if isinstance(exc, TimeoutError) else "error"
            raise PublishUnavailable(reason, f"{type(exc).__name__}: {exc}") from exc


def _span(subject: str, event: AuditEvent) -> AbstractContextManager[object]:
    """The PRODUCER span, only when tracing is on (a no-op span and header injection still cost
    time on every request; docs/performance.md)."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    return TRACER.start_as_current_span(
        f"publish {subject}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.message.id": str(event.id),
        },
    )


async def _log_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc)
