"""The query service against real PostgreSQL, through its own read-only login: scope checks,
filters, stable keyset pages, one event, and the feed that never skips a row that commits late."""

import csv
import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from audit_consumer.database import ensure_logins
from audit_consumer.sealer import Sealer
from audit_consumer.settings import Settings as ConsumerSettings
from audit_consumer.writer import BatchWriter
from audit_devservers import Child, free_port
from audit_events.auth import issue_token
from audit_events.authorship import EventKeys
from audit_events.broker import QUERY
from audit_events.seals import SealKey
from audit_query import main as query_main
from audit_query import store as store_module
from tests.env import BIN, EVENT_KEY, JWT_SECRET, SEAL_KEY, identity_env, without_credentials
from tests.helpers import make_event, metric, signed_row, wait_for, write
from tests.integration.reading import (
    READ,
    T0,
    event,
    query_settings,
    reader_url,
    records,
    serving,
    store,
)


async def test_reading_needs_a_token_with_the_read_scope(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/audit-events")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    api_token = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'dave')}"}
    assert (await client.get("/audit-events", headers=api_token)).status_code == 403
    forged = issue_token("another-secret-0123456789abcdef0123", "eve", scope="audit:read")
    bad = await client.get("/audit-events", headers={"Authorization": f"Bearer {forged}"})
    assert bad.status_code == 401
    assert (await client.get("/audit-events", headers=READ)).json() == {
        "items": [],
        "next_cursor": None,
    }


async def test_pages_return_each_matching_row_once_newest_first(
    client: httpx.AsyncClient, db: Any
) -> None:
    events = [event(i) for i in range(250)]
    await store(db, events)
    wanted = sorted(
        (e for e in events if e.actor_id == "user-1"),
        key=lambda e: (e.occurred_at, e.id),
        reverse=True,
    )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"actor_type": "user", "actor_id": "user-1", "limit": 30}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/audit-events", params=params, headers=READ)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if pages == 1:  # rows arriving meanwhile, newer than the first page: not in this walk
            await store(db, [event(1000 + i, actor_id="user-1") for i in range(3)])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(e.id) for e in wanted]
    assert pages == 3  # 84 rows in pages of 30


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"resource_type": "account", "resource_id": "acc-2"}, lambda e: e.resource_id == "acc-2"),
        ({"outcome": "denied"}, lambda e: e.outcome == "denied"),
        ({"source_ip": "10.0.1.0/24"}, lambda e: e.source_ip.startswith("10.0.1.")),
        ({"source_ip": "10.0.0.5"}, lambda e: e.source_ip == "10.0.0.5"),
        ({"request_id": "req-7"}, lambda e: e.request_id == "req-7"),
        ({"action": "account.update", "outcome": "success"}, lambda e: e.outcome == "success"),
        (
            {"since": "2026-11-01T00:10:00+00:00", "until": "2026-11-01T01:00:00+01:00"},
            lambda e: T0 + timedelta(minutes=10) <= e.occurred_at < T0,
        ),
        (
            {"since": "2026-11-01T00:10:00Z", "until": "2026-11-01T00:20:00Z"},
            lambda e: T0 + timedelta(minutes=10) <= e.occurred_at < T0 + timedelta(minutes=20),
        ),
    ],
)
async def test_each_filter_selects_exactly_its_rows(
    client: httpx.AsyncClient, db: Any, params: dict[str, str], expected: Any
) -> None:
    events = [event(i) for i in range(60)]
    await store(db, events)
    response = await client.get("/audit-events", params={**params, "limit": "1000"}, headers=READ)
    assert response.status_code == 200, response.text
    got = {item["id"] for item in response.json()["items"]}
    assert got == {str(e.id) for e in events if expected(e)}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"source_ip": "10.0.0.300"}, "source_ip"),
        ({"since": "2026-11-01T00:00:00"}, "since"),  # no offset: ambiguous
        ({"outcome": "maybe"}, "outcome"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    response = await client.get("/audit-events", params=params, headers=READ)
    assert response.status_code == 422
    assert [d["loc"][-1] for d in response.json()["detail"]] == [name]


async def test_an_empty_filter_is_no_filter_and_a_forged_feed_cursor_is_422(
    client: httpx.AsyncClient, db: Any
) -> None:
    """A form sends every field: ``actor_id=`` and ``since=`` mean "any"."""
    await store(db, [event(i) for i in range(3)])
    blank = {"actor_id": "", "since": "", "source_ip": "", "outcome": ""}
    response = await client.get("/audit-events", params=blank, headers=READ)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 3
    forged = store_module.encode_cursor(0, str(make_event().id), "x" * 33)
    response = await client.get("/audit-events/feed", params={"after": forged}, headers=READ)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "after"]


