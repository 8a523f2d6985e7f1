"""``audit-query``: read the audit log over HTTP, with the API's token issuer and scope
``audit:read``, through its own SELECT-only database login.

This module assembles the service: the parts (``deps.Parts``: pool, publisher, folds), the
routes (``routes/``), the 422 handler, and uvicorn behind the bounded edge. Every read is
recorded before it is answered (``recording.py``); the SQL is in ``store.py``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import psycopg
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from audit_events import tracing
from audit_events.broker import QUERY
from audit_events.folding import Folding
from audit_events.publishing import JetStreamPublisher
from audit_events.seals import SealKeys
from audit_query import metrics
from audit_query.deps import Parts
from audit_query.exporting import ExportGate
from audit_query.recording import publish_folded
from audit_query.routes import events, export, feed, probes, viewer
from audit_query.settings import Settings
from audit_query.trust import SealTrust
from audit_web.docs import DocsHeaders
from audit_web.edges import bounded_http

log = logging.getLogger("audit.query")

POOL_WAIT_SECONDS = 5.0
BOUNDED_HTTP = bounded_http("AUDIT_QUERY_")
"""httptools with a head timeout and size and connection caps (``AUDIT_QUERY_*``)."""


def pool_for(settings: Settings, size: int | None = None) -> AsyncConnectionPool:
    """Read-only, REPEATABLE READ (the feed reads the horizon and the rows in one snapshot),
    each statement bounded by the timeout; a request that finds every connection busy for
    ``POOL_WAIT_SECONDS`` gets 503."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        set_json_loads(orjson.loads, conn)
        await conn.execute("SET TimeZone TO 'UTC'")  # exports format times in it
        await conn.commit()

    options = f"-c statement_timeout={settings.statement_timeout_ms}"
    return AsyncConnectionPool(
        settings.reader_database_url,
        min_size=1,
        max_size=size or settings.db_connections,
        timeout=POOL_WAIT_SECONDS,
        kwargs={"options": options, "connect_timeout": 5},
        configure=configure,
        open=False,
    )


def create_app(settings: Settings, pool: AsyncConnectionPool | None = None) -> FastAPI:
    """The service; tests hand in an open pool and run the app's lifespan around requests."""
    publisher = JetStreamPublisher(
        settings, QUERY, on_connection=lambda up: metrics.NATS_CONNECTED.set(int(up))
    )
    parts = Parts(
        settings,
        pool or pool_for(settings),
        publisher,
        feeds=Folding(settings.fold_seconds, events=1, overflow="record"),
        denials=Folding(settings.fold_seconds, events=1),
        export_pool=pool_for(settings, settings.max_exports),
        exports=ExportGate(settings.max_exports, settings.max_exports_per_reader),
        trust=SealTrust(SealKeys.parse(keys) if (keys := settings.seal_public_keys) else None),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if pool is None:
            await parts.pool.open(wait=False)
        await parts.export_pool.open(wait=False)
        await publisher.start()
        publish = partial(publish_folded, publisher)
        flushing = [
            asyncio.create_task(folding.flush_every_window(publish))
            for folding in (parts.feeds, parts.denials)
        ]
        try:
            yield
        finally:
            for task in flushing:
                task.cancel()
            for folding in (parts.feeds, parts.denials):  # the last windows' counts
                await folding.flush(publish)
            await publisher.close()
            await parts.export_pool.close()
            if pool is None:
                await parts.pool.close()

    # FastAPIOffline: /docs loads its scripts from this app, not from a CDN.
    app = FastAPIOffline(
        title="audit-query",
        summary="Read the audit log: filters, stable pages, a gap-free feed, exports",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.parts = parts
    app.add_middleware(DocsHeaders)
    for routes in (probes, feed, export, events, viewer):  # /feed, /export before /{event_id}
        app.include_router(routes.router)

    @app.exception_handler(PoolTimeout)
    async def busy(_: Request, __: PoolTimeout) -> Response:
        """Every database connection busy: come back, never a 500."""
        body = {"detail": "busy: every database connection is in use; retry later"}
        return JSONResponse(body, 503, {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """422 naming the parameter; on the viewer's page, as the page with the message."""
        if request.url.path != "/":
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        return await viewer.invalid_page(request, problems)

    return app


def main() -> None:
    tracing.configure_logging("audit-query")
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=BOUNDED_HTTP,
        loop="uvloop",
        timeout_keep_alive=int(BOUNDED_HTTP.limits.keep_alive_seconds) + 1,  # edges.py closes first
    )
