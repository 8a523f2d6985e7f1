"""Who watches the watchers: every read of the audit log is itself an audit event, published
through the same pipeline under the query service's own broker identity (``audit-query``, which
may publish only ``audit.events.audit.>``) and signed with its own event key.

A read is answered only after its record is acknowledged by JetStream — as the API answers a
request only after its event is — so nothing is read off the record: when the broker is away,
reads get 503. Two kinds of reads are folded (``audit_events.folding``): feed polls (one record
per reader, feed session and window, counting polls and rows) and denied reads (one per source
address, reason and window). A folded read is answered at once; its counts are published when
the window ends, or at shutdown — an ungraceful crash loses the current window's counts.
"""

import logging
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError

from audit_events import MAX_USER_AGENT_CHARS, AuditEvent, canonical_ip, uuid7
from audit_events.folding import Counts, Folding
from audit_events.publishing import JetStreamPublisher, PublishUnavailable
from audit_query import metrics
from audit_web.client import clean, header, peer

log = logging.getLogger("audit.query.recording")


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
    """The record of one read (or the first of a folded run of them)."""
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
            "user_agent": clean(user_agent, MAX_USER_AGENT_CHARS),
            "metadata": metadata,
        }
    )


def _address(text: str | None) -> str | None:
    try:
        return canonical_ip(text) if text else None
    except ValueError:
        return None


async def record(
    request: Request,
    publisher: JetStreamPublisher,
    actor: str | None,
    action: str,
    metadata: dict[str, Any],
    *,
    outcome: str = "success",
    resource_id: str = "audit_events",
    fold: tuple[Folding, Hashable, Counts] | None = None,
    via: str | None = None,
) -> None:
    """Put this read on the record before it is answered (503 if that cannot be done); with
    ``fold`` (the folding, the key, this read's counts), possibly folded instead; ``via``: the
    way it came (``viewer``), when not the JSON API."""
    counts = fold[2] if fold else {}
    if via:
        metadata = {**metadata, "via": via}
    try:
        event = read_event(
            actor,
            action,
            peer(request),
            header(request, "user-agent"),
            outcome=outcome,
            resource_id=resource_id,
            metadata=metadata | counts,
        )
    except ValidationError as exc:  # input the log could not hold: refused, never unrecorded
        detail = [{"loc": ["query"], "msg": "cannot be recorded", "type": "value_error"}]
        raise HTTPException(422, detail) from exc
    if fold is not None:
        folding, key, _ = fold
        if folding.verdict(key) != "record":
            folding.fold(key, event, **counts)
            return
    try:
        await publisher.publish(event)
    except PublishUnavailable as exc:
        metrics.UNRECORDED.inc()
        log.warning("read not answered, its record failed: %s", exc)
        raise HTTPException(503, "cannot record this read now", {"Retry-After": "1"}) from None
    metrics.READS.labels(action, outcome).inc()


async def publish_folded(publisher: JetStreamPublisher, event: AuditEvent) -> None:
    """How folded records are published (each window, and at shutdown)."""
    await publisher.publish(event)
    metrics.READS.labels(event.action, event.outcome).inc()
