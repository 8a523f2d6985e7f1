"""The audit event: one typed definition, its versioned compact JSON encoding, strict decoding.

The API builds events, the consumer decodes them; both go through this module so that what
the broker holds, what the consumer accepts and what the table stores are the same shape.
Decoding never trusts the wire: anything malformed raises :class:`InvalidEvent` with a
reason precise enough to put in a dead-letter header.
"""

import operator
import socket
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
)

SCHEMA_VERSION: Literal[1] = 1
MAX_EVENT_BYTES = 128 * 1024
"""Largest encoded event accepted. The API's own events stay far below (a PATCH body of at most
64 KiB contributes only its field names); anything bigger was not written by this system."""

MAX_ID_CHARS = 256
"""Longest actor or resource id."""
MAX_USER_AGENT_CHARS = 1024
MAX_REQUEST_ID_CHARS = 128

Outcome = Literal["success", "failure", "denied"]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Action = Annotated[
    str, Field(min_length=3, max_length=128, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
]


def canonical_ip(text: str) -> str:
    """``text`` as an IPv4 or IPv6 address in canonical form, or ValueError.

    The C library's parser, not :mod:`ipaddress` (five times slower, and the consumer checks
    every event): the same strict syntax (dotted quads without leading zeros), but scoped
    addresses such as ``fe80::1%eth0`` are refused, as PostgreSQL's ``inet`` would refuse them.
    """
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ValueError(f"not an IPv{6 if family == socket.AF_INET6 else 4} address") from None


IpAddress = Annotated[str, Field(max_length=64), AfterValidator(canonical_ip)]
"""An IPv4 or IPv6 address in its canonical text form (stored as PostgreSQL inet)."""


class InvalidEvent(ValueError):
    """Raised when bytes are not a valid audit event; ``reason`` says exactly why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuditEvent(BaseModel):
    """Who (actor) did what (action) to which resource, when, from where, with what outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    id: UUID
    occurred_at: AwareDatetime
    actor_type: Name
    actor_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    action: Action
    resource_type: Name
    resource_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    outcome: Outcome
    source_ip: IpAddress | None = None
    user_agent: str | None = Field(None, max_length=MAX_USER_AGENT_CHARS)
    request_id: str | None = Field(None, max_length=MAX_REQUEST_ID_CHARS)
    trace_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


def encode(event: AuditEvent) -> bytes:
    """Compact JSON with ``schema_version``; absent optional fields are left out."""
    return event.model_dump_json(exclude_none=True).encode()


def decode(data: bytes) -> AuditEvent:
    """Parse and validate one encoded event, or raise :class:`InvalidEvent` with the reason."""
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event is {len(data)} bytes, more than the {MAX_EVENT_BYTES} allowed")
    try:
        return AuditEvent.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    """The first error as ``field: message`` (plus how many more), short enough for a header."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        return f"not JSON: {first['msg']}"
    return f"{where}: {first['msg']}{more}"


EVENT_COLUMNS = (
    "id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "source_ip",
    "user_agent",
    "request_id",
    "trace_id",
    "metadata",
)
"""The event's fields stored as they are, in row order (``schema_version`` is not stored)."""
COLUMNS = (*EVENT_COLUMNS, "stream_seq")
"""The ``audit_events`` columns the consumer writes (``recorded_at`` is the database's), in the
order of :func:`row`'s values: the COPY column list is this tuple."""
Row = tuple[Any, ...]
_event_values = operator.attrgetter(*EVENT_COLUMNS)


def row(event: AuditEvent, stream_seq: int) -> Row:
    """The event as an ``audit_events`` row, in :data:`COLUMNS` order."""
    return (*_event_values(event), stream_seq)
