"""The viewer: the same reads, the same checks and the same records as the JSON API, as HTML
pages (``pages.py`` renders them). The token is pasted once and kept in an HttpOnly,
SameSite=Strict cookie; sign-in and sign-out refuse cross-site posts."""

import dataclasses
from typing import Annotated
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from audit_events.auth import AuthError, ScopeError
from audit_events.authorship import READS
from audit_query import pages, store
from audit_query.deps import SCOPE, Cursor, Filtered, Limit, Services, identify, viewer_actor
from audit_query.routes.events import recorded_event, recorded_page
from audit_query.routes.export import stream_export

router = APIRouter(include_in_schema=False)
MAX_FORM_BYTES = 16384  # a sign-in form holds one token
SESSION_SECONDS = 8 * 3600  # the cookie's life; the token's own expiry still applies


def html(page: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(page, status, headers=pages.HEADERS)


def form_values(request: Request) -> dict[str, str]:
    """What the viewer's form was filled with (the cursor travels in the next-page link)."""
    return {k: v for k, v in request.query_params.items() if k != "cursor"}


def _same_origin(request: Request) -> bool:
    """A form post from this site (browsers send Origin on POST); no Origin: not a browser."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


@router.get("/")
async def view_list(
    request: Request,
    app: Services,
    filters: Filtered,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Response:
    actor = await viewer_actor(request)
    if actor is None:
        return html(pages.sign_in_page(), 401 if request.cookies else 200)
    given = form_values(request)
    filters = _as_shown(filters, given)
    try:
        items, next_cursor, retained = await recorded_page(
            request, app, actor, filters, limit, cursor, via="viewer"
        )
    except store.BadCursor as exc:
        return html(pages.list_page(actor, given, None, None, str(exc)), 422)
    async with app.pool.connection() as conn:
        total = await store.count(conn, filters, pages.COUNT_CAP)
    page = pages.list_page(actor, given, items, next_cursor, total=total, retained=retained)
    return html(page)


def _as_shown(filters: store.Filters, given: dict[str, str]) -> store.Filters:
    """The records of reads are left out unless asked for (``reads``) or filtered for by
    action: they are mostly the reader's own page views."""
    hide = not given.get("reads") and filters.action not in READS
    return dataclasses.replace(filters, hide_reads=hide or None)


@router.get("/download")
async def download(
    request: Request,
    app: Services,
    filters: Filtered,
    format: Annotated[str, Query(pattern="^(ndjson|csv)$")] = "csv",
) -> Response:
    """The current result as a file, through the same bounded, recorded export as the API's."""
    actor = await viewer_actor(request)
    if actor is None:
        return html(pages.sign_in_page(), 401)
    filters = _as_shown(filters, form_values(request))
    return await stream_export(request, app, actor, filters, format, via="viewer")


@router.get("/events/{event_id}")
async def view_event(request: Request, app: Services, event_id: UUID) -> Response:
    actor = await viewer_actor(request)
    if actor is None:
        return html(pages.sign_in_page(), 401)
    item = await recorded_event(request, app, actor, event_id, via="viewer")
    if item is None:
        return html(pages.list_page(actor, {}, None, None, "no such audit event"), 404)
    back = form_values(request)  # the list this event was opened from
    return html(pages.detail_page(actor, item, app.settings.jaeger_url, back))


@router.post("/session")
async def sign_in(request: Request) -> Response:
    """Keep a pasted token in the session cookie, if it may read (else say why not)."""
    if not _same_origin(request):
        return html(pages.sign_in_page("cross-site sign-in refused"), 403)
    body = await _bounded_body(request)
    if body is None:
        return html(pages.sign_in_page("the form is too large"), 413)
    form = parse_qs(body.decode(errors="replace"))
    token = (form.get("token") or [""])[0].strip()
    try:
        await identify(request, f"Bearer {token}")
    except ScopeError:
        return html(pages.sign_in_page(f"this token lacks scope {SCOPE}"), 403)
    except AuthError:
        return html(pages.sign_in_page("not a valid token"), 401)
    response = RedirectResponse("/", 303)
    response.set_cookie(
        pages.SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_SECONDS,
    )
    return response


async def _bounded_body(request: Request) -> bytes | None:
    """The body, read no further than :data:`MAX_FORM_BYTES` (``None`` beyond): a 1 GiB body
    is refused after 16 KiB, not read whole."""
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return body


@router.post("/session/end")
async def sign_out(request: Request) -> Response:
    if not _same_origin(request):  # another site cannot sign you out either
        return html(pages.sign_in_page("cross-site sign-out refused"), 403)
    response = RedirectResponse("/", 303)
    response.delete_cookie(pages.SESSION_COOKIE, httponly=True, samesite="strict")
    return response


async def invalid_page(request: Request, problems: str) -> Response:
    """The list page with what was wrong with its parameters (or the sign-in page)."""
    actor = await viewer_actor(request)
    if actor is None:
        return html(pages.sign_in_page(), 401)
    return html(pages.list_page(actor, form_values(request), None, None, problems), 422)