async def test_one_event_with_every_column_and_its_seal_status(
    client: httpx.AsyncClient, db: Any
) -> None:
    stored = event(3, trace_id="ab" * 16, metadata={"method": "PATCH", "fields": ["email"]})
    await store(db, [stored])
    item = (await client.get(f"/audit-events/{stored.id}", headers=READ)).json()
    assert item["actor_id"] == stored.actor_id
    assert item["source_ip"] == stored.source_ip
    assert item["metadata"] == {"method": "PATCH", "fields": ["email"]}
    assert item["signature"].count(":") == 1
    assert item["sealed"] is False  # no consumer has sealed it in this test
    missing = await client.get(f"/audit-events/{make_event().id}", headers=READ)
    assert missing.status_code == 404
    assert (await client.get("/audit-events/not-a-uuid", headers=READ)).status_code == 422


async def feed_all(client: httpx.AsyncClient, after: str | None) -> tuple[list[str], str]:
    """Follow the feed until it is empty; (ids in order, the cursor to poll with next)."""
    ids: list[str] = []
    while True:
        params: dict[str, Any] = {"limit": 7}
        if after:
            params["after"] = after
        body = (await client.get("/audit-events/feed", params=params, headers=READ)).json()
        ids += [item["id"] for item in body["items"]]
        after = body["next_cursor"]
        assert after  # always given, to poll with
        if not body["items"]:
            return ids, after


async def test_the_feed_holds_back_rows_an_older_transaction_could_still_precede(
    client: httpx.AsyncClient, db: Any, migrated: str
) -> None:
    """Two writers commit out of order: the younger transaction's rows are not handed out
    until the older one ends, so following the feed gives every row once, none skipped."""
    first = [event(i, resource_id="early") for i in range(10)]
    await store(db, first)
    older = await psycopg.AsyncConnection.connect(migrated)  # a transaction left running
    late = [event(100 + i, resource_id="late") for i in range(5)]
    await write(BatchWriter(older), [signed_row(e, 100 + i) for i, e in enumerate(late)])
    younger = [event(200 + i, resource_id="younger") for i in range(6)]
    await store(db, younger)  # commits now, with a larger tx_id than the open one

    seen, cursor = await feed_all(client, None)
    assert set(seen) == {str(e.id) for e in first}  # the younger rows wait for the older tx

    await older.commit()
    await older.close()
    more, cursor = await feed_all(client, cursor)
    assert more[:5] == sorted(str(e.id) for e in late)  # commit-horizon order: older tx first
    assert set(more) == {str(e.id) for e in late + younger}
    everything = seen + more
    assert len(everything) == len(set(everything)) == 21
    assert (await feed_all(client, cursor))[0] == []  # nothing twice


async def test_export_streams_every_matching_row_as_ndjson_or_csv(
    client: httpx.AsyncClient, db: Any
) -> None:
    agent = 'quote " and, comma; back\\slash, tab\t, newline\n, é, \u2028'
    events = [event(i, user_agent=agent) for i in range(3000)]
    await store(db, events)
    wanted = [str(e.id) for e in sorted(events, key=lambda e: (e.occurred_at, e.id), reverse=True)
              if e.outcome == "denied"]  # fmt: skip
    params = {"outcome": "denied"}
    ndjson = await client.get("/audit-events/export", params=params, headers=READ)
    assert ndjson.status_code == 200
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in ndjson.text.split("\n") if line]  # (not on U+2028)
    assert [line["id"] for line in lines] == wanted  # newest first, each once
    assert lines[0]["user_agent"] == agent  # PostgreSQL's JSON, passed through untouched
    assert lines[0]["sealed"] is False
    as_csv = await client.get(
        "/audit-events/export", params={**params, "format": "csv"}, headers=READ
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["id"] for row in rows] == wanted
    assert rows[0]["user_agent"] == agent
    assert json.loads(rows[0]["metadata"]) == lines[0]["metadata"]
    assert (await client.get("/audit-events/export", headers={})).status_code == 401
    bad = await client.get("/audit-events/export", params={"format": "xml"}, headers=READ)
    assert bad.status_code == 422


