"""Dead letters: a message that can never be stored is published, as it came, to the
``AUDIT_DLQ`` stream with why in its headers, and only then acked.

``Nats-Msg-Id`` is ``<stream>-<seq>`` of the original, so a poison message redelivered (a crash
between the DLQ's ack and ours) is dead-lettered once: JetStream drops the second publish.
"""

import logging
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.js.api import PubAck

from audit_consumer import metrics
from audit_events import StreamNames

log = logging.getLogger("audit.consumer")

REASON_HEADER, KIND_HEADER = "Audit-Dlq-Reason", "Audit-Dlq-Kind"
SUBJECT_HEADER, SEQ_HEADER = "Audit-Dlq-Subject", "Audit-Dlq-Stream-Seq"
HEADER_LIMIT = 512


class Publisher(Protocol):
    """What the loop needs of JetStream: publish with an ack (the dead-letter stream)."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> PubAck: ...


async def dead_letter(js: Publisher, names: StreamNames, msg: Msg, kind: str, reason: str) -> bool:
    """Publish the original bytes with why, wait for JetStream's ack; False if JetStream had it
    already (a redelivered poison message is counted once)."""
    meta = msg.metadata
    headers = dict(msg.headers or {})
    headers.update(
        {
            REASON_HEADER: " ".join(reason.split())[:HEADER_LIMIT],
            KIND_HEADER: kind,
            SUBJECT_HEADER: msg.subject,
            SEQ_HEADER: str(meta.sequence.stream),
            "Nats-Msg-Id": f"{meta.stream}-{meta.sequence.stream}",
        }
    )
    ack = await js.publish(
        names.dlq_subject(kind), msg.data, stream=names.dlq_stream, headers=headers
    )
    log.warning("dead-lettered seq %s: %s", meta.sequence.stream, reason)
    if ack.duplicate:
        return False
    metrics.MESSAGES.labels("dead_lettered").inc()
    metrics.DEAD_LETTERS.labels(kind).inc()
    return True
