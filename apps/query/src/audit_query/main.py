"""``audit-query``: read the audit log over HTTP, with the API's token issuer and scope
``audit:read``, through its own SELECT-only database login.

Endpoints: ``GET /audit-events`` (filters, keyset pages, newest first), ``GET
/audit-events/{id}``, ``GET /audit-events/feed`` (every row exactly once, in commit-horizon
order, for SIEMs), ``GET /audit-events/export`` (the same filters as NDJSON or CSV, streamed);
``/healthz`` and ``/readyz``; the viewer at ``/`` (``viewer.py``); ``/docs``. Bounded: a
statement timeout, a fixed connection pool, ``limit`` ≤ 1000, exports cut off after
``AUDIT_QUERY_EXPORT_SECONDS``. Every read is itself recorded as an audit event before it is
answered (``recorder.py``); the SQL is in ``store.py``.
"""

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import orjson
import psycopg
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from audit_events import AuditEvent, tracing
from audit_events.auth import AuthError, ScopeError, authenticate
from audit_query import metrics, store, viewer
from audit_query.recorder import Folds, Recorder, RecordUnavailable, read_event
from audit_query.settings import Settings

log = logging.getLogger("audit.query")

SCOPE = "audit:read"
BEARER = HTTPBearer(
    auto_error=False,
    description="HS256 JWT with scope audit:read (`audit-token --scope audit:read`)",
)
MAX_LIMIT = 1000


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("an IP address or CIDR, e.g. 10.0.0.7 or 10.0.0.0/8") from None


def _blank_is_none(value: Any) -> Any:
    """A form's empty field means "any" (the viewer's form sends every field)."""
    return None if value == "" else value


Blank = BeforeValidator(_blank_is_none)
Text = Annotated[str | None, Blank]
Network = Annotated[str | None, Blank, AfterValidator(lambda v: v and _network(v))]
When = Annotated[AwareDatetime | None, Blank]


def pool_for(settings: Settings) -> AsyncConnectionPool:
    """Read-only, REPEATABLE READ (the feed reads the horizon and the rows in one snapshot),
    each statement bounded by the timeout."""

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
        max_size=settings.db_connections,
        kwargs={"options": options, "connect_timeout": 5},
        configure=configure,
        open=False,
    )


def filters(
    actor_type: Text = None,
    actor_id: Text = None,
    action: Text = None,
    resource_type: Text = None,
    resource_id: Text = None,
    outcome: Annotated[Literal["success", "failure", "denied"] | None, Blank] = None,
    source_ip: Network = None,
    request_id: Text = None,
    trace_id: Text = None,
    since: When = None,
    until: When = None,
) -> store.Filters:
    """The filters of the listing, the export and the viewer (``since``/``until`` on
    ``occurred_at``); an empty value is no filter."""
    return store.Filters(
        actor_type, actor_id, action, resource_type, resource_id, outcome, source_ip,
        request_id, trace_id, since, until,
    )  # fmt: skip


Filtered = Annotated[store.Filters, Depends(filters)]


