"""One fetched batch, decoded: the rows to store, and a reason for every message that is not a
valid event (those go to the dead-letter stream, never to the table)."""

from dataclasses import dataclass, field

from nats.aio.msg import Msg

from audit_consumer.puller import delivery
from audit_events import InvalidEvent, Row, decode, row


@dataclass
class Batch:
    """One fetch, decoded: rows to store (``valid[i]`` carries ``rows[i]``) and dead letters."""

    msgs: list[Msg]
    rows: list[Row] = field(default_factory=list)
    valid: list[Msg] = field(default_factory=list)
    dead: list[tuple[Msg, str, str]] = field(default_factory=list)  # (msg, kind, reason)
    redelivered: int = 0  # valid ones JetStream delivered before (metric only)


def decode_batch(msgs: list[Msg]) -> Batch:
    """Decode a batch: rows for the valid events, a reason for each invalid one."""
    batch = Batch(msgs)
    for msg in msgs:
        try:
            event = decode(msg.data)
        except InvalidEvent as exc:
            batch.dead.append((msg, "invalid", exc.reason))
            continue
        stream_seq, delivered = delivery(msg)
        batch.rows.append(row(event, stream_seq))
        batch.valid.append(msg)
        batch.redelivered += delivered > 1
    return batch
