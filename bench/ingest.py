"""Ingest measurements: the database's and the broker's ceilings, the consumer draining a
backlog (with and without integrity, one and two processes, one node and three), the
per-message baseline, publish latency and audit-verify's speed."""

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from psycopg import sql

from audit_consumer.puller import Puller
from audit_devservers import NatsServer, free_port
from audit_devservers.clusters import NatsCluster
from audit_events import COLUMNS, AuditEvent, encode, row
from audit_events.authorship import signed
from audit_events.seals import SealKey
from audit_verify.checker import VerifySettings, verify
from bench.common import (
    BIN,
    EVENT_KEY,
    KEYS,
    METADATA,
    NAMES,
    QUERY_INDEXES,
    ROOT,
    SEAL_KEY,
    SUBJECT,
    CpuMeter,
    event,
)
from bench.rig import Bench
from bench.stats import percentiles


async def db_ceiling(bench: Bench, query_indexes: bool = True) -> None:
    """COPY straight into the table; ``query_indexes=False``: with migration 0004's indexes
    dropped for the run (and recreated after), to show what they cost."""
    rows = [
        row(e, i, KEYS.sign(encode(e)), hashlib.sha256(encode(e)).digest())
        for i, e in enumerate(map(event, range(bench.n)))
    ]
    cols = ", ".join(COLUMNS)
    cpu = CpuMeter(postgres=bench.pg_pid)
    async with await psycopg.AsyncConnection.connect(bench.pg.url) as conn:
        await conn.execute("TRUNCATE audit_events")
        if not query_indexes:
            for name in QUERY_INDEXES:
                await conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        await conn.commit()
        cpu.start()
        started = time.perf_counter()
        async with (
            conn.cursor() as cur,
            cur.copy(f"COPY audit_events ({cols}) FROM STDIN") as copy,
        ):
            for r in rows:
                values = list(r)
                values[METADATA] = json.dumps(values[METADATA])
                await copy.write_row(values)
        await conn.commit()
        elapsed = time.perf_counter() - started
        used = cpu.stop(bench.n)
        if not query_indexes:
            for name, definition in QUERY_INDEXES.items():
                create = f"CREATE INDEX {name} ON audit_events {definition}"
                await conn.execute(create)
            await conn.commit()
    bench.record(
        "db_ceiling" + ("" if query_indexes else "_without_query_indexes"),
        rows=bench.n,
        per_s=bench.n / elapsed,
        postgres_cpu_us=used["postgres"],
    )


async def broker_ceiling(bench: Bench) -> None:
    await bench.reset()
    await bench.backlog(bench.n)
    nc = await bench.connect()
    # The consumer's own pull path (audit_consumer.puller), so the ratio isolates the cost
    # of decoding and storing; nats-py's fetch() is measured too, for reference.
    puller = Puller(nc, NAMES.stream, NAMES.durable)
    await puller.start()
    cpu = CpuMeter(nats=bench.nats_pid, postgres=bench.pg_pid, fetch_ack=[os.getpid()])
    cpu.start()
    elapsed = await fetch_and_ack(bench, nc, lambda: puller.fetch(500, 2.0))
    used = cpu.stop(bench.n)
    await puller.stop()
    await bench.backlog(bench.n)
    sub = await nc.jetstream().pull_subscribe_bind(NAMES.durable, NAMES.stream)
    nats_py_elapsed = await fetch_and_ack(bench, nc, lambda: sub.fetch(500, timeout=2))
    await nc.close()
    bench.record(
        "broker_ceiling",
        msgs=bench.n,
        per_s=bench.n / elapsed,
        nats_py_fetch_per_s=bench.n / nats_py_elapsed,
        fetch_ack_cpu_us=used["fetch_ack"],
        nats_cpu_us=used["nats"],
    )


async def fetch_and_ack(bench: Bench, nc: NATS, fetch: Callable[[], Awaitable[list[Msg]]]) -> float:
    """Seconds to fetch and ack the whole backlog of n messages, no other work."""
    done = 0
    started = time.perf_counter()
    while done < bench.n:
        msgs = await fetch()
        for m in msgs:
            await m.ack()
        done += len(msgs)
    await nc.flush()  # the server has every ack
    return time.perf_counter() - started


