"""What the JSON API answers, declared for the OpenAPI document (generated clients trust it;
schemathesis checks every answer against it). The routes send rows serialised by orjson
directly; these models describe them, they are not instantiated per row."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from fastapi import Response
from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Why a request was not answered (FastAPI's error body)."""

    detail: str


READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid bearer token"},
    403: {"model": Problem, "description": "The token lacks scope audit:read"},
    503: {
        "model": Problem,
        "description": "This read cannot be recorded now, or every database connection is busy:"
        " retry after Retry-After",
    },
}
"""What every read may answer besides its own result (routes add theirs)."""


class Removed(BaseModel):
    """A cut: retention removed a partition's rows (they are in its archive)."""

    seal: int = Field(description="The cut's seal number: pass it as accept_cut to go on")
    partition: str
    rows: int
    lo: datetime = Field(description="The partition's range: from")
    hi: datetime = Field(description="to (excluded)")


class Gone(BaseModel):
    """The feed position is behind rows retention removed: the client missed them."""

    detail: str
    cuts: list[Removed]


RETAINED_FROM = "Audit-Retained-From"
"""Response header: the oldest time still stored, once retention removed anything older."""


class Event(BaseModel):
    """One stored audit event, every column, and whether a seal that checks covers it."""

    id: UUID
    occurred_at: datetime
    recorded_at: datetime
    actor_type: str
    actor_id: str
    action: str
    resource_type: str
    resource_id: str
    outcome: Literal["success", "failure", "denied"]
    source_ip: str | None = Field(description="The address as stored (no mask)")
    user_agent: str | None
    request_id: str | None
    trace_id: str | None
    metadata: dict[str, Any]
    stream_seq: int = Field(description="The broker's sequence number of the event")
    signature: str | None
    sealed: bool


class Page(BaseModel):
    items: list[Event]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: no more")


class FeedPage(BaseModel):
    items: list[Event]
    next_cursor: str = Field(description="Pass as after on the next poll (always given)")


def send(content: Any) -> Response:
    """An answer serialised by orjson straight from the rows (datetimes, UUIDs and all):
    FastAPI's encoder walked every value of every row, most of what a page cost beyond its
    query."""
    return Response(orjson.dumps(content), media_type="application/json")
