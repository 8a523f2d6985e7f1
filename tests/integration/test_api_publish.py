"""The API against real NATS: what it acknowledged is exactly what the stream holds."""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.client import Client as NATS

from audit_api.main import create_app
from audit_api.publisher import MeteredPublisher
from audit_api.settings import Settings as ApiSettings
from audit_consumer.settings import Settings
from audit_events import decode
from audit_events.auth import issue_token
from tests.env import JWT_SECRET
from tests.helpers import metric, wait_for

AUTH = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'carol')}"}


async def api_client(url: str, names: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(AUDIT_JWT_SECRET=JWT_SECRET, NATS_URL=url)
    publisher = MeteredPublisher(settings)
    await publisher.start()
    app = create_app(settings, publisher)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.4", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
    await publisher.close()


@pytest.fixture
async def client(streams: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in api_client(streams.nats_url, streams):
        publisher = c._transport.app.state.publisher  # type: ignore[attr-defined]
        await wait_for(lambda p=publisher: p.ready)
        yield c


async def test_stream_holds_exactly_the_acknowledged_events(
    client: httpx.AsyncClient, streams: Settings, nc: NATS
) -> None:
    calls = [
        client.patch(f"/accounts/acc-{i}", json={"plan": "pro"}, headers=AUTH) for i in range(30)
    ]
    calls += [client.get("/accounts/acc-x") for _ in range(5)]  # unauthenticated: denied events
    responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 30 + [401] * 5
    acknowledged = {r.json()["audit_event_id"] for r in responses[:30]}

    js = nc.jetstream()
    info = await js.stream_info(streams.names.stream)
    assert info.state.messages == 35
    stored = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(streams.names.stream, seq)
        event = decode(msg.data or b"")
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == str(event.id)
        assert msg.subject == streams.names.event_subject(event.action)
        stored.append(event)
    assert {str(e.id) for e in stored if e.outcome == "success"} == acknowledged
    denied = [e for e in stored if e.outcome == "denied"]
    assert len(denied) == 5
    assert all(e.actor_id == "anonymous" and str(e.source_ip) == "198.51.100.4" for e in denied)
    assert all(e.metadata["fields"] == ["plan"] for e in stored if e.outcome == "success")


async def test_same_msg_id_is_stored_once_in_the_stream(streams: Settings, nc: NATS) -> None:
    js = nc.jetstream()
    payload = orjson.dumps({"any": "bytes"})
    subject = streams.names.event_subject("account.read")
    first = await js.publish(subject, payload, headers={"Nats-Msg-Id": "x1"})
    again = await js.publish(subject, payload, headers={"Nats-Msg-Id": "x1"})
    assert (first.duplicate, again.duplicate) == (None, True)
    assert (await js.stream_info(streams.names.stream)).state.messages == 1


async def test_unreachable_broker_answers_503_not_500(streams: Settings) -> None:
    async for client in api_client("nats://127.0.0.1:1", streams):
        response = await client.patch("/accounts/acc-1", json={}, headers=AUTH)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert (await client.get("/readyz")).status_code == 503


async def test_metrics_and_logs_of_every_uvicorn_worker(streams: Settings, tmp_path: Any) -> None:
    """Two workers: /metrics adds both up, and both log, in JSON, uvicorn's lines included."""
    from tests.env import service_env
    from tests.processes import api

    env = service_env(streams, AUDIT_API_WORKERS="2", AUDIT_LOG_FORMAT="json")
    server = api(env, tmp_path).start()
    try:
        server.wait_ready()
        for _ in range(20):  # both workers most likely connected (each probe hits either)
            server.wait_ready()
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.patch(f"/accounts/w-{i}", json={"a": 1}, headers=AUTH) for i in range(40))
            )
            # 200s, and 503s from a worker still connecting to NATS (readiness answered by the
            # other): each worker counts what it answered, /metrics must show the sum.
            statuses = Counter(str(r.status_code) for r in answers)
            assert set(statuses) <= {"200", "503"}
            assert statuses["200"] > 0

            async def scrape() -> str:
                return (await client.get("/metrics")).text

            def counts(text: str) -> dict[str, float]:
                return {
                    s: metric(text, "audit_api_requests_total", method="PATCH", status=s)
                    for s in statuses
                }

            async def all_counted() -> bool:
                return counts(await scrape()) == statuses

            # A request is counted just after its response went out: let the last ones land.
            await wait_for(all_counted, timeout=30)
            for _ in range(4):  # whichever worker answers the scrape, it reports all of them
                text = await scrape()
                assert counts(text) == statuses
                assert metric(text, "audit_api_publish_duration_seconds_count") == statuses["200"]

        def entries() -> list[dict[str, str]]:
            lines = server.log_path.read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()]  # every line is JSON

        def both_connected() -> bool:
            return sum(e["message"] == "connected to NATS" for e in entries()) >= 2

        await wait_for(both_connected, timeout=30)  # audit.api INFO lines from each worker
        started = [e for e in entries() if e["message"].startswith("Started server process")]
        assert len(started) == 2  # uvicorn's own lines, one per worker, in the same format
        assert {e["logger"] for e in started} == {"uvicorn.error"}
    finally:
        server.stop()