# -- consumers -----------------------------------------------------------------------


async def drain(
    bench: Bench,
    consumers: int,
    integrity: bool = True,
    name: str = "",
    before: Callable[[], Awaitable[None]] | None = None,
    during: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Time ``consumers`` audit-consumer processes take to store a backlog of n events
    (``integrity=False``: the same consumer without signature checks and sealing). ``before``
    runs once the log is empty, ``during`` beside the drain (it must be done before the rows
    are counted: retention, ``retention.py``)."""
    await bench.reset()
    if before is not None:
        await before()
    nc = await bench.connect()
    js: JetStreamContext = nc.jetstream()
    await js.pause_consumer(NAMES.stream, NAMES.durable, "2999-01-01T00:00:00Z")
    await bench.backlog(bench.n)
    ports = [free_port() for _ in range(consumers)]
    # A pull request left waiting on the paused durable is not served when it resumes; the
    # consumer's next request is. A 50 ms expiry (instead of 1 s) makes that wait vanish
    # from the measurement; with a backlog every request is filled at once, so nothing
    # else changes.
    envs = [
        bench.env(
            AUDIT_HEALTH_PORT=str(p),
            AUDIT_HEALTH_HOST="127.0.0.1",
            AUDIT_FETCH_WAIT_SECONDS="0.05",
        )
        for p in ports
    ]
    argv = [str(BIN / "audit-consumer")]
    if not integrity:
        argv = [sys.executable, str(ROOT / "bench" / "consumer_without_integrity.py")]
    with bench.processes([argv] * consumers, envs) as pids:
        await asyncio.sleep(2.0)  # started, connected, idle on the paused durable
        cpu = CpuMeter(consumer=pids, postgres=bench.pg_pid, nats=bench.nats_pid)
        cpu.start()
        started = time.perf_counter()
        await js.resume_consumer(NAMES.stream, NAMES.durable)
        beside: asyncio.Task[None] | None = None
        if during is not None:
            beside = asyncio.create_task(during())
        # Poll JetStream, not PostgreSQL (a count(*) every 50 ms would steal the database's
        # CPU): acks follow commits, so an empty durable means every row is committed.
        while True:
            info = await js.consumer_info(NAMES.stream, NAMES.durable)
            if info.num_pending + info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        used = cpu.stop(bench.n)
        if beside is not None:
            await beside
        assert await bench.rows() == bench.n
        if integrity:
            await sealed(bench)
    await nc.close()
    bench.record(
        name or f"consumer_{consumers}p" + ("" if integrity else "_without_integrity"),
        events=bench.n,
        per_s=bench.n / elapsed,
        **{f"{k}_cpu_us": v for k, v in used.items()},
    )


async def sealed(bench: Bench, timeout: float = 120) -> None:
    """Wait until every committed batch is sealed (the consumers are still running)."""
    unsealed = (
        "SELECT count(*) FROM audit_events WHERE tx_id >="
        " coalesce((SELECT max(upto_tx) FROM audit_seals), '0')"
    )
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(bench.pg.url, autocommit=True) as conn:
        while (await (await conn.execute(unsealed)).fetchone()) != (0,):
            assert time.monotonic() < deadline, "sealing did not catch up"
            await asyncio.sleep(0.2)


async def verify_speed(bench: Bench) -> None:
    """``audit-verify`` over every row (sealed by the last drain) against reading the same
    rows with ``COPY … TO STDOUT``, both against the same table in the same run."""
    async with await psycopg.AsyncConnection.connect(bench.pg.url) as conn:
        started = time.perf_counter()
        size = 0
        query = "COPY (SELECT * FROM audit_events) TO STDOUT"
        async with conn.cursor() as cur, cur.copy(query) as copy:
            async for block in copy:
                size += len(block)
        copy_s = time.perf_counter() - started
    settings = VerifySettings.model_validate(
        {
            "DATABASE_URL": bench.pg.url,
            "AUDIT_SEAL_PUBLIC_KEYS": SealKey(SEAL_KEY).public_text(),
            "AUDIT_EVENT_KEYS": EVENT_KEY,
        }
    )
    speeds = {}
    jobs = os.cpu_count() or 1
    for name, keys, n in (("", EVENT_KEY, 1), ("_no_key", "", 1), ("_jobs", EVENT_KEY, jobs)):
        settings = settings.model_copy(update={"event_keys": keys})
        started = time.perf_counter()
        report = await asyncio.to_thread(verify, settings, grace=timedelta(hours=1), jobs=n)
        speeds[f"per_s{name}"] = bench.n / (time.perf_counter() - started)
        assert report.findings == [], report.summary()
        assert report.rows == bench.n, report.summary()
    bench.record(
        "verify",
        rows=bench.n,
        seals=report.seals,
        jobs=jobs,
        **speeds,
        copy_per_s=bench.n / copy_s,
        copy_mb=size / 1e6,
    )


async def per_message(bench: Bench) -> None:
    """The usual design: fetch 1, INSERT 1, COMMIT, ack 1 — same data, one at a time."""
    n = 300 if bench.quick else 3_000
    await bench.reset()
    await bench.backlog(n)
    nc = await bench.connect()
    sub = await nc.jetstream().pull_subscribe_bind(NAMES.durable, NAMES.stream)
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    insert = f"INSERT INTO audit_events ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    from audit_events import decode

    METADATA = COLUMNS.index("metadata")

    async with await psycopg.AsyncConnection.connect(bench.pg.url) as conn:
        started = time.perf_counter()
        for _ in range(n):
            (msg,) = await sub.fetch(1, timeout=2)
            r = list(row(decode(msg.data), msg.metadata.sequence.stream, None, bytes(32)))
            r[METADATA] = psycopg.types.json.Jsonb(r[METADATA])
            await conn.execute(insert, r)
            await conn.commit()
            await msg.ack()
        elapsed = time.perf_counter() - started
    await nc.close()
    bench.record("per_message_baseline", events=n, per_s=n / elapsed)


async def publish_latency(bench: Bench, n: int, in_flight: int = 16) -> dict[str, float]:
    """JetStream publish → ack latency, ``in_flight`` publishers at once (the API's path)."""
    await bench.reset()
    nc = await bench.connect()
    js = nc.jetstream()
    samples: list[float] = []
    gate = asyncio.Semaphore(in_flight)

    async def one(e: AuditEvent) -> None:
        data, headers = signed(e, KEYS)
        async with gate:
            started = time.perf_counter()
            await js.publish(SUBJECT, data, headers=headers)
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(event(i)) for i in range(n)))
    elapsed = time.perf_counter() - started
    await nc.close()
    p50, p99 = percentiles(samples, 0.5, 0.99)
    return {"publish_p50_ms": p50, "publish_p99_ms": p99, "publish_per_s": n / elapsed}


async def broker_shapes(bench: Bench) -> None:
    """One node beside a three-node cluster with R3 streams, both as shipped (fsync before
    every ack): the publish path's latency and one consumer's drain rate."""
    single = NatsServer(bench.root / "shape-single", sync="always", auth=bench.users)
    cluster = NatsCluster(bench.root / "shape-cluster", 3, "always", bench.users)
    shipped, bench.replicas = bench.nats, 1
    try:
        for label, server, replicas in (("single", single, 1), ("r3", cluster, 3)):
            server.start()
            bench.nats, bench.replicas = server, replicas
            try:
                latency = await publish_latency(bench, 2_000 if bench.quick else 20_000)
                await drain(bench, 1, name=f"shape_{label}_consumer")
                drained = bench.results.pop(f"shape_{label}_consumer")
                bench.record(f"shape_{label}", **latency, consumer_per_s=drained["per_s"])
            finally:
                server.stop()
    finally:
        bench.nats, bench.replicas = shipped, 1


# -- API -----------------------------------------------------------------------------
