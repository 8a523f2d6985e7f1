"""One fetched batch, checked and decoded: the rows to store (each with the digest the sealer
will seal), and a reason for every message that must not become a row (those go to the
dead-letter stream).

A message becomes a row only if its producer signed exactly these bytes with a key we hold
(``authorship.py``) and they are the event's canonical form (so ``audit-verify`` can rebuild
them from the row). A forged, altered or unsigned message is dead-lettered as ``signature``.
It must also arrive on its action's subject: the broker lets each producer publish only its
own subjects (``audit-query`` only ``audit.events.audit.>``), so this check binds what an
identity may publish to the actions it may record.
"""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.msg import Msg

from audit_consumer.puller import delivery
from audit_events import InvalidEvent, Row, StreamNames, decode, row
from audit_events.authorship import SIGNATURE_HEADER, EventKeys
from audit_events.model import canonical, event_values


@dataclass
class Batch:
    """One fetch, decoded: rows to store (``valid[i]`` carries ``rows[i]``) and dead letters."""

    msgs: list[Msg]
    rows: list[Row] = field(default_factory=list)
    valid: list[Msg] = field(default_factory=list)
    dead: list[tuple[Msg, str, str]] = field(default_factory=list)  # (msg, kind, reason)
    redelivered: int = 0  # valid ones JetStream delivered before (metric only)
    epoch: int | None = None  # the stream incarnation the batch came from (None: unaccounted)


@dataclass(frozen=True)
class Checks:
    """What a message must pass: our producers' keys, and until when (if ever) schema_version 1
    events may come unsigned (producers still rolling to this version)."""

    keys: EventKeys
    accept_unsigned_until: datetime | None = None
    names: StreamNames = field(default_factory=StreamNames)

    def accepting_unsigned(self) -> bool:
        until = self.accept_unsigned_until
        return until is not None and datetime.now(UTC) < until


def decode_batch(msgs: list[Msg], checks: Checks, epoch: int | None) -> Batch:
    """Check and decode a batch: rows for the authentic events, a reason for each other one."""
    batch = Batch(msgs, epoch=epoch)
    unsigned_ok = checks.accepting_unsigned()
    for msg in msgs:
        signature = (msg.headers or {}).get(SIGNATURE_HEADER)
        if signature is None and unsigned_ok:
            pass  # schema_version 1 from a producer still being rolled (checked below)
        elif why := checks.keys.check(msg.data, signature):
            batch.dead.append((msg, "signature", f"bad signature: {why}"))
            continue
        try:
            event = decode(msg.data)
        except InvalidEvent as exc:
            batch.dead.append((msg, "invalid", exc.reason))
            continue
        data = canonical(event_values(event))
        if signature is None and event.schema_version != 1:
            batch.dead.append((msg, "signature", "bad signature: unsigned"))
            continue
        if signature is not None and data != msg.data:  # signed, but not by our encoder
            batch.dead.append((msg, "invalid", "not the event's canonical form (model.encode)"))
            continue
        if signature is not None and (why := checks.keys.may_sign(signature, event.action)):
            batch.dead.append((msg, "signature", f"bad signature: {why}"))
            continue
        if msg.subject != (expected := checks.names.event_subject(event.action)):
            batch.dead.append((msg, "invalid", f"action {event.action} must arrive on {expected}"))
            continue
        stream_seq, delivered = delivery(msg)
        digest = hashlib.sha256(data).digest()
        batch.rows.append(row(event, stream_seq, signature, digest, epoch))
        batch.valid.append(msg)
        batch.redelivered += delivered > 1
    return batch
