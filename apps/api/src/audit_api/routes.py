"""``/accounts/{account_id}``: a placeholder resource whose every access is audited.

The account store itself is out of scope; what matters is that each response is sent only
after the audit event describing it was acknowledged by JetStream.
"""

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from audit_api.recording import Actor, build_event, record
from audit_web.client import clean

MAX_BODY_BYTES = 64 * 1024
MAX_FIELD_NAME = 128

PATCH_BODY_SCHEMA = {
    "type": "object",
    "description": "Any JSON object of at most 64 KiB; only its field names are recorded",
    "maxProperties": 1000,
    "propertyNames": {
        "minLength": 1,
        "maxLength": MAX_FIELD_NAME,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",  # no control characters
    },
}

router = APIRouter(tags=["accounts"])
AccountId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Account id")
]


class AuditReceipt(BaseModel):
    """The answer to every audited request: which account, and the id of its audit event."""

    account_id: str
    audit_event_id: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token (a `denied` event is recorded)"},
    429: {
        "description": "Too many denied requests from this source; see `Retry-After` (counted"
        " in a folded `denied` event)"
    },
    503: {"description": "The audit log cannot take the event now; see `Retry-After`"},
}


async def _audited(request: Request, actor: str, account_id: str, **extra: Any) -> AuditReceipt:
    event = build_event(
        request, actor_type="user", actor_id=actor, outcome="success", status=200, extra=extra
    )
    await record(request, event)
    return AuditReceipt(account_id=account_id, audit_event_id=str(event.id))


# Declared, not enforced, here: current_actor checks the token (a FastAPI security dependency
# would parse the header a second time on every request). main.py adds the scheme.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


@router.get("/accounts/{account_id}", responses=ERRORS, openapi_extra={"security": BEARER})
async def read_account(request: Request, account_id: AccountId, actor: Actor) -> AuditReceipt:
    """Read an account (placeholder): records `account.read`."""
    return await _audited(request, actor, account_id)


@router.delete("/accounts/{account_id}", responses=ERRORS, openapi_extra={"security": BEARER})
async def delete_account(request: Request, account_id: AccountId, actor: Actor) -> AuditReceipt:
    """Delete an account (placeholder): records `account.delete`."""
    return await _audited(request, actor, account_id)


@router.patch(
    "/accounts/{account_id}",
    responses={**ERRORS, 413: {"description": "Body larger than 64 KiB"}},
    openapi_extra={
        "security": BEARER,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PATCH_BODY_SCHEMA}},
        },
    },
)
async def update_account(request: Request, account_id: AccountId, actor: Actor) -> AuditReceipt:
    """Update an account (placeholder): records `account.update` with the names (never the
    values) of the top-level fields in the JSON object body."""
    body = await _read_json_object(request)
    return await _audited(request, actor, account_id, fields=sorted(body))


async def _read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object of at most 64 KiB, read without buffering more than that."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid_body("json_invalid", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _invalid_body("dict_type", "body must be a JSON object")
    if len(body) > 1000:
        raise _invalid_body("too_long", "body has more than 1000 fields")
    for name in body:
        if len(name) > MAX_FIELD_NAME or clean(name, MAX_FIELD_NAME) != name:
            raise _invalid_body("field_name", "field names must be 1-128 printable characters")
    return body


def _invalid_body(kind: str, message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (``HTTPValidationError`` in the OpenAPI schema)."""
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": message}])
