"""Publishing audit events to JetStream, behind a one-method interface.

The API answers a request only after :meth:`Publisher.publish` returned, and that happens only
once JetStream acknowledged the event (stored in the stream, fsynced per the server's policy).
Every event is signed (``Audit-Signature``, an HMAC with the first of ``AUDIT_EVENT_KEYS``):
consumers store only events signed by a producer key.
``Nats-Msg-Id`` is the event id: if a publish is retried, JetStream drops the copy inside its
duplicate window. A publish that fails or times out raises :class:`PublishUnavailable`, which
the routes turn into 503 + ``Retry-After``: nothing is claimed that was not stored.
"""

import asyncio
import contextlib
import logging
import time
from contextlib import AbstractContextManager
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from audit_api.metrics import NATS_CONNECTED, PUBLISH_FAILURES, PUBLISH_SECONDS
from audit_events import AuditEvent, StreamNames, tracing
from audit_events.authorship import EventKeys, signed
from audit_events.broker import API, BrokerSettings, connect_forever

log = logging.getLogger("audit.api.publisher")
TRACER = trace.get_tracer("audit_api.publisher")


class PublishUnavailable(Exception):
    """The broker did not acknowledge the event; the client should retry later."""


class Publisher(Protocol):
    """Anything that durably accepts an audit event (NATS in production, a fake in tests)."""

    @property
    def ready(self) -> bool: ...

    async def publish(self, event: AuditEvent) -> None: ...


class NatsPublisher:
    """One NATS connection per process, reconnecting forever, publishing with JetStream acks."""

    def __init__(
        self, broker: BrokerSettings, names: StreamNames, timeout: float, keys: EventKeys
    ) -> None:
        self.broker, self.names, self.timeout, self.keys = broker, names, timeout, keys
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None  # one per connection, not per publish
        self.stream_ok = True  # the stream exists (publishes to a deleted one are refused)
        self._connecting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Connected, and the stream exists: a load balancer should not send us requests we
        can only answer 503."""
        return self.nc is not None and self.nc.is_connected and self.stream_ok

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
        """Notice a deleted (or re-created) stream even when no request comes in."""
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

    async def start(self) -> None:
        """Connect in the background: the API serves (and answers 503) while NATS is away."""
        self._connecting = asyncio.create_task(self._connect_forever())
        self._watching = asyncio.create_task(self._watch_stream())

    async def _connect_forever(self) -> None:
        self.nc = await connect_forever(
            self.broker,
            API,
            error_cb=_log_error,
            disconnected_cb=_disconnected,
            reconnected_cb=_reconnected,
        )
        self.js = self.nc.jetstream()
        NATS_CONNECTED.set(1)
        log.info("connected to NATS")

    async def close(self) -> None:
        for task in (self._connecting, self._watching):
            if task is not None:
                task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()

    async def publish(self, event: AuditEvent) -> None:
        # Fail fast while disconnected: nats-py would buffer and the client would wait the
        # whole timeout for an ack that cannot come.
        if self.nc is None or self.js is None or not self.nc.is_connected:
            PUBLISH_FAILURES.labels("not_connected").inc()
            raise PublishUnavailable("not connected to NATS")
        subject = self.names.event_subject(event.action)
        data, headers = signed(event, self.keys)
        started = time.perf_counter()
        try:
            with self._span(subject, event):
                if tracing.enabled():
                    tracing.inject(headers)  # traceparent of the publish span
                await self.js.publish(
                    subject,
                    data,
                    timeout=self.timeout,
                    stream=self.names.stream,
                    headers=headers,
                )
        except Exception as exc:  # timeout, no responders, stream full, connection lost
            if isinstance(exc, NoRespondersError):  # nothing stores this subject: no stream
                self._stream_state(False, "no stream answers the publish")
            reason = "timeout" if isinstance(exc, TimeoutError) else "error"
            PUBLISH_FAILURES.labels(reason).inc()
            raise PublishUnavailable(f"{type(exc).__name__}: {exc}") from exc
        PUBLISH_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def _span(subject: str, event: AuditEvent) -> AbstractContextManager[object]:
        """The PRODUCER span, only when tracing is on: a no-op span and header injection still
        cost ~9 µs per request."""
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


async def _disconnected() -> None:
    NATS_CONNECTED.set(0)
    log.warning("disconnected from NATS; reconnecting")


async def _reconnected() -> None:
    NATS_CONNECTED.set(1)
    log.info("reconnected to NATS")
