"""Turning an HTTP request into an audit event and getting it acknowledged.

Client text is cleaned and cut to the model's limits (``audit_web.client``), so an event the
API acknowledged can always be stored. Denied requests are folded per source
(``audit_events.folding``).
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError

from audit_api.publisher import Publisher, PublishUnavailable
from audit_events import (
    MAX_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_USER_AGENT_CHARS,
    AuditEvent,
    Outcome,
    tracing,
    uuid7,
)
from audit_events.auth import AuthError, authenticate
from audit_events.folding import Folding, source_key
from audit_events.naming import ACCOUNT_ACTIONS
from audit_web.client import MAX_PATH_CHARS, clean, header, peer

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def _trace_id(request: Request) -> str | None:
    """The trace this request belongs to: the active span's (tracing on), else the caller's
    ``traceparent`` (tracing off), so the row can always be joined with the caller's trace."""
    if active := tracing.current_trace_id():
        return active
    match = TRACEPARENT.match(request.headers.get("traceparent", ""))
    return match.group(1) if match and match.group(1) != "0" * 32 else None


def build_event(
    request: Request,
    *,
    actor_type: str,
    actor_id: str,
    outcome: Outcome,
    status: int,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    """The audit event for this request: who, what, on which account, from where, outcome."""
    account_id = str(request.path_params.get("account_id", ""))
    fields: dict[str, Any] = dict(
        id=uuid7(),
        occurred_at=datetime.now(UTC),
        actor_type=actor_type,
        actor_id=actor_id,
        action=ACCOUNT_ACTIONS[request.method],
        resource_type="account",
        resource_id=clean(account_id, MAX_ID_CHARS) or "-",
        outcome=outcome,
        source_ip=peer(request),
        user_agent=clean(header(request, "user-agent"), MAX_USER_AGENT_CHARS),
        request_id=clean(header(request, "x-request-id"), MAX_REQUEST_ID_CHARS),
        trace_id=_trace_id(request),
        metadata={
            "method": request.method,
            "path": clean(request.url.path, MAX_PATH_CHARS),
            "status": status,
        }
        | (extra or {}),
    )
    try:
        return AuditEvent(**fields)
    except ValidationError as exc:
        # A trusted proxy may forward something that is no address ("unknown"): the event is
        # recorded without one rather than the request failing.
        if not fields["source_ip"] or any(e["loc"][:1] != ("source_ip",) for e in exc.errors()):
            raise
        return AuditEvent(**{**fields, "source_ip": None})


async def record(request: Request, event: AuditEvent) -> None:
    """Publish and wait for JetStream's ack; 503 + ``Retry-After`` if the broker can't take it."""
    publisher: Publisher = request.app.state.publisher
    try:
        await publisher.publish(event)
    except PublishUnavailable as exc:
        retry_after = str(request.app.state.settings.retry_after_seconds)
        raise HTTPException(
            503,
            "audit log unavailable, retry later",
            headers={"Retry-After": retry_after},
        ) from exc


async def current_actor(request: Request) -> str:
    """The authenticated actor; otherwise record a ``denied`` event (one of its own, or folded
    with others from the same source: ``audit_events.folding``), then answer 401 — or 429
    past the budget."""
    settings = request.app.state.settings
    try:
        return authenticate(
            request.headers.get("authorization"),
            settings.jwt_secret,
            max_lifetime=settings.jwt_max_lifetime_seconds,
        )
    except AuthError as exc:
        denials: Folding = request.app.state.denials
        source = source_key(peer(request), settings.denied_ipv6_prefix)
        verdict = denials.verdict(source)
        status = 429 if verdict == "refuse" else 401
        event = build_event(
            request,
            actor_type="anonymous",
            actor_id="anonymous",
            outcome="denied",
            status=status,
            extra={"reason": exc.code},
        )
        if verdict == "record":
            await record(request, event)
        else:
            denials.fold(source, event, denied_requests=1, statuses={str(status): 1})
        if status == 429:
            retry = str(max(1, round(denials.window)))
            raise HTTPException(429, "too many denied requests", {"Retry-After": retry}) from None
        raise HTTPException(
            401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        ) from None


Actor = Annotated[str, Depends(current_actor)]
