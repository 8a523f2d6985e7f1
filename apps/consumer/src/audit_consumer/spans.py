"""The consumer's spans: one per message, continuing the trace its headers carry, and one per
batch write. Only when tracing is on (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

from contextlib import AbstractContextManager

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from audit_events import tracing

TRACER = trace.get_tracer("audit_consumer")


def consume_spans(msgs: list[Msg]) -> list[Span]:
    """One CONSUMER span per message, child of the publish span its headers carry, so each
    event's trace runs from the HTTP request to its row. The caller ends them."""
    if not tracing.enabled():
        return []
    return [
        TRACER.start_span(
            "consume audit event",
            context=tracing.extract(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.message.id": (msg.headers or {}).get("Nats-Msg-Id", ""),
                "messaging.nats.stream_sequence": msg.metadata.sequence.stream,
            },
        )
        for msg in msgs
    ]


def batch_span(spans: list[Span], size: int) -> AbstractContextManager[Span]:
    """The batch write: a child of the first message's span, linked to all the others (a span
    has one parent; links keep every event's trace one click from its INSERT)."""
    parent = trace.set_span_in_context(spans[0]) if spans else None
    links = [Link(s.get_span_context()) for s in spans[1:]]
    return TRACER.start_as_current_span(
        "store audit batch",
        context=parent,
        links=links,
        attributes={"messaging.batch.message_count": size},
    )
