"""The core every audit process shares (kept under its first name, ``audit_events``: stored
migrations import it). The event model and its canonical form (``model``), ids, JetStream
names (``naming``); token auth (``auth``), event authorship (``authorship``), seals (``seals``),
the commit horizon (``horizon``); broker identities and the connect loop (``broker``), the
signed acknowledged publish (``publishing``), folding of repeated records (``folding``);
tracing and logging (``tracing``), secret generation (``keygen``)."""

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
