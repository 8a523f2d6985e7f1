"""Shared by every audit process: the event model, its encoding, ids and JetStream names."""

from audit_events import tracing
from audit_events.ids import uuid7
from audit_events.model import (
    COLUMNS,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_USER_AGENT_CHARS,
    SCHEMA_VERSION,
    AuditEvent,
    InvalidEvent,
    Outcome,
    Row,
    canonical_ip,
    decode,
    encode,
    row,
)
from audit_events.naming import StreamNames

__all__ = [
    "COLUMNS",
    "MAX_EVENT_BYTES",
    "MAX_ID_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "MAX_USER_AGENT_CHARS",
    "SCHEMA_VERSION",
    "AuditEvent",
    "InvalidEvent",
    "Outcome",
    "Row",
    "StreamNames",
    "canonical_ip",
    "decode",
    "encode",
    "row",
    "tracing",
    "uuid7",
]
