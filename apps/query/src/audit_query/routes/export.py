"""``GET /audit-events/export``: the listing's filters as NDJSON or CSV, streamed.

Exports are long reads, so they are bounded apart from everything else: they run on a pool of
their own (``AUDIT_QUERY_MAX_EXPORTS`` connections, so listings, the feed and the viewer keep
theirs), at most ``AUDIT_QUERY_MAX_EXPORTS_PER_READER`` at a time per reader, and each is cut
off ``AUDIT_QUERY_EXPORT_SECONDS`` (plus a margin) after it started, whether or not the client
reads: a client that stops reading cannot hold a connection for longer. Busy: 503 with
``Retry-After``, before anything is sent.
"""

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from audit_query import answers, exporting, store
from audit_query.deps import Filtered, Parts, Reader, Services
from audit_query.exporting import ExportGate
from audit_query.recording import record

router = APIRouter(responses=answers.READ_RESPONSES)
log = logging.getLogger("audit.query.export")
MARGIN_SECONDS = 30.0  # the generator ends cleanly at the bound; this cuts a stalled client


class BoundedStream(StreamingResponse):
    """A streamed response that ends after ``seconds`` whatever the client does, and calls
    ``done`` once it ended (sent, cut off, or never started)."""

    def __init__(self, content: Any, seconds: float, done: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.seconds, self.done = seconds, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(self.seconds):
                await super().__call__(scope, receive, send)
        except TimeoutError:
            log.warning("export cut off after %.0f s: the client stopped reading", self.seconds)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()  # ends the COPY and returns its connection
            self.done()


@router.get(
    "/audit-events/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching event, newest first",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        },
        503: {
            "model": answers.Problem,
            "description": "Too many exports running, or the read cannot be recorded: retry",
        },
    },
)
async def export(
    request: Request,
    actor: Reader,
    app: Services,
    filters: Filtered,
    format: Annotated[str, Query(pattern="^(ndjson|csv)$")] = "ndjson",
    raw: Annotated[
        bool,
        Query(
            description="CSV only: cells exactly as stored. Dangerous: a cell starting with"
            " = + - @ tab or CR (text callers chose) runs as a formula in a spreadsheet;"
            " by default such cells get a leading ' (OWASP, CSV injection)"
        ),
    ] = False,
) -> StreamingResponse:
    """Every matching event, newest first, formatted by PostgreSQL and streamed by ``COPY``
    as it is produced: memory stays flat whatever the size; a client that disconnects ends
    the COPY, and one that reads too slowly is cut off after ``AUDIT_QUERY_EXPORT_SECONDS``."""
    return await stream_export(request, app, actor, filters, format, raw)


async def stream_export(
    request: Request,
    app: Parts,
    actor: str,
    filters: store.Filters,
    format: str,
    raw: bool = False,
    via: str | None = None,
) -> StreamingResponse:
    """An export, bounded and recorded (the API's and the viewer's download alike)."""
    gate: ExportGate = app.exports
    if not gate.enter(actor):
        raise HTTPException(503, "too many exports running; retry later", {"Retry-After": "5"})
    try:
        asked = {"filters": filters.given(), "format": format, "raw": raw}
        await record(request, app.publisher, actor, "audit.export", asked, via=via)
    except BaseException:
        gate.leave(actor)
        raise
    seconds = app.settings.export_seconds
    lines = exporting.export(
        app.export_pool, filters, format, seconds, app.trust, raw and format == "csv"
    )
    media = "application/x-ndjson" if format == "ndjson" else "text/csv"
    return BoundedStream(
        lines,
        seconds + min(MARGIN_SECONDS, seconds),
        lambda: gate.leave(actor),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-events.{format}"'},
    )
