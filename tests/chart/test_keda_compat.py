"""KEDA compatibility, simulated honestly: a real nats-server, the durable made by
``audit-setup provision``, the trigger metadata from the rendered chart, and the lag read from
``/jsz`` exactly as KEDA's nats-jetstream scaler does. Then as many real consumer processes as
KEDA would ask for drain the backlog, and every event is stored once."""

import asyncio
import json
import math
import os
import urllib.parse
import urllib.request
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from audit_consumer.settings import Settings
from audit_devservers import NatsServer
from tests.chart.conftest import Render, find
from tests.conftest import service_env, wait_for
from tests.helpers import make_event, published
from tests.processes import consumer


def jsz_lag(monitor: str, meta: dict[str, str]) -> int:
    """What KEDA computes: the durable's num_pending + num_ack_pending from /jsz."""
    account = meta["account"]
    url = f"{monitor}/jsz?acc={urllib.parse.quote(account)}&consumers=true&config=true"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        jsz = json.loads(response.read())
    (acc,) = [a for a in jsz["account_details"] if a["name"] == account]
    (stream,) = [s for s in acc["stream_detail"] if s["name"] == meta["stream"]]
    (durable,) = [c for c in stream["consumer_detail"] if c["name"] == meta["consumer"]]
    return int(durable["num_pending"]) + int(durable["num_ack_pending"])


async def test_lag_as_keda_sees_it_drives_the_replica_count_and_drains(
    render: Render,
    nats_server: NatsServer | None,
    streams: Settings,
    db: Any,
    nc: NATS,
    tmp_path: Any,
) -> None:
    if nats_server is None and not os.environ.get("NATS_MONITOR_URL"):
        pytest.skip("external NATS without NATS_MONITOR_URL")
    monitor = nats_server.monitor_url if nats_server else os.environ["NATS_MONITOR_URL"]
    scaled = find(render("kind"), "ScaledObject")["spec"]
    meta = scaled["triggers"][0]["metadata"]
    assert meta["natsServerMonitoringEndpoint"].endswith(":8222")  # in-cluster: the monitor port
    assert (meta["stream"], meta["consumer"]) == (streams.names.stream, streams.names.durable)
    assert jsz_lag(monitor, meta) == 0

    n = 1200
    js = nc.jetstream()
    events = [make_event(resource_id=f"k-{i}") for i in range(n)]
    await asyncio.gather(
        *(js.publish(streams.names.event_subject("account.update"), **published(e)) for e in events)
    )
    assert jsz_lag(monitor, meta) == n

    threshold = int(meta["lagThreshold"])
    replicas = max(
        scaled["minReplicaCount"], min(scaled["maxReplicaCount"], math.ceil(n / threshold))
    )
    assert replicas == 3  # 1200 / 500 → 3, inside 1..4

    env = service_env(streams)
    workers = [consumer(env, tmp_path, i).start() for i in range(replicas)]
    try:
        await wait_for(lambda: jsz_lag(monitor, meta) == 0, timeout=120)
    finally:
        for w in workers:
            w.stop()
    cur = await db.execute("SELECT count(*), count(DISTINCT id) FROM audit_events")
    assert await cur.fetchone() == (n, n)
