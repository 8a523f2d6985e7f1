"""Readers across a cut (real PostgreSQL, the query service in process): a feed position behind
rows retention removed answers 410 naming the cut — never a silent skip — and goes on once the
client accepts it; a listing reaching before what is kept says from when it has events."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from audit_consumer.sealer import Sealer
from audit_events import AuditEvent
from audit_events.seals import SealKey, SealKeys
from audit_query import pages
from audit_retention.removal import Policy, run
from tests.env import SEAL_KEY, SEAL_PUBLIC_KEY
from tests.integration.reading import READ, event, store

NOW = datetime.now(UTC)


RECORDS: list[AuditEvent] = []  # what a run published (the CLI's Recorder publishes them)


@pytest.fixture
async def sealing(migrated: str) -> AsyncIterator[None]:
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 0.1)
    task = asyncio.create_task(sealer.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sealer.close()


async def feed(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await client.get("/audit-events/feed", params=params, headers=READ)


async def test_the_feed_says_gone_for_rows_retention_removed_after_its_position(
    client: httpx.AsyncClient, db: Any, migrated: str, sealing: None, tmp_path: Path
) -> None:
    kept = [event(i, occurred_at=NOW - timedelta(minutes=i)) for i in range(3)]
    await store(db, kept)  # read by the follower before the cut
    old = [event(10 + i, occurred_at=datetime(2026, 10, 5, tzinfo=UTC)) for i in range(4)]
    await store(db, old)  # a late import: new transactions, old times
    later = [event(20 + i, occurred_at=NOW) for i in range(2)]
    await store(db, later)
    await asyncio.sleep(0.5)  # (sealed, so the feed hands them out: a bound, not a timing)

    first = await feed(client, limit=3)
    assert len(first.json()["items"]) == 3
    position = first.json()["next_cursor"]
    assert (await client.get("/audit-events", headers=READ)).headers.get(
        "audit-retained-from"
    ) is None  # fmt: skip  (nothing removed yet)

    keys = SealKeys([SEAL_PUBLIC_KEY])
    await asyncio.to_thread(_retain, migrated, Policy(30, tmp_path, keys, RECORDS.extend))

    gone = await feed(client, after=position)
    assert gone.status_code == 410
    cuts = gone.json()["cuts"]
    assert [c["rows"] for c in cuts if c["rows"]] == [4]
    assert "accept_cut" in gone.json()["detail"]
    accepted = await feed(client, after=position, accept_cut=max(c["seal"] for c in cuts))
    assert accepted.status_code == 200
    assert {i["id"] for i in accepted.json()["items"]} == {str(e.id) for e in later}
    fresh = await feed(client)  # a new follower starts from what is kept
    assert fresh.status_code == 200
    assert len(fresh.json()["items"]) == 5

    listing = await client.get("/audit-events", headers=READ)
    retained = datetime.fromisoformat(listing.headers["audit-retained-from"])
    assert datetime(2026, 10, 5, tzinfo=UTC) < retained < NOW
    recent = {"since": (NOW - timedelta(days=1)).isoformat()}
    assert "audit-retained-from" not in (
        await client.get("/audit-events", params=recent, headers=READ)).headers  # fmt: skip
    page = pages.list_page("a", {}, [], None, total=0, retained=retained)
    assert "were removed by retention" in page


def _retain(url: str, policy: Policy) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return run(conn, policy)
