"""Prometheus metrics of the API: requests by route template, publish latency and failures.

Labels are bounded: the route *template* (``/accounts/{account_id}``), never the raw path.
With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` makes ``/metrics`` aggregate every
worker (``audit-api`` sets it up itself when ``AUDIT_API_WORKERS > 1``).
"""

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter(
    "audit_api_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "audit_api_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
PUBLISH_SECONDS = Histogram(
    "audit_api_publish_duration_seconds", "Publish until JetStream's ack", buckets=LATENCY_BUCKETS
)
PUBLISH_FAILURES = Counter(
    "audit_api_publish_failures_total", "Publishes that got no ack (answered 503)", ["reason"]
)
NATS_CONNECTED = Gauge(
    "audit_api_nats_connected", "1 if this process is connected to NATS", multiprocess_mode="min"
)


def render(_: Request) -> Response:
    """``/metrics`` in the text format; every worker's values when running multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def record_request(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """HTTP middleware: count and time every request by its route template."""
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route: Any = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, template, str(status)).inc()
        REQUEST_SECONDS.labels(request.method, template).observe(time.perf_counter() - started)
