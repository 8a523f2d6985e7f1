"""End to end on real servers and real processes: API → JetStream → 2 consumers → PostgreSQL.

The scenarios around it (poison, duplicates, redelivery, SIGTERM, crashes, outages) are in
tests/faults, once each."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from audit_consumer.settings import Settings
from audit_devservers import NatsServer
from audit_events import StreamNames, encode
from audit_events.authorship import SIGNATURE_HEADER
from audit_events.broker import API, inbox_prefix
from tests.env import service_env
from tests.helpers import (
    assert_intact,
    count_rows,
    make_event,
    metric,
    published,
    send,
    sign,
    wait_for,
)
from tests.processes import Service, api, consumer

SUBJECT = StreamNames().event_subject("account.update")


class Pipeline:
    def __init__(self, settings: Settings, logs: Path) -> None:
        self.db_url = settings.database_url
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

    # Every row authored by the API, sealed by the consumers, and the table provably intact.
    report = await assert_intact(pipeline.db_url)
    assert report.rows == n
    assert report.unsigned == 0
    async with httpx.AsyncClient() as http:
        scraped = [
            (await http.get(f"http://127.0.0.1:{c.port}/metrics")).text for c in pipeline.consumers
        ]
    assert sum(metric(t, "audit_consumer_sealed_rows_total") for t in scraped) == n
    logs = "".join(c.logs() for c in pipeline.consumers)
    assert f"head {report.head}" in logs  # each seal's hash is logged, for keeping elsewhere


async def test_forged_and_unsigned_events_from_the_apis_identity_are_dead_lettered(
    pipeline: Pipeline, db: Any, nats_server: NatsServer | None, streams: Settings
) -> None:
    """The API's broker password alone does not make a row: the event key is needed too."""
    if nats_server is None:
        pytest.skip("needs the embedded NATS server (it knows the API identity's password)")
    names = streams.names
    nc = await nats.connect(nats_server.url_as(API), inbox_prefix=inbox_prefix(API))
    js = nc.jetstream()
    real = await send(pipeline.url, 1)
    forged, unsigned = make_event(actor_id="mallory"), make_event(actor_id="nobody")
    bad = published(forged)
    bad["headers"][SIGNATURE_HEADER] = sign(encode(make_event()))  # a real tag, wrong event
    await js.publish(names.event_subject("account.update"), **bad)
    await js.publish(names.event_subject("account.update"), encode(unsigned))
    await nc.close()
    admin = await nats.connect(streams.nats_url)
    dlq = admin.jetstream()
    await wait_for(lambda: _dlq_holds(dlq, names.dlq_stream, 2))
    letters = [await dlq.get_msg(names.dlq_stream, seq) for seq in (1, 2)]
    await admin.close()
    assert sorted((m.headers or {})["Audit-Dlq-Reason"] for m in letters) == [
        "bad signature: signature does not match",
        "bad signature: unsigned",
    ]
    assert all((m.headers or {})["Audit-Dlq-Kind"] == "signature" for m in letters)
    assert [r[0] for r in await rows(db, "SELECT id::text FROM audit_events")] == real


async def _dlq_holds(js: Any, stream: str, n: int) -> bool:
    return int((await js.stream_info(stream)).state.messages) == n


async def _count_is(db: Any, n: int) -> bool:
    got = await count_rows(db)
    assert got <= n, f"{got} rows for {n} events: something was stored twice"
    return got == n