@asynccontextmanager
async def exporting(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, logs: Any, **env: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real ``audit-query`` process (``env`` added) over 300,000 rows, and a client."""
    await db.execute(
        "INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, action, resource_type,"
        " resource_id, outcome, stream_seq, digest)"
        " SELECT gen_random_uuid(), now() - g * interval '1 second', 'user', 'u' || g % 100,"
        " 'account.read', 'account', 'acc-' || g, 'success', g, '\\x00'"
        " FROM generate_series(1, 300000) AS g"
    )
    reader = make_conninfo(settings.database_url, user="audit_query", password="pw-3")
    await ensure_logins(
        ConsumerSettings(DATABASE_URL=settings.database_url, AUDIT_READER_DATABASE_URL=reader)
    )
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    environ.update(
        AUDIT_READER_DATABASE_URL=reader,
        AUDIT_JWT_SECRET=JWT_SECRET,
        AUDIT_EVENT_KEYS=EVENT_KEY,
        NATS_URL=without_credentials(streams.nats_url),
        AUDIT_QUERY_PORT=str(port),
        AUDIT_QUERY_HOST="127.0.0.1",
        **identity_env(QUERY),
        **env,
    )
    server = Child("query", [str(BIN / "audit-query")], environ, logs / "query.log").start()
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers=READ, timeout=30) as http:
            await wait_for(lambda: _answers(http), timeout=60)
            yield http
    finally:
        server.stop()


async def exports_running(db: Any, longer_than: str = "0") -> int:
    cur = await db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'audit_query'"
        " AND state = 'active' AND query LIKE 'COPY (SELECT json_build_object%%'"
        " AND now() - query_start > %s::interval",
        (longer_than,),
    )
    return int((await cur.fetchone())[0])


async def test_a_client_that_disconnects_ends_its_export(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, tmp_path: Any
) -> None:
    """While a client holds an export open the COPY runs; once it hangs up, the COPY ends and
    the connection is back in the pool."""
    async with exporting(db, settings, streams, tmp_path) as http:
        async with http.stream("GET", "/audit-events/export") as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()  # referenced: a collected one would close the stream
            assert await anext(chunks)  # one chunk, then stop reading: the server blocks
            await wait_for(lambda: _is(exports_running(db), 1), timeout=30)
        # hung up (the stream's context closed the connection)
        await wait_for(lambda: _is(exports_running(db), 0), timeout=60)
        again = await http.get("/audit-events", params={"limit": 1})
        assert again.status_code == 200  # the pool has its connection back


async def test_an_export_may_outlast_the_statement_timeout_of_queries(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, tmp_path: Any
) -> None:
    """Queries are cut at AUDIT_QUERY_STATEMENT_TIMEOUT_MS; an export only at
    AUDIT_QUERY_EXPORT_SECONDS (it streams, so a large one takes longer than any query)."""
    async with (
        exporting(db, settings, streams, tmp_path, AUDIT_QUERY_STATEMENT_TIMEOUT_MS="100") as http,
        http.stream("GET", "/audit-events/export") as response,
    ):
        assert response.status_code == 200
        chunks = response.aiter_raw()
        body = [await anext(chunks)]
        # Hold the COPY past the queries' timeout (it waits for this client to read on).
        await wait_for(lambda: _is(exports_running(db, "1 second"), 1), timeout=30)
        body += [chunk async for chunk in chunks]
    lines = b"".join(body).splitlines()
    assert len(lines) == 300_000
    assert b'"error"' not in lines[-1]


async def _answers(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _is(count: Any, expected: int) -> bool:
    return bool(await count == expected)


async def test_every_read_is_on_the_record_signed_by_the_query_service(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, nc: Any
) -> None:
    """Who watches the watchers: each read is an audit event before it is answered; feed polls
    and denied reads are folded, and the folds add up."""
    stored = event(1)
    await store(db, [stored])
    config = query_settings(await reader_url(settings), streams)
    async with serving(config) as http:
        scraped = (await http.get("/metrics")).text
        counted = metric(
            scraped, "audit_query_reads_total", action="audit.query", outcome="success"
        )
        assert metric(scraped, "audit_query_nats_connected") == 1
        params = {"actor_id": "user-1", "limit": "5"}
        assert (await http.get("/audit-events", params=params, headers=READ)).status_code == 200
        assert (await http.get(f"/audit-events/{stored.id}", headers=READ)).status_code == 200
        export = await http.get("/audit-events/export", params={"format": "csv"}, headers=READ)
        assert export.status_code == 200
        after: dict[str, str] = {}
        for _ in range(5):  # one follower: one cursor session
            polled = await http.get("/audit-events/feed", params=after, headers=READ)
            after = {"after": polled.json()["next_cursor"]}
        assert (await http.get("/audit-events/feed", headers=READ)).status_code == 200  # another
        for _ in range(3):
            assert (await http.get("/audit-events")).status_code == 401
        scraped = (await http.get("/metrics")).text
        queries = metric(
            scraped, "audit_query_reads_total", action="audit.query", outcome="success"
        )
        assert queries == counted + 1
    # (leaving `serving` ran the shutdown: the folds' remainders are recorded)
    found = await records(nc, streams.names)
    keys = EventKeys([EVENT_KEY])
    assert all(keys.check(data, signature) is None for _, data, signature in found)
    actions = [(b["action"], b["outcome"], b["actor_id"]) for b, _, _ in found]
    assert actions == [
        ("audit.query", "success", "auditor"),
        ("audit.read", "success", "auditor"),
        ("audit.export", "success", "auditor"),
        ("audit.feed", "success", "auditor"),  # the first poll of the session's window
        ("audit.feed", "success", "auditor"),  # a second session starts
        ("audit.query", "denied", "anonymous"),  # the first denied read of the window
        ("audit.feed", "success", "auditor"),  # on shutdown: the 4 polls folded since
        ("audit.query", "denied", "anonymous"),  # and the 2 denied reads
    ]
    query, read, exported, feed1, other, denied1, feed2, denied2 = (b for b, _, _ in found)
    assert feed1["metadata"]["session"] == feed2["metadata"]["session"]
    assert other["metadata"] == {"session": other["metadata"]["session"], "polls": 1, "rows": 1}
    assert other["metadata"]["session"] != feed1["metadata"]["session"]
    assert query["metadata"] == {
        "filters": {"actor_id": "user-1"},
        "limit": 5,
        "cursor": False,
        "returned": 1,
    }
    assert (read["resource_type"], read["resource_id"]) == ("audit_log", str(stored.id))
    assert exported["metadata"]["format"] == "csv"
    assert feed1["metadata"]["polls"] + feed2["metadata"]["polls"] == 5
    assert denied1["metadata"]["denied_requests"] + denied2["metadata"]["denied_requests"] == 3
    assert denied1["metadata"]["reason"] == "missing_token"


async def test_without_the_broker_a_read_is_refused_not_answered_off_the_record(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings
) -> None:
    await store(db, [event(1)])
    nowhere = f"nats://127.0.0.1:{free_port()}"
    config = query_settings(await reader_url(settings), streams, NATS_URL=nowhere)
    async with serving(config, ready=False) as http:
        before = metric((await http.get("/metrics")).text, "audit_query_unrecorded_total")
        response = await http.get("/audit-events", headers=READ)
        scraped = (await http.get("/metrics")).text
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "items" not in response.json()
    assert metric(scraped, "audit_query_unrecorded_total") == before + 1  # AuditQueryUnrecorded
    assert metric(scraped, "audit_query_nats_connected") == 0


async def test_sealed_means_covered_by_a_seal_that_checks(
    client: httpx.AsyncClient, db: Any, migrated: str
) -> None:
    """A seal the writer login forged (claiming every transaction to come) marks nothing
    sealed: only rows under a seal whose signature checks are reported so."""
    await store(db, [event(i) for i in range(3)])
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 1.0)
    assert await sealer.seal() is not None
    await sealer.close()
    await store(db, [event(i) for i in range(3, 5)])
    await db.execute(
        "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
        " sealed_at, key_id, signature, hash, entries) SELECT 2, upto_tx, '9000000000', 0, '',"
        " hash, now(), key_id, '', '', '' FROM audit_seals WHERE seq = 1"
    )
    items = (await client.get("/audit-events", headers=READ)).json()["items"]
    assert sorted(i["sealed"] for i in items) == [False, False, True, True, True]


async def test_a_busy_pool_is_503_with_retry_after_never_a_500(
    db: Any, settings: ConsumerSettings, streams: ConsumerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection taken (eight slow exports once did it): the next read is told to come
    back, not answered 500 with a traceback."""
    monkeypatch.setattr(query_main, "POOL_WAIT_SECONDS", 0.5)
    config = query_settings(await reader_url(settings), streams, AUDIT_QUERY_DB_CONNECTIONS="1")
    async with serving(config) as http:
        app = http._transport.app  # type: ignore[attr-defined]
        async with app.state.parts.pool.connection():  # the only one
            busy = await http.get("/audit-events", headers=READ)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert (await http.get("/audit-events", headers=READ)).status_code == 200
