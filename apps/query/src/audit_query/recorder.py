"""Who watches the watchers: every read of the audit log is itself an audit event, published
through the same pipeline under the query service's own broker identity (``audit-query``, which
may publish only ``audit.events.audit.>``) and signed with its own event key.

A read is answered only after its record is acknowledged by JetStream — as the API answers a
request only after its event is — so nothing is read off the record: when the broker is away,
reads get 503. Two kinds of requests would flood the log one record each, so they are folded:
a client polling the feed (one record per actor and window, counting polls and rows) and
denied reads (one per source address and window, counting them). The first of each window is
recorded at once; the rest are carried into the next record for that key (or published on
shutdown), so the counts add up.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from audit_events import AuditEvent, StreamNames, canonical_ip, uuid7
from audit_events.authorship import EventKeys, signed
from audit_events.broker import QUERY, BrokerSettings, connect_forever

log = logging.getLogger("audit.query.recorder")


class RecordUnavailable(Exception):
    """The record of a read could not be stored: the read must not be answered."""


class Recorder:
    """One NATS connection per process, reconnecting forever; publishes with JetStream acks."""

    def __init__(
        self, broker: BrokerSettings, names: StreamNames, keys: EventKeys, timeout: float
    ) -> None:
        self.broker, self.names, self.keys, self.timeout = broker, names, keys, timeout
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        """Connect in the background (the service starts even while NATS is away)."""
        self._connecting = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        self.nc = await connect_forever(self.broker, QUERY)
        self.js = self.nc.jetstream()
        log.info("connected to NATS")

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()

    async def record(self, event: AuditEvent) -> None:
        """Publish and wait for JetStream's ack, or raise :class:`RecordUnavailable`."""
        if self.js is None or not self.ready:
            raise RecordUnavailable("not connected to NATS")
        data, headers = signed(event, self.keys)
        try:
            await self.js.publish(
                self.names.event_subject(event.action),
                data,
                timeout=self.timeout,
                stream=self.names.stream,
                headers=headers,
            )
        except Exception as exc:
            raise RecordUnavailable(f"{type(exc).__name__}: {exc}") from exc


@dataclass
class _Fold:
    last: float
    counts: dict[str, int] = field(default_factory=dict)


PRUNE_ABOVE = 1024
"""Keys kept before idle ones are forgotten (one per feed session or denied source)."""


class Folds:
    """Per key, at most one record per window: :meth:`add` says when to record, and what."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._folds: dict[Any, _Fold] = {}

    def add(self, key: Any, **counts: int) -> dict[str, int] | None:
        """Count this request; the totals to record now (first of a window), else None."""
        now = time.monotonic()
        if len(self._folds) > PRUNE_ABOVE:  # forget keys whose window passed with nothing owed
            idle = [
                k for k, f in self._folds.items() if not f.counts and now - f.last >= self.window
            ]
            for k in idle:
                del self._folds[k]
        fold = self._folds.get(key)
        if fold is None:
            fold = self._folds[key] = _Fold(now - self.window)
        for name, n in counts.items():
            fold.counts[name] = fold.counts.get(name, 0) + n
        if now - fold.last < self.window:
            return None
        totals, fold.counts, fold.last = fold.counts, {}, now
        return totals

    def drain(self) -> dict[Any, dict[str, int]]:
        """Counts not recorded yet, per key (on shutdown)."""
        pending = {key: fold.counts for key, fold in self._folds.items() if fold.counts}
        self._folds.clear()
        return pending


def read_event(
    actor: str | None,
    action: str,
    source_ip: str | None,
    user_agent: str | None,
    *,
    outcome: str = "success",
    resource_id: str = "audit_events",
    metadata: dict[str, Any],
) -> AuditEvent:
    """The record of one read (or a folded run of them)."""
    return AuditEvent.model_validate(
        {
            "id": uuid7(),
            "occurred_at": datetime.now(UTC),
            "actor_type": "user" if actor else "anonymous",
            "actor_id": actor or "anonymous",
            "action": action,
            "resource_type": "audit_log",
            "resource_id": resource_id,
            "outcome": outcome,
            "source_ip": _address(source_ip),
            "user_agent": (user_agent or "")[:1024] or None,
            "metadata": metadata,
        }
    )


def _address(text: str | None) -> str | None:
    try:
        return canonical_ip(text) if text else None
    except ValueError:
        return None
