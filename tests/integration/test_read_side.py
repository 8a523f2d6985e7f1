"""The read side under load, end to end on real processes: while the API is loaded and two
consumers (two batches each in flight) commit side by side, a client paging ``/audit-events``
sees each matching row committed before its first page exactly once, in order, and a client
following the feed from the start receives exactly the stored rows: none twice, none missing."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from tests.env import service_env
from tests.helpers import drained, make_event, send, signed_row, wait_for, write
from tests.integration.reading import READ, reader_url
from tests.processes import Service, api, consumer, query

EVENTS = 1500


@pytest.fixture
async def system(streams: Settings, db: Any, tmp_path: Path) -> AsyncIterator[dict[str, Service]]:
    # small batches, two in flight per consumer: many transactions committing out of order
    env = service_env(streams, AUDIT_BATCH_SIZE="20", AUDIT_DB_CONNECTIONS="2")
    # one fold window for the whole test: the follower's polls make one record, not many
    reading = service_env(streams, AUDIT_QUERY_FOLD_SECONDS="3600")
    services = {
        "api": api(env, tmp_path),
        "consumer-1": consumer(env, tmp_path, 1),
        "consumer-2": consumer(env, tmp_path, 2),
        "query": query(reading, tmp_path, await reader_url(streams)),
    }
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            service.wait_ready()
        yield services
    finally:
        for service in services.values():
            service.stop()


async def ids(db: Any, accounts_only: bool = False) -> list[str]:
    query = "SELECT id::text FROM audit_events WHERE %s OR action = 'account.update'"
    rows = await (await db.execute(query, [not accounts_only])).fetchall()
    return [r[0] for r in rows]


async def straggler(streams: Settings, db: Any) -> "asyncio.Task[list[str]]":
    """A writer whose batch takes its transaction id now but commits only once the consumers
    have committed 200 more rows after it (a consumer stalled mid-batch): a feed that handed
    out rows by commit order alone would have passed it by then."""
    conn = await psycopg.AsyncConnection.connect(streams.database_url)
    events = [make_event(resource_id=f"late-{i}") for i in range(5)]
    await write(BatchWriter(conn), [signed_row(e, 10**9 + i) for i, e in enumerate(events)])
    started = len(await ids(db, accounts_only=True))

    async def commit_later() -> list[str]:
        try:
            await wait_for(lambda: _more_rows(db, started + 200), timeout=120)
            await conn.commit()
        finally:
            await conn.close()
        return [str(e.id) for e in events]

    return asyncio.create_task(commit_later())


async def _more_rows(db: Any, n: int) -> bool:
    return len(await ids(db, accounts_only=True)) >= n


async def test_paging_and_the_feed_under_load_with_two_consumers(
    system: dict[str, Service], streams: Settings, db: Any
) -> None:
    api_url = f"http://127.0.0.1:{system['api'].port}"
    base = f"http://127.0.0.1:{system['query'].port}"
    load = asyncio.create_task(send(api_url, EVENTS, concurrency=32))
    followed: list[str] = []
    state: dict[str, Any] = {"cursor": None, "polls": 0}

    async with httpx.AsyncClient(base_url=base, headers=READ, timeout=30) as http:

        async def follow_once() -> int:
            params: dict[str, Any] = {"limit": 97}
            if state["cursor"]:
                params["after"] = state["cursor"]
            body = (await http.get("/audit-events/feed", params=params)).json()
            followed.extend(item["id"] for item in body["items"])
            state["cursor"] = body["next_cursor"]
            state["polls"] += 1
            return len(body["items"])

        async def follower() -> None:
            while not load.done():
                await follow_once()

        following = asyncio.create_task(follower())
        await wait_for(lambda: len(followed) >= EVENTS // 8 or load.done(), timeout=120)
        late = await straggler(streams, db)  # a batch that commits late, under the load
        await wait_for(lambda: len(followed) >= EVENTS // 4 or load.done(), timeout=120)

        # The pager, mid-load: what was committed before its first page, then every page.
        before = set(await ids(db, accounts_only=True))
        paged: list[dict[str, Any]] = []
        params: dict[str, Any] = {"action": "account.update", "limit": 50}
        while True:
            page = (await http.get("/audit-events", params=params)).json()
            paged += page["items"]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        acknowledged = await load
        await following
        late_ids = await late

        paged_ids = [item["id"] for item in paged]
        assert len(paged_ids) == len(set(paged_ids)), "a row was shown on two pages"
        assert before <= set(paged_ids), "a row committed before the first page was skipped"
        keys = [(item["occurred_at"], item["id"]) for item in paged]
        assert keys == sorted(keys, reverse=True)  # newest first, one stable order
        assert len(before) < EVENTS  # the pager really started while rows were arriving

        # Everything stored; then follow the feed until it has caught up. (A page can come back
        # empty while a transaction — the sealer's — holds the horizon: poll again, as a SIEM
        # would. A row the cursor had passed would never come: the check would time out.)
        await wait_for(lambda: drained(streams), timeout=180)
        stored = await ids(db)

        async def caught_up() -> bool:
            while await follow_once():
                pass
            return set(followed) >= set(stored)

        await wait_for(caught_up, timeout=60)

    assert len(followed) == len(set(followed)), "the feed handed out a row twice"
    assert set(followed) == set(stored), "the feed skipped a row (or invented one)"
    assert set(late_ids) <= set(followed)
    assert set(acknowledged) <= set(stored)
    assert set(paged_ids) <= set(stored)
    print(
        f"\nfeed: {len(followed)} rows in {state['polls']} polls, pager: {len(paged_ids)} rows"
        f" ({len(before)} committed before its first page)"
    )
