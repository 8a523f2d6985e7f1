"""``/healthz`` (alive), ``/readyz`` (the database answers) and ``/metrics``."""

from fastapi import APIRouter, HTTPException, Request, Response

from audit_query import metrics
from audit_query.deps import Services

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def prometheus(request: Request, app: Services) -> Response:
    metrics.NATS_CONNECTED.set(1 if app.publisher.ready else 0)
    return metrics.render(request)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(app: Services) -> dict[str, str]:
    try:
        async with app.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception:
        raise HTTPException(503, "database unreachable") from None
    return {"status": "ready"}
