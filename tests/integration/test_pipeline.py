"""End to end on real servers and real processes: API → JetStream → 2 consumers → PostgreSQL.

The scenarios around it (poison, duplicates, redelivery, SIGTERM, crashes, outages) are in
tests/faults, once each."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_api.auth import issue_token
from audit_consumer.settings import Settings
from audit_events import StreamNames
from tests.conftest import JWT_SECRET, metric, service_env, wait_for
from tests.helpers import count_rows
from tests.processes import Service, api, consumer

SUBJECT = StreamNames().event_subject("account.update")
AUTH = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'dave')}", "User-Agent": "e2e/1"}


class Pipeline:
    def __init__(self, settings: Settings, logs: Path) -> None:
        env = service_env(settings)
        self.api = api(env, logs)
        self.consumers = [consumer(env, logs, i) for i in range(2)]

    @property
    def services(self) -> list[Service]:
        return [self.api, *self.consumers]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"


@pytest.fixture
def pipeline(streams: Settings, db: Any, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(streams, tmp_path)
    try:
        for service in p.services:
            service.start()
        for service in p.services:
            service.wait_ready()
        yield p
    finally:
        for service in p.services:
            service.stop()


async def rows(db: Any, sql: str = "SELECT count(*) FROM audit_events", *params: Any) -> Any:
    cur = await db.execute(sql, params or None)
    return await cur.fetchall()


async def send(url: str, n: int, concurrency: int = 16) -> list[str]:
    """PATCH ``n`` accounts; the audit ids of the 200s (every request must get one)."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> str:
            async with gate:
                r = await client.patch(f"/accounts/acc-{i}", json={"tier": i}, headers=AUTH)
            assert r.status_code == 200, r.text
            return str(r.json()["audit_event_id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_every_acknowledged_request_becomes_exactly_one_row(
    pipeline: Pipeline, db: Any
) -> None:
    n = 400
    started = time.perf_counter()
    ids = await send(pipeline.url, n)
    await wait_for(lambda: _count_is(db, n), timeout=120)
    elapsed = time.perf_counter() - started
    print(f"\nend to end: {n} requests -> {n} rows in {elapsed:.2f}s ({n / elapsed:.0f} events/s)")

    stored = await rows(
        db,
        "SELECT id::text, actor_type, actor_id, action, resource_type, resource_id, outcome,"
        " host(source_ip), user_agent, metadata, occurred_at <= recorded_at FROM audit_events",
    )
    assert sorted(r[0] for r in stored) == sorted(ids)  # exactly the acknowledged ones, once
    by_resource = {r[5]: r for r in stored}
    assert by_resource["acc-7"][1:] == (
        "user",
        "dave",
        "account.update",
        "account",
        "acc-7",
        "success",
        "127.0.0.1",
        "e2e/1",
        {"method": "PATCH", "path": "/accounts/acc-7", "status": 200, "fields": ["tier"]},
        True,
    )
    seqs = await rows(db, "SELECT count(DISTINCT stream_seq) FROM audit_events")
    assert seqs[0][0] == n

    # The metrics tell the same story: every row counted once across the consumers, every
    # publish timed by the API, lag back to zero.
    async with httpx.AsyncClient() as http:
        scraped = [
            (await http.get(f"http://127.0.0.1:{c.port}/metrics")).text for c in pipeline.consumers
        ]
        api_text = (await http.get(f"{pipeline.url}/metrics")).text
    assert sum(metric(t, "audit_consumer_messages_total", result="stored") for t in scraped) == n
    assert metric(api_text, "audit_api_publish_duration_seconds_count") == n
    assert all(metric(t, "audit_consumer_db_up") == 1 for t in scraped)


async def _count_is(db: Any, n: int) -> bool:
    got = await count_rows(db)
    assert got <= n, f"{got} rows for {n} events: something was stored twice"
    return got == n
