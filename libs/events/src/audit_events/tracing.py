"""OpenTelemetry for every audit process: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

One trace runs from the caller's request to the database row: the API continues an incoming
W3C ``traceparent`` (FastAPI instrumentation), injects the publish span's context into the NATS
message headers, and the consumer continues it per message. ``configure_logging`` adds
``trace_id``/``span_id`` to log lines (``AUDIT_LOG_FORMAT=json`` for one JSON object a line).
"""

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def init_tracing(service: str) -> bool:
    """Install an OTLP/HTTP exporting tracer provider if an endpoint is configured."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or enabled():
        return enabled()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME", service)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    exporter_log.addFilter(_ExportFailures(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]))
    return True


class _ExportFailures(logging.Filter):
    """A collector that is not running (or down) must not flood the logs of the pipeline it
    observes: the exporter logs every failed attempt; we let one line through per interval."""

    def __init__(self, endpoint: str, interval: float = 600) -> None:
        super().__init__()
        self.endpoint, self.interval, self.quiet_until = endpoint, interval, 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.quiet_until:
            return False
        self.quiet_until = now + self.interval
        record.msg = "trace export to %s failing, spans are dropped (%s); next report in %d min"
        record.args = (self.endpoint, record.getMessage()[:200], self.interval // 60)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def enabled() -> bool:
    """True once a real (SDK) tracer provider is installed: here, or by a test."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None outside a recorded trace."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to message headers."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The context a message's headers carry (empty if none)."""
    return propagate.extract(dict(headers or {}))


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """Control characters as visible escapes (``\\n``, ``\\x1b``): client- and broker-supplied
    text in a message can never start a new, forged log line."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class _Formatter(logging.Formatter):
    """Adds the current trace and span ids; one JSON object per line when ``as_json``. Plain
    lines escape control characters in the message (a traceback still follows on its own
    lines); JSON escapes everything by construction."""

    def __init__(self, service: str, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s%(trace)s")
        self.service, self.as_json = service, as_json

    def format(self, record: logging.LogRecord) -> str:
        context = trace.get_current_span().get_span_context()
        ids = (
            {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
            if context.is_valid
            else {}
        )
        if self.as_json:
            entry = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "service": self.service,
                "message": record.getMessage(),
                **ids,
            }
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            return json.dumps(entry)
        record.trace = f" trace_id={ids['trace_id']}" if ids else ""
        record.msg, record.args = escape(record.getMessage()), None  # formatted once, escaped
        return super().format(record)


def configure_logging(service: str) -> None:
    """Log to stderr, plain or JSON (``AUDIT_LOG_FORMAT=json``), with trace ids when tracing.

    Every logger goes through this one handler: uvicorn's too (run it with ``log_config=None``
    so it adds no handlers of its own), so JSON logs are all JSON. Idempotent, and meant to be
    called in every process: uvicorn's workers are spawned and inherit nothing of it."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, _Formatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(service, os.environ.get("AUDIT_LOG_FORMAT") == "json"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("AUDIT_LOG_LEVEL", "INFO").upper())
