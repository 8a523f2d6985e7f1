"""``audit-api``: the FastAPI app factory and the uvicorn entry point."""

import asyncio
import importlib.metadata
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit_api import metrics
from audit_api.publisher import MeteredPublisher, Publisher
from audit_api.routes import router
from audit_api.settings import Settings
from audit_events import tracing
from audit_events.folding import Folding
from audit_web.docs import DocsHeaders
from audit_web.edges import bounded_http

BOUNDED_HTTP = bounded_http("AUDIT_API_")
"""httptools with a head timeout and size and connection caps (``AUDIT_API_*``)."""


def create_app(settings: Settings | None = None, publisher: Publisher | None = None) -> FastAPI:
    """The API; tests pass their own ``publisher``, production connects to ``NATS_URL``."""
    settings = settings or Settings()
    tracing.init_tracing("audit-api")  # per process: each uvicorn worker exports its own spans

    denials = Folding(
        settings.denied_window_seconds,
        settings.denied_events_per_source,
        settings.denied_requests_per_source,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = publisher or MeteredPublisher(settings)
        app.state.publisher = active
        await active.start()
        folding = asyncio.create_task(denials.flush_every_window(active.publish))
        try:
            yield
        finally:
            folding.cancel()
            await denials.flush(active.publish)  # the last window's folded denials
            await active.close()

    # FastAPIOffline: /docs and /redoc load their scripts from this app (the fastapi-offline
    # package ships them), not from a CDN a firewalled network cannot reach.
    app = FastAPIOffline(
        title="Audit API",
        summary="Placeholder accounts API; every request leaves an audit event",
        version=importlib.metadata.version("audit-api"),
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client-chosen Host header
    )
    app.state.settings = settings
    app.state.publisher = publisher
    app.state.denials = denials
    app.include_router(router)
    app.add_middleware(metrics.RequestMetrics)
    app.add_middleware(DocsHeaders)
    if tracing.enabled():
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    # An APIRoute (not a bare Starlette route) so scrapes are counted under "/metrics".
    app.add_api_route("/metrics", metrics.render, include_in_schema=False)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """405s list every method of the path (Starlette names only the first route's)."""
        if exc.status_code == 405:
            path = request.url.path
            allowed = {
                m
                for r in app.routes
                if isinstance(r, APIRoute) and r.path_regex.match(path)
                for m in r.methods or ()
            }
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, exc)

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        """The process is alive (never depends on NATS)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["probes"],
        responses={503: {"description": "NATS not connected, or the stream is missing"}},
    )
    async def readyz() -> JSONResponse:
        """Ready to take traffic: connected to NATS, and the stream takes events."""
        publisher = app.state.publisher
        ready = publisher is not None and publisher.ready
        body = {"ready": ready, "stream_ok": getattr(publisher, "stream_ok", ready)}
        return JSONResponse(body, status_code=200 if ready else 503)

    metrics.init_series([*app.routes, *router.routes])
    app.openapi = _with_bearer_scheme(app.openapi)  # type: ignore[method-assign]
    return app


def _with_bearer_scheme(openapi: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with the bearer scheme the /accounts operations name, so /docs
    has "Authorize" and "Try it out" sends the token."""

    def with_scheme() -> dict[str, Any]:
        schema = openapi()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "HS256 JWT (`audit-token` prints one)",
        }
        return schema

    return with_scheme


def worker_app() -> FastAPI:
    """The app as each uvicorn worker process builds it. Workers are spawned, not forked: they
    inherit none of the parent's logging, so each configures its own before the app exists."""
    tracing.configure_logging("audit-api")
    return create_app()


def main() -> None:
    """Serve with uvicorn (uvloop + httptools); ``AUDIT_API_WORKERS`` processes."""
    settings = Settings()  # fail fast, before forking workers, on a bad configuration
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers share metrics through files; a fresh dir per start (stale files lie).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="audit-api-metrics-")
    tracing.configure_logging("audit-api")
    uvicorn.run(
        "audit_api.main:worker_app",
        factory=True,
        log_config=None,  # uvicorn's loggers go through ours (JSON when AUDIT_LOG_FORMAT=json)
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="audit_api.main:BOUNDED_HTTP",  # httptools with head timeout and size caps
        proxy_headers=bool(settings.forwarded_allow_ips.strip()),  # empty: trust no proxy
        forwarded_allow_ips=settings.forwarded_allow_ips,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=int(BOUNDED_HTTP.limits.keep_alive_seconds) + 1,  # edges.py closes first
    )
