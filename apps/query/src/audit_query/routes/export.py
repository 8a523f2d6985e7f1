"""``GET /audit-events/export``: the listing's filters as NDJSON or CSV, streamed."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from audit_query import store
from audit_query.deps import Filtered, Reader, Services
from audit_query.recording import record

router = APIRouter()


@router.get("/audit-events/export")
async def export(
    request: Request,
    actor: Reader,
    app: Services,
    filters: Filtered,
    format: Annotated[str, Query(pattern="^(ndjson|csv)$")] = "ndjson",
) -> StreamingResponse:
    """Every matching event, newest first, formatted by PostgreSQL and streamed by ``COPY``
    as it is produced: memory stays flat whatever the size; a client that disconnects ends
    the COPY, and one that reads too slowly is cut off after ``AUDIT_QUERY_EXPORT_SECONDS``."""
    asked = {"filters": filters.given(), "format": format}
    await record(request, app.publisher, actor, "audit.export", asked)
    lines = store.export(app.pool, filters, format, app.settings.export_seconds)
    media = "application/x-ndjson" if format == "ndjson" else "text/csv"
    disposition = f'attachment; filename="audit-events.{format}"'
    return StreamingResponse(lines, media_type=media, headers={"Content-Disposition": disposition})
