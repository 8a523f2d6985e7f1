"""The query service attacked as the last trial found it open: an attacker with network access
(header bombs, slow heads, NUL and odd shapes in every parameter, forged cursors, formulas in
text that ends up in CSV), and a reader hogging exports. Each test fails without its defence.

Against a real ``audit-query`` process on loopback, its real database login and NATS identity.
"""

import asyncio
import base64
import contextlib
import csv
import io
import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_query import store
from tests.env import service_env
from tests.helpers import closed_by_peer, make_event, signed_row, wait_for, write
from tests.integration.reading import READ, reader_url
from tests.processes import Service, query


@pytest.fixture
async def service(streams: Settings, db: Any, tmp_path: Path) -> AsyncIterator[Service]:
    env = service_env(
        streams,
        AUDIT_QUERY_HEADER_TIMEOUT_SECONDS="1",
        AUDIT_QUERY_MAX_HEADER_BYTES="16384",
        AUDIT_QUERY_MAX_EXPORTS="2",
        AUDIT_QUERY_MAX_EXPORTS_PER_READER="1",
    )
    server = query(env, tmp_path, await reader_url(streams)).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def client(server: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers=READ, timeout=30)


def test_a_whole_header_bomb_in_one_write_gets_431(service: Service) -> None:
    """A head past the bound is refused even when it arrives in one read (the parser would
    otherwise finish it before the size was checked: ~64 KiB got through)."""
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bomb: " + b"a" * 40_000 + b"\r\n\r\n")
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        answer = closed_by_peer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert service.probe("/readyz") == 200


def test_a_slow_head_is_cut_off(service: Service) -> None:
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(b"GET /audit-events HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    assert closed_by_peer(sock, within=30) == b""
    sock.close()


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"actor_id": "a\x00b"}, "actor_id"),
        ({"user_agent": "x", "request_id": "r\x00"}, "request_id"),
        ({"source_ip": "fe80::1%eth0"}, "source_ip"),
        ({"source_ip": "fe80::%eth0/64"}, "source_ip"),
        ({"resource_id": "r" * 5000}, "resource_id"),
    ],
)
async def test_text_the_table_cannot_hold_is_422_on_every_read(
    service: Service, params: dict[str, str], name: str
) -> None:
    async with client(service) as http:
        for path in ("/audit-events", "/audit-events/export"):
            response = await http.get(path, params=params)
            assert response.status_code == 422, (path, response.text)
            assert name in response.text
        page = await http.get("/", params=params)  # the viewer (signed out: its sign-in page)
        assert page.status_code in (200, 401, 422)


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


