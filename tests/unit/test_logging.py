"""Log lines carry the trace: JSON logs (AUDIT_LOG_FORMAT=json) with trace_id and span_id of the
active span, plain logs with trace_id appended."""

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from audit_events.tracing import _ExportFailures, _Formatter, configure_logging


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


def test_plain_lines_escape_control_characters_so_no_line_can_be_forged() -> None:
    """A field name from a NATS message with a newline must not start a fake log line."""
    forged = "bad field 'x\n2026-01-01 00:00:00 INFO audit.consumer stored 1000'"
    record = logging.LogRecord(
        "audit.t", logging.WARNING, __file__, 1, "dead-lettered: %s", (forged,), None
    )
    text = _Formatter("audit-consumer", as_json=False).format(record)
    assert "\n" not in text
    assert "x\\n2026-01-01" in text


def test_json_lines_stay_one_line_with_a_traceback() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    text = _Formatter("audit-api", as_json=True).format(record)
    assert "\n" not in text
    assert "Traceback" in json.loads(text)["exception"]


def test_configure_logging_is_idempotent() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging("audit-api")
        configure_logging("audit-api")
        ours = [h for h in root.handlers if isinstance(h.formatter, _Formatter)]
        assert len(ours) == 1
    finally:
        root.handlers = before


def test_a_missing_collector_is_reported_once_not_on_every_export(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.exporter")
    log.addFilter(_ExportFailures("http://jaeger:4318"))
    with caplog.at_level(logging.INFO, logger="test.exporter"):
        for _ in range(50):
            log.warning("Transient error: connection refused, retrying")
            log.error("Failed to export spans batch")
    (only,) = caplog.records
    assert only.levelname == "WARNING"
    assert "trace export to http://jaeger:4318 failing" in only.getMessage()
