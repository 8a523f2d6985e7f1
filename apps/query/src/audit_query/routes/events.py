"""``GET /audit-events`` (filtered, keyset-paged, newest first) and ``GET /audit-events/{id}``."""

from uuid import UUID

from fastapi import APIRouter, HTTPException, Request, Response

from audit_query import answers, store
from audit_query.deps import Cursor, Filtered, Limit, Reader, Services
from audit_query.recording import record

router = APIRouter(responses=answers.READ_RESPONSES)


def bad_cursor(exc: store.BadCursor, name: str = "cursor") -> HTTPException:
    """A cursor this service did not hand out: 422 naming the parameter, like FastAPI's own."""
    return HTTPException(422, [{"loc": ["query", name], "msg": str(exc), "type": "value_error"}])


@router.get("/audit-events", response_model=answers.Page)
async def list_events(
    request: Request,
    actor: Reader,
    app: Services,
    filters: Filtered,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Response:
    """Matching events, newest first; follow ``next_cursor`` to page to the end."""
    async with app.pool.connection() as conn:
        try:
            items, next_cursor = await store.page(conn, filters, limit, cursor, app.trust)
        except store.BadCursor as exc:
            raise bad_cursor(exc) from None
    asked = {"filters": filters.given(), "limit": limit, "cursor": cursor is not None}
    await record(request, app.publisher, actor, "audit.query", {**asked, "returned": len(items)})
    return answers.send({"items": items, "next_cursor": next_cursor})


@router.get(
    "/audit-events/{event_id}",
    response_model=answers.Event,
    responses={404: {"model": answers.Problem, "description": "No such event"}},
)
async def get_event(request: Request, actor: Reader, app: Services, event_id: UUID) -> Response:
    """One event with every column, and whether a seal covers it yet."""
    async with app.pool.connection() as conn:
        item = await store.one(conn, event_id, app.trust)
    found = {"found": item is not None}
    await record(request, app.publisher, actor, "audit.read", found, resource_id=str(event_id))
    if item is None:
        raise HTTPException(404, "no such audit event")
    return answers.send(item)
