"""``GET /audit-events/feed``: every stored event exactly once, in commit-horizon order, for
SIEMs that poll (the cursor logic is ``store.feed``). Polls are recorded folded, one record per
reader, feed session and window."""

from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from audit_query import answers, store
from audit_query.deps import Cursor, Limit, Parts, Reader, Services
from audit_query.recording import record
from audit_query.routes.events import bad_cursor

router = APIRouter(responses=answers.READ_RESPONSES)


AcceptCut = Annotated[
    int | None,
    Query(ge=0, le=2**62, description="Go on past the cuts numbered up to this (a 410 named them)"),
]
GONE: dict[int | str, dict[str, Any]] = {
    410: {
        "model": answers.Gone,
        "description": "Retention removed rows that sort after this position: they were missed."
        " Fetch them from the archives, then poll again with accept_cut",
    }
}


@router.get("/audit-events/feed", response_model=answers.FeedPage, responses=GONE)
async def follow(
    request: Request,
    actor: Reader,
    app: Services,
    after: Cursor = None,
    limit: Limit = 100,
    accept_cut: AcceptCut = None,
) -> Response:
    """Every stored event exactly once, in commit-horizon order; poll with ``next_cursor``.
    Never a silent skip: a position behind rows retention removed answers 410, naming the cuts
    (removed rows can sort between kept ones: late events get new transaction ids)."""
    async with app.pool.connection() as conn:
        try:
            if after and (gone := await _missed(conn, app, after, accept_cut or 0)):
                return gone
            page = await store.feed(conn, after, limit, app.trust)
        except store.BadCursor as exc:
            raise bad_cursor(exc, "after") from None
    polled = {"polls": 1, "rows": len(page.items)}
    fold = (app.feeds, (actor, page.session), polled)
    await record(request, app.publisher, actor, "audit.feed", {"session": page.session}, fold=fold)
    return answers.send({"items": page.items, "next_cursor": page.next_cursor})


async def _missed(
    conn: psycopg.AsyncConnection[Any], app: Parts, after: str, accepted: int
) -> Response | None:
    """410 if a cut not yet accepted removed rows after the position ``after``."""
    tx_id, event_id, _ = store.decode_cursor(after, int, UUID, str)
    missed: list[dict[str, Any]] = [
        {"seal": seq, "partition": cut.partition, "rows": cut.rows, "lo": cut.lo.isoformat(),
         "hi": cut.hi.isoformat()}
        for seq, cut in await app.trust.cuts(conn)
        if seq > accepted and cut.removed_after(tx_id, str(event_id))
    ]  # fmt: skip
    if not missed:
        return None
    detail = (
        f"retention removed {sum(c['rows'] for c in missed)} rows after this position;"
        f" get them from the archives, then poll with accept_cut={missed[-1]['seal']}"
    )
    return JSONResponse({"detail": detail, "cuts": missed}, status_code=410)
