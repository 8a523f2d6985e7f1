"""``GET /audit-events/feed``: every stored event exactly once, in commit-horizon order, for
SIEMs that poll (the cursor logic is ``store.feed``). Polls are recorded folded, one record per
reader, feed session and window."""

from fastapi import APIRouter, Request, Response

from audit_query import answers, store
from audit_query.deps import Cursor, Limit, Reader, Services
from audit_query.recording import record
from audit_query.routes.events import bad_cursor

router = APIRouter(responses=answers.READ_RESPONSES)


@router.get("/audit-events/feed", response_model=answers.FeedPage)
async def follow(
    request: Request, actor: Reader, app: Services, after: Cursor = None, limit: Limit = 100
) -> Response:
    """Every stored event exactly once, in commit-horizon order; poll with ``next_cursor``."""
    async with app.pool.connection() as conn:
        try:
            page = await store.feed(conn, after, limit, app.trust)
        except store.BadCursor as exc:
            raise bad_cursor(exc, "after") from None
    polled = {"polls": 1, "rows": len(page.items)}
    fold = (app.feeds, (actor, page.session), polled)
    await record(request, app.publisher, actor, "audit.feed", {"session": page.session}, fold=fold)
    return answers.send({"items": page.items, "next_cursor": page.next_cursor})