FORGED = [
    cursor([0, "00000000-0000-0000-0000-000000000000", "a\x00b"]),  # NUL in the session
    cursor([2**70, "00000000-0000-0000-0000-000000000000", "0123456789abcdef"]),  # out of range
    cursor([True, "00000000-0000-0000-0000-000000000000", "0123456789abcdef"]),
    cursor([0, 5, "0123456789abcdef"]),  # a number where the id goes
    cursor({"a": 1}),
    cursor(["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),  # naive time
    cursor([["x"], {"y": 2}]),
    "%%%",
    "A" * 5000,
]


@pytest.mark.parametrize("forged", FORGED)
async def test_forged_cursors_are_422_and_answer_nothing(service: Service, forged: str) -> None:
    async with client(service) as http:
        feed = await http.get("/audit-events/feed", params={"after": forged})
        listing = await http.get("/audit-events", params={"cursor": forged})
    assert feed.status_code == 422, feed.text
    assert listing.status_code == 422, listing.text


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(
        st.text(), st.recursive(SCALARS, lambda x: st.lists(x) | st.dictionaries(st.text(), x))
    )
)
def test_the_cursor_parser_takes_anything_and_answers_a_cursor_or_bad_cursor(value: Any) -> None:
    """Property: whatever a client sends, decoding ends in values of the right types or in
    BadCursor (which the routes turn into 422), never another exception."""
    text = value if isinstance(value, str) else cursor(value)
    for types in ((datetime, UUID), (int, UUID, str)):
        try:
            values = store.decode_cursor(text, *types)
        except store.BadCursor:
            continue
        assert [type(v) for v in values] == [*types]


async def test_csv_exports_neutralise_formulas_and_raw_keeps_them(
    service: Service, db: Any
) -> None:
    """OWASP CSV injection: cells starting with = + - @ tab CR reach a spreadsheet as text."""
    bad = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    events = [
        make_event(actor_id=text, user_agent=text, request_id=f"r{i}", resource_id=text)
        for i, text in enumerate(bad)
    ]
    await write_events(db, events)
    async with client(service) as http:
        safe = await http.get("/audit-events/export", params={"format": "csv"})
        raw = await http.get("/audit-events/export", params={"format": "csv", "raw": "true"})
        ndjson = await http.get("/audit-events/export")
    rows = list(csv.DictReader(io.StringIO(safe.text)))
    assert sorted(r["actor_id"] for r in rows) == sorted("'" + t for t in bad)
    assert all(r["user_agent"].startswith("'") and r["resource_id"].startswith("'") for r in rows)
    assert sorted(r["actor_id"] for r in csv.DictReader(io.StringIO(raw.text))) == sorted(bad)
    stored = sorted(orjson.loads(line)["actor_id"] for line in ndjson.text.splitlines())
    assert stored == sorted(bad)  # NDJSON is exact


async def write_events(db: Any, events: list[Any]) -> None:
    await write(BatchWriter(db), [signed_row(e, i) for i, e in enumerate(events)])


async def test_exports_are_bounded_per_reader_and_listings_keep_their_connections(
    service: Service, db: Any
) -> None:
    """One reader's second export is 503 before a byte is sent; while exports run, listings
    are served (exports have their own connections)."""
    await write_events(db, [make_event(resource_id=f"acc-{i}") for i in range(3000)])
    async with client(service) as http:
        async with http.stream("GET", "/audit-events/export") as first:
            assert first.status_code == 200
            second = await http.get("/audit-events/export")
            assert second.status_code == 503
            assert second.headers["retry-after"]
            listings = await asyncio.gather(*(http.get("/audit-events") for _ in range(10)))
            assert [r.status_code for r in listings] == [200] * 10

        async def slot_freed() -> bool:  # once the server has seen the first one end
            return (await http.get("/audit-events/export", params={"format": "csv"})).is_success

        await wait_for(slot_freed, timeout=60)


async def test_a_path_with_nul_is_a_recorded_denial_not_a_dead_letter(
    service: Service, nc: Any, streams: Settings
) -> None:
    """The record of a denied read on ``/audit-events%00`` is storable (cleaned path)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as http:
        response = await http.get("/audit-events%00x")
    assert response.status_code in (401, 404)
    js = nc.jetstream()
    info = await js.stream_info(streams.names.stream)
    for seq in range(1, info.state.messages + 1):
        data = (await js.get_msg(streams.names.stream, seq)).data
        assert b"\\u0000" not in data


async def test_a_client_that_stops_reading_loses_its_export_and_its_connection(
    streams: Settings, db: Any, tmp_path: Path
) -> None:
    """An export whose client reads its headers and then nothing: the COPY (and the database
    connection) end once the export's time is up, instead of waiting on the client for ever."""
    await write_events(db, [make_event(resource_id=f"acc-{i}") for i in range(20_000)])
    env = service_env(streams, AUDIT_QUERY_EXPORT_SECONDS="1")
    server = query(env, tmp_path, await reader_url(streams)).start()
    server.wait_ready()
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        request = f"GET /audit-events/export HTTP/1.1\r\nHost: x\r\n{auth_line()}\r\n\r\n"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request.encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")  # and then never another byte

        async def copy_running() -> bool:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%%'"
            return bool((await (await db.execute(sql)).fetchone())[0])

        await wait_for(copy_running, timeout=30)
        await wait_for(lambda: _not(copy_running()), timeout=60)
    finally:
        sock.close()
        server.stop()


async def _not(check: Any) -> bool:
    return not await check


def auth_line() -> str:
    return f"Authorization: {READ['Authorization']}"


async def test_docs_refuse_framing_and_foreign_scripts_and_sign_in_reads_a_bounded_body(
    service: Service,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=30) as http:
        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["x-frame-options"] == "DENY"
        csp = docs.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self' 'sha256-" in csp  # its inline script by hash, nothing else
        form = {"content-type": "application/x-www-form-urlencoded"}
        sized = await http.post("/session", content=b"token=" + b"a" * (1 << 20), headers=form)
        assert sized.status_code == 413

        async def endless() -> AsyncIterator[bytes]:  # no Content-Length: read, but bounded
            for _ in range(64):
                yield b"a" * 65536

        try:  # answered 413 (or cut off) while the client is still sending
            streamed = await http.post("/session", content=endless(), headers=form)
            assert streamed.status_code == 413
        except httpx.TransportError:
            pass
        assert service.probe("/readyz") == 200
        token = READ["Authorization"].split()[1]
        signed_in = await http.post("/session", data={"token": token})
        assert signed_in.status_code == 303
        assert "Max-Age=28800" in signed_in.headers["set-cookie"]
