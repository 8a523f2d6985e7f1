"""KEDA compatibility, simulated honestly: a real nats-server (and a real three-node cluster),
the durable made by ``audit-setup provision``, the trigger metadata from the rendered chart, and
the lag read from ``/jsz`` exactly as KEDA's nats-jetstream scaler does. Then real consumer
processes drain the backlog, and every event is stored once."""

import json
import math
import os
import urllib.parse
import urllib.request
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from audit_consumer.jetstream import provision
from audit_consumer.settings import ProvisionSettings, Settings
from audit_devservers import NatsServer
from audit_devservers.clusters import NatsCluster
from tests.chart.rendering import Render, find
from tests.env import ADMIN, BROKER_PASSWORDS, service_env
from tests.helpers import publish_events, wait_for
from tests.processes import consumer


def get(url: str) -> dict[str, Any]:
    """A monitoring endpoint's JSON."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        return dict(json.loads(response.read()))


def jsz_query(meta: dict[str, str]) -> str:
    """The /jsz query KEDA's scaler sends for the trigger's account."""
    return f"jsz?acc={urllib.parse.quote(meta['account'])}&consumers=true&config=true"


def durable_of(jsz: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    """The trigger's durable in a /jsz answer."""
    (acc,) = [a for a in jsz["account_details"] if a["name"] == meta["account"]]
    (stream,) = [s for s in acc["stream_detail"] if s["name"] == meta["stream"]]
    (durable,) = [c for c in stream["consumer_detail"] if c["name"] == meta["consumer"]]
    return dict(durable)


def lag(durable: dict[str, Any]) -> int:
    """What KEDA computes: the durable's num_pending + num_ack_pending."""
    return int(durable["num_pending"]) + int(durable["num_ack_pending"])


def jsz_lag(monitor: str, meta: dict[str, str]) -> int:
    """The lag KEDA reads from one server's /jsz."""
    return lag(durable_of(get(f"{monitor}/{jsz_query(meta)}"), meta))


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
    await publish_events(nc, streams.names, n, "k-")
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


def keda_cluster_lag(endpoint: str, meta: dict[str, str]) -> int:
    """KEDA's nats-jetstream scaler on a cluster (pkg/scalers/nats_jetstream_scaler.go): only
    the durable's leader knows its current lag, so it reads ``/varz`` of the endpoint for the
    cluster's advertised client URLs, and asks each of those hosts — on the endpoint's monitoring
    port — for its ``server_name`` and ``/jsz`` until one names itself the durable's leader."""
    query = jsz_query(meta)
    assert get(f"http://{endpoint}/{query}")["meta_cluster"]["cluster_size"] > 1
    port = endpoint.rsplit(":", 1)[1]
    for client_url in get(f"http://{endpoint}/varz")["connect_urls"]:
        host = client_url.split(":")[0]
        name = get(f"http://{host}:{port}/varz")["server_name"]
        durable = durable_of(get(f"http://{host}:{port}/{query}"), meta)
        if durable["cluster"]["leader"] == name:
            return lag(durable)
    raise AssertionError("no node named itself the durable's leader")


async def test_keda_finds_the_lag_of_a_replicated_durable_on_a_cluster(
    render: Render, settings: Settings, db: Any, tmp_path: Any
) -> None:
    """Three nodes on 127.0.0.1-3 with the same ports, as a StatefulSet's pods: KEDA's walk
    from one monitoring endpoint to the durable's leader works, and the lag it reads there
    drives the consumers that drain it."""
    nodes = NatsCluster(tmp_path / "nats", 3, "always", BROKER_PASSWORDS)
    nodes.start()
    try:
        clustered = Settings(
            DATABASE_URL=settings.database_url,
            NATS_URL=nodes.url_as(ADMIN),
            provision=ProvisionSettings(AUDIT_STREAM_REPLICAS=3),
        )
        await provision(clustered)
        meta = find(render("kind"), "ScaledObject")["spec"]["triggers"][0]["metadata"]
        endpoint = f"127.0.0.1:{nodes.monitor_port}"  # the chart's endpoint, node 1 answering
        assert keda_cluster_lag(endpoint, meta) == 0

        n = 600
        nc = await nats.connect(servers=clustered.nats_url.split(","))
        await publish_events(nc, clustered.names, n, "kc-")
        await nc.close()
        # A publish is acknowledged once a quorum (2 of 3) stored it; the durable's leader may be
        # the third node and count it a moment later, so its lag reaches n rather than starts there.
        await wait_for(lambda: keda_cluster_lag(endpoint, meta) == n, timeout=30)

        env = service_env(clustered)
        workers = [consumer(env, tmp_path, i).start() for i in range(2)]
        try:
            await wait_for(lambda: keda_cluster_lag(endpoint, meta) == 0, timeout=120)
        finally:
            for w in workers:
                w.stop()
    finally:
        nodes.stop()
    cur = await db.execute("SELECT count(*), count(DISTINCT id) FROM audit_events")
    assert await cur.fetchone() == (n, n)
