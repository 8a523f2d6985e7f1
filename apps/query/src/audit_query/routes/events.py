"""``GET /audit-events`` (filtered, keyset-paged, newest first) and ``GET /audit-events/{id}``."""

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request, Response

from audit_query import answers, store
from audit_query.deps import Cursor, Filtered, Limit, Parts, Reader, Services
from audit_query.recording import record

router = APIRouter(responses=answers.READ_RESPONSES)


def bad_cursor(exc: store.BadCursor, name: str = "cursor") -> HTTPException:
    """A cursor this service did not hand out: 422 naming the parameter, like FastAPI's own."""
    return HTTPException(422, [{"loc": ["query", name], "msg": str(exc), "type": "value_error"}])


async def recorded_page(
    request: Request,
    app: Parts,
    actor: str,
    filters: store.Filters,
    limit: int,
    cursor: str | None,
    via: str | None = None,
) -> tuple[list[dict[str, Any]], str | None, datetime | None]:
    """A page of the listing, its read on the record (the API's listing and the viewer's), and
    the oldest time still stored if retention removed anything; :class:`store.BadCursor` for a
    cursor this service did not hand out."""
    async with app.pool.connection() as conn:
        items, next_cursor = await store.page(conn, filters, limit, cursor, app.trust)
        retained = await app.trust.retained_from(conn)
    asked = {"filters": filters.given(), "limit": limit, "cursor": cursor is not None}
    metadata = {**asked, "returned": len(items)}
    await record(request, app.publisher, actor, "audit.query", metadata, via=via)
    return items, next_cursor, retained


async def recorded_event(
    request: Request, app: Parts, actor: str, event_id: UUID, via: str | None = None
) -> dict[str, Any] | None:
    """One event (``None``: no such event), its read on the record."""
    async with app.pool.connection() as conn:
        item = await store.one(conn, event_id, app.trust)
    found = {"found": item is not None}
    await record(
        request, app.publisher, actor, "audit.read", found, resource_id=str(event_id), via=via
    )
    return item


RETAINED: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            answers.RETAINED_FROM: {
                "description": "Events before this time were removed by retention (sent when"
                " the listing's range reaches before it)",
                "schema": {"type": "string", "format": "date-time"},
            }
        }
    }
}


@router.get("/audit-events", response_model=answers.Page, responses=RETAINED)
async def list_events(
    request: Request,
    actor: Reader,
    app: Services,
    filters: Filtered,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Response:
    """Matching events, newest first; follow ``next_cursor`` to page to the end. Once
    retention removed older events, a listing reaching before what is left says from when it
    has them (``Audit-Retained-From``)."""
    try:
        found = await recorded_page(request, app, actor, filters, limit, cursor)
    except store.BadCursor as exc:
        raise bad_cursor(exc) from None
    items, next_cursor, retained = found
    answer = answers.send({"items": items, "next_cursor": next_cursor})
    if retained is not None and (filters.since is None or filters.since < retained):
        answer.headers[answers.RETAINED_FROM] = retained.isoformat()  # it reaches before
    return answer


@router.get(
    "/audit-events/{event_id}",
    response_model=answers.Event,
    responses={404: {"model": answers.Problem, "description": "No such event"}},
)
async def get_event(request: Request, actor: Reader, app: Services, event_id: UUID) -> Response:
    """One event with every column, and whether a seal covers it yet."""
    item = await recorded_event(request, app, actor, event_id)
    if item is None:
        raise HTTPException(404, "no such audit event")
    return answers.send(item)
