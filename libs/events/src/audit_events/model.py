"""The audit event: one typed definition, its canonical JSON form, strict decoding.

The API builds events, the consumer decodes them; both go through this module so that what
the broker holds, what the consumer accepts and what the table stores are the same shape.
Decoding never trusts the wire: anything malformed raises :class:`InvalidEvent` with a
reason precise enough to put in a dead-letter header.

:func:`canonical` is the one byte form of an event that is signed and sealed: the API publishes
exactly it, the consumer checks the producer's signature over it, and ``audit-verify`` rebuilds
it from a stored row. So a row must give back the same bytes: every value it holds survives
PostgreSQL unchanged (microsecond UTC times, canonical addresses, and metadata numbers that
``jsonb`` keeps exactly — see :func:`_storable`).
"""

import operator
import re
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
)

SCHEMA_VERSION: Literal[2] = 2
"""2: canonical JSON, signed by its producer (``Audit-Signature``). 1: the same fields, unsigned;
accepted only while ``AUDIT_ACCEPT_UNSIGNED_UNTIL`` says so (a rolling upgrade, README)."""
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


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What no ``text`` or ``jsonb`` value can hold: NUL (PostgreSQL refuses it) and lone surrogates
(no UTF-8 form). The model refuses them in every string, so an event a producer's JetStream
publish was acknowledged for is always an event the consumer can store."""


def _text(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("NUL and lone surrogates cannot be stored")
    return value


def storable(text: str) -> str:
    """``text`` with what :data:`_UNSTORABLE` matches replaced by U+FFFD (for text that must be
    stored whatever it holds, such as a decoder's reason quoting the bad input)."""
    return _UNSTORABLE.sub("\ufffd", text)


Text = Annotated[str, AfterValidator(_text)]


def _storable(value: JsonValue) -> None:
    """ValueError unless PostgreSQL's ``jsonb`` gives ``value`` back exactly: jsonb keeps
    numbers as decimals, so ``1e16`` would come back as the integer ``10000000000000000`` and
    ``-0.0`` as ``0.0``; integers beyond 64 bits have no canonical encoding here; no string or
    key may hold what :data:`_UNSTORABLE` matches."""
    if isinstance(value, str):
        _text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _text(key)
            _storable(item)
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    elif isinstance(value, float) and (abs(value) >= 1e16 or str(value) == "-0.0"):
        raise ValueError(f"{value!r} would not be stored exactly (floats must be < 1e16)")
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise ValueError("integers must fit in 64 bits")


def _stored_exactly(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    _storable(value)
    return value


Metadata = Annotated[dict[str, JsonValue], AfterValidator(_stored_exactly)]


class InvalidEvent(ValueError):
    """Raised when bytes are not a valid audit event; ``reason`` says exactly why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuditEvent(BaseModel):
    """Who (actor) did what (action) to which resource, when, from where, with what outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    id: UUID
    occurred_at: AwareDatetime
    actor_type: Name
    actor_id: Text = Field(min_length=1, max_length=MAX_ID_CHARS)
    action: Action
    resource_type: Name
    resource_id: Text = Field(min_length=1, max_length=MAX_ID_CHARS)
    outcome: Outcome
    source_ip: IpAddress | None = None
    user_agent: Text | None = Field(None, max_length=MAX_USER_AGENT_CHARS)
    request_id: Text | None = Field(None, max_length=MAX_REQUEST_ID_CHARS)
    trace_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    metadata: Metadata = Field(default_factory=dict)


def encode(event: AuditEvent) -> bytes:
    """The event's :func:`canonical` bytes (always the current ``schema_version``)."""
    return canonical(event_values(event))


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
COLUMNS = (*EVENT_COLUMNS, "stream_seq", "signature", "digest", "epoch")
"""The ``audit_events`` columns the consumer writes, in the order of :func:`row`'s values: the
COPY column list is this tuple. ``recorded_at`` and ``tx_id`` are the database's own (the writer
login may not set them)."""
Row = tuple[Any, ...]
event_values: "operator.attrgetter[tuple[Any, ...]]" = operator.attrgetter(*EVENT_COLUMNS)
"""The event's values in :data:`EVENT_COLUMNS` order (what :func:`canonical` takes)."""


def row(
    event: AuditEvent,
    stream_seq: int,
    signature: str | None,
    digest: bytes,
    epoch: int | None = None,
) -> Row:
    """The event as an ``audit_events`` row, in :data:`COLUMNS` order: with its producer's
    signature, the SHA-256 of its :func:`canonical` bytes (what the sealer seals), and the
    broker sequence and stream incarnation (epoch) it was delivered with."""
    return (*event_values(event), stream_seq, signature, digest, epoch)


def read_expr(column: str) -> str:
    """The SQL that reads ``column`` back as the model holds it: ``source_ip`` as the text of
    its address (``host()``; an ``inet`` prints a mask otherwise), every other column as is.
    Every reader of rows (the query service, its exports, ``audit-verify``) reads through
    this."""
    return f"host({column})" if column == "source_ip" else column


def read_as(column: str) -> str:
    """:func:`read_expr`, named as the column (for a select list)."""
    expr = read_expr(column)
    return expr if expr == column else f"{expr} AS {column}"


STORED_EVENT = ", ".join("id::text" if c == "id" else read_as(c) for c in EVENT_COLUMNS)
"""A select list of a stored row's :data:`EVENT_COLUMNS` (the id as text): what its
:func:`canonical` bytes are recomputed from (``audit-verify``, retention's archives), after
:func:`stored_values`."""
_IP = EVENT_COLUMNS.index("source_ip")


def stored_values(values: Sequence[Any]) -> tuple[Any, ...]:
    """Values read with :data:`STORED_EVENT` as the model holds them (the address in
    :func:`canonical_ip`'s text)."""
    if values[_IP] is None:
        return tuple(values)
    return (*values[:_IP], canonical_ip(values[_IP]), *values[_IP + 1 :])


def utc_text(moment: datetime) -> str:
    """``2026-11-28T06:54:44.123456Z``: one text per instant, whatever offset it came with."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical(values: Sequence[Any]) -> bytes:
    """The canonical bytes of an event given as :data:`EVENT_COLUMNS` values (from a model or
    from a stored row): compact JSON, keys sorted at every level, every key present (``null``
    when absent), ``occurred_at`` in UTC (``…Z``, microseconds unless zero), the current
    ``schema_version``. ``source_ip`` must already be :func:`canonical_ip`'s text (the model's
    is; a row's is after passing it through that). Signatures and seals are over exactly
    these bytes."""
    out = dict(zip(EVENT_COLUMNS, values, strict=False))  # a row's extra columns fall off
    out["schema_version"] = SCHEMA_VERSION
    moment: datetime = out["occurred_at"]
    if moment.utcoffset():
        out["occurred_at"] = moment.astimezone(UTC)
    return orjson.dumps(out, option=_CANONICAL)


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
