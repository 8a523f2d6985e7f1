"""Log lines carry the trace: JSON logs (AUDIT_LOG_FORMAT=json) with trace_id and span_id of the
active span, plain logs with trace_id appended."""

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from audit_events.tracing import _Formatter


def line(as_json: bool, in_span: bool) -> str:
    record = logging.LogRecord("audit.test", logging.INFO, __file__, 1, "stored %d", (3,), None)
    formatter = _Formatter("audit-consumer", as_json)
    if not in_span:
        return formatter.format(record)
    tracer = TracerProvider().get_tracer("test")  # a real tracer, without touching the global
    with tracer.start_as_current_span("work") as span:
        ids = span.get_span_context()
        text = formatter.format(record)
    return text + f"|{ids.trace_id:032x}|{ids.span_id:016x}"


def test_json_lines_carry_trace_and_span_ids() -> None:
    text, trace_id, span_id = line(as_json=True, in_span=True).split("|")
    entry = json.loads(text)
    assert entry["message"] == "stored 3"
    assert entry["service"] == "audit-consumer"
    assert (entry["trace_id"], entry["span_id"]) == (trace_id, span_id)


@pytest.mark.parametrize("as_json", [True, False])
def test_no_span_no_ids(as_json: bool) -> None:
    text = line(as_json=as_json, in_span=False)
    assert "trace_id" not in text
    assert "stored 3" in text


def test_plain_lines_append_the_trace_id() -> None:
    text, trace_id, _ = line(as_json=False, in_span=True).split("|")
    assert text.endswith(f"stored 3 trace_id={trace_id}")
