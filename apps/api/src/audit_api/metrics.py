"""Prometheus metrics of the API: requests by route template, publish latency and failures.

Labels are bounded: the route *template* (``/accounts/{account_id}``), never the raw path.
With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` makes ``/metrics`` aggregate every
worker (``audit-api`` sets it up itself when ``AUDIT_API_WORKERS > 1``).
"""

import os
import time
from collections.abc import Iterable

from fastapi.routing import APIRoute
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
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter(
    "audit_api_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "audit_api_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
PUBLISH_SECONDS = Histogram(
    "audit_api_publish_duration_seconds", "Publish until JetStream's ack", buckets=LATENCY_BUCKETS
)
PUBLISH_FAILURE_REASONS = ("not_connected", "timeout", "error")
PUBLISH_FAILURES = Counter(
    "audit_api_publish_failures_total", "Publishes that got no ack (answered 503)", ["reason"]
)
NATS_CONNECTED = Gauge(
    "audit_api_nats_connected", "1 if this process is connected to NATS", multiprocess_mode="min"
)


def init_series(routes: Iterable[BaseRoute]) -> None:
    """Create every known label set at 0 (each worker): a series that first appears at 1 has
    ``increase() == 0``, so an alert on the first failure of a process would never fire. For
    requests: each route template, method and every status its OpenAPI entry documents."""
    for reason in PUBLISH_FAILURE_REASONS:
        PUBLISH_FAILURES.labels(reason)
    for route in routes:
        if isinstance(route, APIRoute):
            statuses = {str(route.status_code or 200), *map(str, route.responses)}
            for method in route.methods or ():
                for status in statuses:
                    REQUESTS.labels(method, route.path, status)


def render(_: Request) -> Response:
    """``/metrics`` in the text format; every worker's values when running multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Pure ASGI middleware counting and timing every request by its route template (cheaper
    than Starlette's BaseHTTPMiddleware, which costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            # The router sets scope["route"] on a match; its path is the template.
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            REQUEST_SECONDS.labels(method, template).observe(time.perf_counter() - started)
