"""End to end on real servers and real processes: API → JetStream → 2 consumers → PostgreSQL."""

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from audit_api.auth import issue_token
from audit_consumer.settings import Settings
from audit_events import StreamNames, encode
from tests.conftest import JWT_SECRET, metric, service_env, wait_for
from tests.helpers import count_rows, make_event
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


async def test_duplicate_publish_is_one_row(pipeline: Pipeline, db: Any, nc: NATS) -> None:
    js = nc.jetstream()
    event = make_event()
    data = encode(event)
    # Same Nats-Msg-Id: JetStream drops the copy. Different ids (the dedupe window passed, or a
    # client bug): both reach the consumer and the primary key keeps one.
    for msg_id in ("same", "same", "other"):
        await js.publish(SUBJECT, data, headers={"Nats-Msg-Id": msg_id})
    await js.publish(SUBJECT, encode(make_event()))  # a marker behind it
    await wait_for(lambda: _count_is(db, 2))
    assert await rows(db, "SELECT count(*) FROM audit_events") == [(2,)]
    assert (
        await rows(db, "SELECT count(*) FILTER (WHERE id = %s) FROM audit_events", event.id)
    ) == [(1,)]


async def test_poison_goes_to_dlq_with_reason_and_neighbours_are_stored(
    pipeline: Pipeline, db: Any, nc: NATS, streams: Settings
) -> None:
    js = nc.jetstream()
    subject = SUBJECT
    good = [make_event(resource_id=f"good-{i}") for i in range(4)]
    poison = [
        b"not json at all",
        json.dumps({"schema_version": 99}).encode(),
        encode(make_event(actor_id="nul\x00inside")),  # valid event, PostgreSQL refuses it
    ]
    for payload in [
        encode(good[0]),
        poison[0],
        encode(good[1]),
        poison[1],
        poison[2],
        encode(good[2]),
        encode(good[3]),
    ]:
        await js.publish(subject, payload)

    await wait_for(lambda: _count_is(db, 4))
    dlq = streams.names.dlq_stream
    await wait_for(lambda: _dlq_count(js, dlq, 3))
    letters = [await js.get_msg(dlq, seq) for seq in range(1, 4)]
    reasons = {m.data: m.headers or {} for m in letters}
    assert set(reasons) == set(poison)
    assert reasons[poison[0]]["Audit-Dlq-Reason"].startswith("not JSON")
    assert reasons[poison[1]]["Audit-Dlq-Reason"].startswith("schema_version")
    assert reasons[poison[2]]["Audit-Dlq-Kind"] == "rejected"
    assert "NUL" in reasons[poison[2]]["Audit-Dlq-Reason"]
    stored = {r[0] for r in await rows(db, "SELECT resource_id FROM audit_events")}
    assert stored == {f"good-{i}" for i in range(4)}
    # Nothing is left pending: poison was acked after it was dead-lettered.
    info = await js.consumer_info(streams.names.stream, streams.names.durable)
    assert info.num_pending == 0
    assert info.num_ack_pending == 0


async def _dlq_count(js: Any, stream: str, n: int) -> bool:
    return int((await js.stream_info(stream)).state.messages) == n


async def test_sigterm_mid_stream_exits_0_and_loses_nothing(
    pipeline: Pipeline, db: Any, nc: NATS, streams: Settings
) -> None:
    n = 600
    load = asyncio.create_task(send(pipeline.url, n, concurrency=8))
    await wait_for(lambda: _at_least(db, 50))
    for service in pipeline.consumers:
        service.signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(s.wait, 30) for s in pipeline.consumers]
    assert codes == [0, 0], [s.logs() for s in pipeline.consumers]
    ids = await load  # the API kept acknowledging into the stream meanwhile
    # Whatever they stored before exiting they acked, and nothing else (work queue: an acked
    # message leaves the stream): the stream holds exactly the events not yet stored.
    stored_while_down = await count_rows(db)
    state = (await nc.jetstream().stream_info(streams.names.stream)).state
    assert state.messages == n - stored_while_down
    for service in pipeline.consumers:
        service.start()
    await wait_for(lambda: _count_is(db, n), timeout=120)
    stored = await rows(db, "SELECT id::text FROM audit_events")
    assert sorted(r[0] for r in stored) == sorted(ids)


async def _at_least(db: Any, n: int) -> bool:
    return await count_rows(db) >= n
