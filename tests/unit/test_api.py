"""The API's HTTP contract, with a fake publisher: who/what/where in each event, 401 still
recorded, validation errors, and 503 + Retry-After when the broker can't take the event."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from audit_api.main import create_app
from audit_api.settings import Settings
from audit_events.auth import PUBLISHED_SECRETS, issue_token
from tests.env import JWT_SECRET
from tests.fakes import FakePublisher
from tests.helpers import BAD_CREDENTIALS, metric, raw_token

AUTH = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'alice')}"}


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def client(publisher: FakePublisher) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(AUDIT_JWT_SECRET=JWT_SECRET), publisher)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


async def test_patch_records_who_what_where_and_field_names(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.patch(
        "/accounts/acc-42",
        json={"email": "secret@example.com", "name": "Alice"},
        headers={
            **AUTH,
            "User-Agent": "ops-cli/1.0",
            "X-Request-ID": "req-1",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.status_code == 200
    (event,) = publisher.events
    assert response.json() == {"account_id": "acc-42", "audit_event_id": str(event.id)}
    assert (event.actor_type, event.actor_id) == ("user", "alice")
    assert (event.action, event.resource_type, event.resource_id) == (
        "account.update",
        "account",
        "acc-42",
    )
    assert event.outcome == "success"
    assert str(event.source_ip) == "203.0.113.9"
    assert (event.user_agent, event.request_id) == ("ops-cli/1.0", "req-1")
    assert event.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert event.metadata == {
        "method": "PATCH",
        "path": "/accounts/acc-42",
        "status": 200,
        "fields": ["email", "name"],
    }
    assert "secret@example.com" not in event.model_dump_json()  # names, never values


@pytest.mark.parametrize(
    ("method", "action"), [("GET", "account.read"), ("DELETE", "account.delete")]
)
async def test_read_and_delete_are_audited(
    client: httpx.AsyncClient, publisher: FakePublisher, method: str, action: str
) -> None:
    response = await client.request(method, "/accounts/acc_1", headers=AUTH)
    assert response.status_code == 200
    assert publisher.events[0].action == action
    assert response.json()["audit_event_id"] == str(publisher.events[0].id)


@pytest.mark.parametrize(("header", "why"), BAD_CREDENTIALS)
async def test_unauthenticated_gets_401_and_a_denied_event(
    client: httpx.AsyncClient, publisher: FakePublisher, header: Any, why: str
) -> None:
    value = header() if callable(header) else header
    headers = {"Authorization": value} if value is not None else {}
    response = await client.delete("/accounts/acc-9", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    (event,) = publisher.events
    assert (event.actor_type, event.actor_id, event.outcome) == ("anonymous", "anonymous", "denied")
    assert (event.action, event.resource_id) == ("account.delete", "acc-9")
    assert event.metadata["status"] == 401
    assert event.metadata["reason"] == why  # a fixed code, never a library's (attacker's) text


@pytest.mark.parametrize("account_id", ["a" * 65, "bad%20id", "semi;colon", "%C3%A9t%C3%A9"])
async def test_invalid_account_id_is_422_without_event(
    client: httpx.AsyncClient, publisher: FakePublisher, account_id: str
) -> None:
    response = await client.get(f"/accounts/{account_id}", headers=AUTH)
    assert response.status_code == 422
    assert publisher.events == []


async def test_oversize_body_is_413(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    big = {"blob": "x" * (64 * 1024)}
    response = await client.patch("/accounts/acc-1", json=big, headers=AUTH)
    assert response.status_code == 413
    assert publisher.events == []


async def test_oversize_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    response = await client.patch("/accounts/acc-1", content=chunks(), headers=AUTH)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b"not json", b"", b'"str"', b'{"a\\u0000b": 1}', b'{"' + b"k" * 200 + b'": 1}'],
)
async def test_patch_body_must_be_a_json_object_with_sane_names(
    client: httpx.AsyncClient, publisher: FakePublisher, body: bytes
) -> None:
    response = await client.patch("/accounts/acc-1", content=body, headers=AUTH)
    assert response.status_code == 422
    assert publisher.events == []


async def test_broker_down_is_503_with_retry_after(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    publisher.fail = True
    response = await client.patch("/accounts/acc-1", json={"a": 1}, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    # An unauthenticated request can't be answered 401 without its denied event either.
    assert (await client.get("/accounts/acc-1")).status_code == 503


async def test_probes(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    publisher.fail = True
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/healthz")).status_code == 200


async def test_control_characters_never_reach_the_event(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.get(
        "/accounts/acc-1", headers={**AUTH, "User-Agent": "evil\tagent", "X-Request-ID": "r\x7f1"}
    )
    assert response.status_code == 200
    event = publisher.events[0]
    assert (event.user_agent, event.request_id) == ("evil\ufffdagent", "r\ufffd1")


async def test_a_non_ascii_user_agent_is_kept_whole(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    agent = "Prüfgerät/1.0 (日本語)"
    raw = [(b"authorization", AUTH["Authorization"].encode()), (b"user-agent", agent.encode())]
    response = await client.get("/accounts/acc-1", headers=raw)
    assert response.status_code == 200
    assert publisher.events[0].user_agent == agent


async def test_a_trailing_slash_is_not_redirected_to_the_clients_host(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/accounts/acc-1/", headers={**AUTH, "Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_scrapes_are_counted_under_their_route(client: httpx.AsyncClient) -> None:
    def scrapes(text: str, route: str) -> float:
        return metric(text, "audit_api_requests_total", route=route)

    before = (await client.get("/metrics")).text
    text = (await client.get("/metrics")).text
    assert scrapes(text, "/metrics") - scrapes(before, "/metrics") == 1
    assert scrapes(text, "unmatched") == scrapes(before, "unmatched")


async def test_openapi_documents_the_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operations = spec["paths"]["/accounts/{account_id}"]
    assert set(operations) == {"get", "patch", "delete"}
    # A bearer scheme, so /docs' "Authorize" sends the token ("Try it out" otherwise only 401s).
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert all(op["security"] == [{"bearer": []}] for op in operations.values())
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text  # its scripts come from this app
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert (await client.get(f"/static-offline-docs/{asset}")).status_code == 200


async def test_a_token_whose_subject_cannot_be_encoded_is_denied_not_500(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    token = raw_token('{"sub": "\\ud800", "exp": 1099511627776}')
    response = await client.get("/accounts/acc-1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    (event,) = publisher.events
    assert (event.outcome, event.metadata["reason"]) == ("denied", "bad_subject")


@pytest.mark.parametrize("secret", ["", "short", *PUBLISHED_SECRETS])
def test_weak_or_published_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="AUDIT_JWT_SECRET"):
        Settings(AUDIT_JWT_SECRET=secret)


async def test_metrics_move_with_traffic_by_route_template(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    route = {"method": "PATCH", "route": "/accounts/{account_id}"}

    def patches(text: str, status: str) -> float:
        return metric(text, "audit_api_requests_total", status=status, **route)

    before = (await client.get("/metrics")).text
    for i in range(3):
        await client.patch(f"/accounts/acc-{i}", json={"a": 1}, headers=AUTH)
    publisher.fail = True
    await client.patch("/accounts/acc-9", json={"a": 1}, headers=AUTH)
    text = (await client.get("/metrics")).text
    assert patches(text, "200") - patches(before, "200") == 3  # one series for every account
    assert patches(text, "503") - patches(before, "503") == 1
    assert "acc-1" not in text  # raw paths never become labels
    assert "audit_api_request_duration_seconds_bucket" in text


async def test_denied_event_from_a_hostile_path_can_always_be_stored(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    # Before authentication nothing is validated: the path may hold anything, even NUL, which
    # PostgreSQL cannot store. The denied event must still be storable, or a 401 would be
    # acknowledged for an event that ends in the dead-letter stream.
    response = await client.get("/accounts/a%00b%1Fc", headers={"Authorization": "Bearer \x01"})
    assert response.status_code == 401
    (event,) = publisher.events
    stored = event.model_dump_json()
    assert "\\u0000" not in stored
    assert "\\u001f" not in stored
    # Replaced, not deleted: deleting would turn "a\0b" into the different id "ab".
    assert event.resource_id == "a\ufffdb\ufffdc"
    assert event.metadata["path"] == "/accounts/a\ufffdb\ufffdc"


@pytest.mark.parametrize(
    ("peer", "recorded"),
    [("2001:DB8:0:0::1", "2001:db8::1"), ("unknown", None), ("10.0.0.01", None)],
)
async def test_the_source_address_is_canonical_or_absent_never_an_error(
    publisher: FakePublisher, peer: str, recorded: str | None
) -> None:
    """What a trusted proxy forwards need not be an address: the event is recorded without one."""
    app = create_app(Settings(AUDIT_JWT_SECRET=JWT_SECRET), publisher)
    transport = httpx.ASGITransport(app=app, client=(peer, 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/accounts/acc-1", headers=AUTH)).status_code == 200
    (event,) = publisher.events
    assert event.source_ip == recorded
