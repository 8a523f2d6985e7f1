"""One trace from the caller's request to the database row: the API continues the caller's
``traceparent``, the publish injects it into the NATS headers, the consumer continues it per
message, and the row's ``trace_id`` is the same id. Spans land in an in-memory exporter."""

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from audit_api.main import create_app
from audit_api.publisher import MeteredPublisher
from audit_api.settings import Settings as ApiSettings
from audit_consumer.consumer import Consumer
from audit_consumer.settings import Settings
from audit_events import tracing
from audit_events.auth import issue_token
from audit_events.broker import BrokerSettings
from tests.env import EVENT_KEY, JWT_SECRET
from tests.helpers import wait_for

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A real tracer provider for this test only. OpenTelemetry lets a process set its global
    provider once; we reset that (private) global afterwards, so the tests that follow run with
    tracing off, as a process without OTEL_EXPORTER_OTLP_ENDPOINT does."""
    assert not tracing.enabled(), "another test left a global tracer provider behind"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    PsycopgInstrumentor().instrument(enable_commenter=False)
    try:
        yield exporter
    finally:
        PsycopgInstrumentor().uninstrument()
        provider.shutdown()
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()


async def test_one_trace_from_request_to_row(
    spans: InMemorySpanExporter, streams: Settings, db: Any
) -> None:
    spans.clear()
    broker = streams.model_dump(by_alias=True, include={*BrokerSettings.model_fields, "names"})
    publisher = MeteredPublisher(
        ApiSettings.model_validate(
            {"AUDIT_JWT_SECRET": JWT_SECRET, "AUDIT_EVENT_KEYS": EVENT_KEY, **broker}
        )
    )
    await publisher.start()
    consumer = Consumer(streams)
    worker = asyncio.create_task(consumer.run())
    app = create_app(ApiSettings(AUDIT_JWT_SECRET=JWT_SECRET), publisher)
    transport = httpx.ASGITransport(app=app)
    try:
        await wait_for(lambda: publisher.ready and consumer.db_ok)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.patch(
                "/accounts/acc-t",
                json={"name": "x"},
                headers={
                    "Authorization": f"Bearer {issue_token(JWT_SECRET, 'tracy')}",
                    "traceparent": TRACEPARENT,
                },
            )
        assert response.status_code == 200
        event_id = response.json()["audit_event_id"]
        await wait_for(lambda: consumer.stats.stored == 1)
    finally:
        consumer.stop()
        await worker
        await publisher.close()

    cur = await db.execute("SELECT trace_id FROM audit_events WHERE id = %s", (event_id,))
    assert await cur.fetchone() == (CALLER_TRACE,)

    finished = spans.get_finished_spans()
    by_name = {s.name: s for s in finished}
    in_trace = {s.name for s in finished if f"{s.context.trace_id:032x}" == CALLER_TRACE}
    assert {
        "PATCH /accounts/{account_id}",
        "publish audit.events.account.update",
        "consume audit event",
        "store audit batch",
    } <= in_trace, sorted(in_trace)
    publish = by_name["publish audit.events.account.update"]
    consume = by_name["consume audit event"]
    assert consume.parent is not None
    assert consume.parent.span_id == publish.context.span_id  # continued across NATS
    batch = by_name["store audit batch"]
    assert batch.parent is not None
    assert batch.parent.span_id == consume.context.span_id
    writes = [
        s
        for s in finished
        if s.name == "COPY audit_events"
        and s.parent is not None
        and s.parent.span_id == batch.context.span_id
    ]
    assert writes, sorted(s.name for s in finished)  # the database write itself is in the trace


def test_tracing_is_off_again_for_the_tests_that_follow() -> None:
    assert not tracing.enabled()
    assert tracing.current_trace_id() is None
