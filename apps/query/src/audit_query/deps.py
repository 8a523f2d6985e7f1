"""What every route of ``audit-query`` depends on, declared once: the service's parts (typed
app state), the filters, and the two ways a caller is identified — the JSON API's bearer token
(:data:`Reader`: 401/403) and the viewer's session cookie (:func:`viewer_actor`).

A denied read is on the record too, folded per source address and reason
(``audit_events.folding``)."""

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.security import HTTPBearer
from psycopg_pool import AsyncConnectionPool
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

from audit_events import model
from audit_events.auth import AuthError, ScopeError, authenticate
from audit_events.folding import Folding, source_key
from audit_events.publishing import JetStreamPublisher
from audit_query import pages, store
from audit_query.exporting import ExportGate
from audit_query.recording import record
from audit_query.settings import Settings
from audit_query.trust import SealTrust
from audit_web.client import MAX_PATH_CHARS, clean, peer

SCOPE = "audit:read"


BEARER = HTTPBearer(
    auto_error=False,
    description="HS256 JWT with scope audit:read (`audit-token --scope audit:read`)",
)
MAX_LIMIT = 1000
MAX_FILTER_CHARS = 1024  # longer than any stored value (user agents are cut at 1024)


@dataclass
class Parts:
    """The service's parts, one per process (``app.state.parts``)."""

    settings: Settings
    pool: AsyncConnectionPool
    publisher: JetStreamPublisher
    feeds: Folding  # feed polls, per reader and feed session
    denials: Folding  # denied reads, per source address and reason
    export_pool: AsyncConnectionPool  # exports only: listings keep the main pool
    exports: ExportGate
    trust: SealTrust  # which rows a seal that checks covers


def parts(request: Request) -> Parts:
    found: Parts = request.app.state.parts
    return found


Services = Annotated[Parts, Depends(parts)]


async def identify(request: Request, authorization: str | None) -> str:
    """The caller, who must hold a token with scope ``audit:read``, else AuthError (the denied
    read recorded, or folded with others from its source)."""
    app: Parts = request.app.state.parts
    try:
        settings = app.settings
        return authenticate(
            authorization, settings.jwt_secret, SCOPE, settings.jwt_max_lifetime_seconds
        )
    except AuthError as exc:
        actor = exc.subject if isinstance(exc, ScopeError) else None
        refused = {"reason": exc.code, "path": clean(request.url.path, MAX_PATH_CHARS)}
        source = source_key(peer(request), app.settings.denied_ipv6_prefix)
        await record(
            request, app.publisher, actor, "audit.query", refused, outcome="denied",
            fold=(app.denials, (source, exc.code), {"denied_requests": 1}),
        )  # fmt: skip
        raise


async def reader(request: Request, _: Annotated[Any, Security(BEARER)]) -> str:
    """The caller of the JSON API: 401 without a valid token, 403 without the scope."""
    try:
        return await identify(request, request.headers.get("authorization"))
    except ScopeError:
        raise HTTPException(403, f"the token lacks scope {SCOPE}") from None
    except AuthError:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        ) from None


Reader = Annotated[str, Depends(reader)]


async def viewer_actor(request: Request) -> str | None:
    """The viewer session cookie's reader; None (the sign-in page) without a valid one."""
    token = request.cookies.get(pages.SESSION_COOKIE)
    if token is None:
        return None
    try:
        return await identify(request, f"Bearer {token}")
    except AuthError:
        return None


def _network(text: str) -> str:
    """A CIDR PostgreSQL's ``inet`` takes (a scoped IPv6 address, ``fe80::1%eth0``, it refuses)."""
    try:
        if "%" in text:
            raise ValueError("scoped")
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("an IP address or CIDR, e.g. 10.0.0.7 or 10.0.0.0/8") from None


def _blank_is_none(value: Any) -> Any:
    """A form's empty field means "any" (the viewer's form sends every field)."""
    return None if value == "" else value


Blank = BeforeValidator(_blank_is_none)
Text = Annotated[
    Annotated[model.Text, StringConstraints(max_length=MAX_FILTER_CHARS)] | None, Blank
]
Network = Annotated[str | None, Blank, AfterValidator(lambda v: v and _network(v))]


def _utc(moment: datetime | None) -> datetime | None:
    """In UTC: PostgreSQL refuses offsets of 16 hours and more, which Python takes."""
    try:
        return moment and moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once in UTC") from None


When = Annotated[AwareDatetime | None, Blank, AfterValidator(_utc)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[
    str | None,
    Query(
        max_length=store.MAX_CURSOR_CHARS,
        pattern="^[A-Za-z0-9_-]*$",
        description="The next_cursor of the previous answer: an opaque token of this service",
    ),
]

# What the OpenAPI document says each filter accepts — exactly what the parsers above take, so
# generated clients (and schemathesis) agree with the service: an empty value means no filter.
_BLANK = {"type": "string", "maxLength": 0}
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_TEXT = Query(
    json_schema_extra={
        "anyOf": [{"type": "string", "maxLength": MAX_FILTER_CHARS, "pattern": "^[^\\x00]*$"}]
    }
)
_NETWORK = Query(
    description="An address or a network (CIDR); IPv6 networks are accepted too",
    json_schema_extra={
        "anyOf": [
            {"type": "string", "format": "ipv4"},
            {"type": "string", "format": "ipv6"},
            {"type": "string", "pattern": f"^({_OCTET}\\.){{3}}{_OCTET}/(3[0-2]|[12]?[0-9])$"},
            _BLANK,
        ]
    },
)
_WHEN = Query(
    description="ISO 8601 with an offset, on occurred_at",
    json_schema_extra={"anyOf": [{"type": "string", "format": "date-time"}, _BLANK]},
)
_OUTCOME = Query(json_schema_extra={"anyOf": [{"enum": ["success", "failure", "denied"]}, _BLANK]})


def filters(
    actor_type: Annotated[Text, _TEXT] = None,
    actor_id: Annotated[Text, _TEXT] = None,
    action: Annotated[Text, _TEXT] = None,
    resource_type: Annotated[Text, _TEXT] = None,
    resource_id: Annotated[Text, _TEXT] = None,
    outcome: Annotated[Literal["success", "failure", "denied"] | None, Blank, _OUTCOME] = None,
    source_ip: Annotated[Network, _NETWORK] = None,
    request_id: Annotated[Text, _TEXT] = None,
    trace_id: Annotated[Text, _TEXT] = None,
    since: Annotated[When, _WHEN] = None,
    until: Annotated[When, _WHEN] = None,
) -> store.Filters:
    """The filters of the listing, the export and the viewer (``since``/``until`` on
    ``occurred_at``); an empty value is no filter."""
    return store.Filters(
        actor_type, actor_id, action, resource_type, resource_id, outcome, source_ip,
        request_id, trace_id, since, until,
    )  # fmt: skip


Filtered = Annotated[store.Filters, Depends(filters)]