def create_app(settings: Settings, pool: AsyncConnectionPool | None = None) -> FastAPI:
    """The service; tests hand in an open pool and run :func:`lifespan` around requests."""
    recorder = Recorder(settings, settings.names, settings.keys, settings.publish_timeout_seconds)
    feeds, denials = Folds(settings.fold_seconds), Folds(settings.fold_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is None:
            app.state.pool = pool_for(settings)
            await app.state.pool.open(wait=False)
        await recorder.start()
        try:
            yield
        finally:
            for (actor, session), counts in feeds.drain().items():  # the last windows' counts
                folded = {"session": session, **counts}
                fed = read_event(actor, "audit.feed", None, None, metadata=folded)
                await _best_effort(recorder, fed)
            for (ip, reason), counts in denials.drain().items():
                refused = {"reason": reason, **counts}
                denied = read_event(
                    None, "audit.query", ip, None, outcome="denied", metadata=refused
                )
                await _best_effort(recorder, denied)
            await recorder.close()
            if pool is None:
                await app.state.pool.close()

    # FastAPIOffline: /docs loads its scripts from this app, not from a CDN.
    app = FastAPIOffline(
        title="audit-query",
        summary="Read the audit log: filters, stable pages, a gap-free feed, exports",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.pool = pool
    app.state.recorder = recorder

    async def record(
        request: Request,
        actor: str,
        action: str,
        metadata: dict[str, Any],
        outcome: str = "success",
        resource_id: str = "audit_events",
    ) -> None:
        """Put this read on the record before answering it (503 if that cannot be done)."""
        where = _client(request)
        agent = request.headers.get("user-agent")
        event = read_event(
            actor, action, where, agent, outcome=outcome, resource_id=resource_id, metadata=metadata
        )
        try:
            await recorder.record(event)
        except RecordUnavailable as exc:
            metrics.UNRECORDED.inc()
            log.warning("read not answered, its record failed: %s", exc)
            raise HTTPException(503, "cannot record this read now", {"Retry-After": "1"}) from None
        metrics.READS.labels(action, outcome).inc()

    async def identify(request: Request, authorization: str | None) -> str:
        """The caller, who must hold a token with scope ``audit:read``, else AuthError; a
        denied read is on the record too (folded per source address, reason and window)."""
        try:
            return authenticate(authorization, settings.jwt_secret, SCOPE)
        except AuthError as exc:
            where = _client(request)
            if totals := denials.add((where, exc.code), denied_requests=1):
                actor = exc.subject if isinstance(exc, ScopeError) else ""
                refused = {"reason": exc.code, "path": request.url.path, **totals}
                await record(request, actor, "audit.query", refused, outcome="denied")
            raise

    async def reader(request: Request, _: Annotated[Any, Security(BEARER)]) -> str:
        """The caller of the JSON API: 401 without a valid token, 403 without the scope."""
        try:
            return await identify(request, request.headers.get("authorization"))
        except ScopeError:
            raise HTTPException(403, f"the token lacks scope {SCOPE}") from None
        except AuthError:
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            ) from None

    Reader = Annotated[str, Depends(reader)]

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        metrics.NATS_CONNECTED.set(1 if recorder.ready else 0)
        return metrics.render(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str]:
        try:
            async with app.state.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            raise HTTPException(503, "database unreachable") from None
        return {"status": "ready"}

    @app.get("/audit-events")
    async def list_events(
        request: Request,
        actor: Reader,
        filters: Filtered,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Matching events, newest first; follow ``next_cursor`` to page to the end."""
        async with app.state.pool.connection() as conn:
            items, next_cursor = await _bad_cursor_is_422(store.page(conn, filters, limit, cursor))
        asked = {"filters": filters.given(), "limit": limit, "cursor": cursor is not None}
        await record(request, actor, "audit.query", {**asked, "returned": len(items)})
        return {"items": items, "next_cursor": next_cursor}

    @app.get("/audit-events/feed")
    async def follow(
        request: Request,
        actor: Reader,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> dict[str, Any]:
        """Every stored event exactly once, in commit-horizon order; poll with ``next_cursor``."""
        async with app.state.pool.connection() as conn:
            page = await _bad_cursor_is_422(store.feed(conn, after, limit), "after")
        if totals := feeds.add((actor, page.session), polls=1, rows=len(page.items)):
            await record(request, actor, "audit.feed", {"session": page.session, **totals})
        return {"items": page.items, "next_cursor": page.next_cursor}

    @app.get("/audit-events/export")
    async def export(
        request: Request,
        actor: Reader,
        filters: Filtered,
        format: Annotated[str, Query(pattern="^(ndjson|csv)$")] = "ndjson",
    ) -> StreamingResponse:
        """Every matching event, newest first, formatted by PostgreSQL and streamed by ``COPY``
        as it is produced: memory stays flat whatever the size; a client that disconnects ends
        the COPY, and one that reads too slowly is cut off after ``AUDIT_QUERY_EXPORT_SECONDS``."""
        await record(request, actor, "audit.export", {"filters": filters.given(), "format": format})
        lines = store.export(app.state.pool, filters, format, settings.export_seconds)
        media = "application/x-ndjson" if format == "ndjson" else "text/csv"
        disposition = f'attachment; filename="audit-events.{format}"'
        return StreamingResponse(
            lines, media_type=media, headers={"Content-Disposition": disposition}
        )

    @app.get("/audit-events/{event_id}")
    async def get_event(request: Request, actor: Reader, event_id: UUID) -> dict[str, Any]:
        async with app.state.pool.connection() as conn:
            item = await store.one(conn, event_id)
        found = {"found": item is not None}
        await record(request, actor, "audit.read", found, resource_id=str(event_id))
        if item is None:
            raise HTTPException(404, "no such audit event")
        return item

    # The viewer (viewer.py): the same reads, the same checks, the same records, as HTML.

    async def viewer_actor(request: Request) -> str | None:
        """The session cookie's reader; None (the sign-in page) without a valid one."""
        token = request.cookies.get(viewer.SESSION_COOKIE)
        if token is None:
            return None
        try:
            return await identify(request, f"Bearer {token}")
        except AuthError:
            return None

    @app.get("/", include_in_schema=False)
    async def view_list(
        request: Request,
        filters: Filtered,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: str | None = None,
    ) -> Response:
        actor = await viewer_actor(request)
        if actor is None:
            return _html(viewer.sign_in_page(), 401 if request.cookies else 200)
        given = _form_values(request)
        async with app.state.pool.connection() as conn:
            try:
                items, next_cursor = await store.page(conn, filters, limit, cursor)
            except store.BadCursor as exc:
                return _html(viewer.list_page(actor, given, None, None, str(exc)), 422)
        asked = {"filters": filters.given(), "limit": limit, "cursor": cursor is not None}
        await record(
            request, actor, "audit.query", {**asked, "returned": len(items), "via": "viewer"}
        )
        return _html(viewer.list_page(actor, given, items, next_cursor))

    @app.get("/events/{event_id}", include_in_schema=False)
    async def view_event(request: Request, event_id: UUID) -> Response:
        actor = await viewer_actor(request)
        if actor is None:
            return _html(viewer.sign_in_page(), 401)
        async with app.state.pool.connection() as conn:
            item = await store.one(conn, event_id)
        found = {"found": item is not None, "via": "viewer"}
        await record(request, actor, "audit.read", found, resource_id=str(event_id))
        if item is None:
            return _html(viewer.list_page(actor, {}, None, None, "no such audit event"), 404)
        return _html(viewer.detail_page(actor, item, settings.jaeger_url))

    @app.post("/session", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        """Keep a pasted token in the session cookie, if it may read (else say why not)."""
        if not _same_origin(request):
            return _html(viewer.sign_in_page("cross-site sign-in refused"), 403)
        form = parse_qs((await request.body())[:16384].decode(errors="replace"))
        token = (form.get("token") or [""])[0].strip()
        try:
            await identify(request, f"Bearer {token}")
        except ScopeError:
            return _html(viewer.sign_in_page(f"this token lacks scope {SCOPE}"), 403)
        except AuthError:
            return _html(viewer.sign_in_page("not a valid token"), 401)
        response = RedirectResponse("/", 303)
        response.set_cookie(
            viewer.SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/session/end", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        if not _same_origin(request):  # another site cannot sign you out either
            return _html(viewer.sign_in_page("cross-site sign-out refused"), 403)
        response = RedirectResponse("/", 303)
        response.delete_cookie(viewer.SESSION_COOKIE, httponly=True, samesite="strict")
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """422 naming the parameter; on the viewer's page, as the page with the message."""
        if request.url.path != "/":
            return await request_validation_exception_handler(request, exc)
        actor = await viewer_actor(request)
        if actor is None:
            return _html(viewer.sign_in_page(), 401)
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        given = _form_values(request)
        return _html(viewer.list_page(actor, given, None, None, problems), 422)

    return app


def _form_values(request: Request) -> dict[str, str]:
    """What the viewer's form was filled with (the cursor travels in the next-page link)."""
    return {k: v for k, v in request.query_params.items() if k != "cursor"}


def _html(page: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(page, status, headers=viewer.HEADERS)


def _same_origin(request: Request) -> bool:
    """A form post from this site (browsers send Origin on POST); no Origin: not a browser."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _best_effort(recorder: Recorder, event: AuditEvent) -> None:
    try:
        await recorder.record(event)
    except RecordUnavailable as exc:
        log.warning("folded counts not recorded at shutdown: %s", exc)


async def _bad_cursor_is_422(call: Any, name: str = "cursor") -> Any:
    try:
        return await call
    except store.BadCursor as exc:
        detail = [{"loc": ["query", name], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(422, detail) from None


def main() -> None:
    tracing.configure_logging("audit-query")
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        http="httptools",
        loop="uvloop",
    )
