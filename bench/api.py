"""HTTP measurements: the API with a real and a no-op publish (through ``loadgen.py``), and
end to end — acknowledged request to stored row to the feed handing it out."""

import asyncio
import sys
import time
from typing import Any

import psycopg

from audit_devservers import free_port
from audit_events.seals import SealKey, SealKeys
from audit_query.store import feed
from audit_query.trust import SealTrust
from bench.common import BIN, ROOT, SEAL_KEY, CpuMeter
from bench.rig import Bench
from bench.stats import percentiles


async def api(bench: Bench, workers: int, rounds: int = 3) -> None:
    """The API with the real publish and with a no-op publish, both running, measured in
    alternating rounds (a shared machine drifts; alternating spreads the drift over both).
    Each row is the round with the median rate."""
    await bench.reset()
    port, noop_port = free_port(), free_port()
    env = bench.env(
        AUDIT_API_PORT=str(port), AUDIT_API_HOST="127.0.0.1", AUDIT_API_WORKERS=str(workers)
    )
    noop = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.noop_api:create_app",
        "--port",
        str(noop_port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    real: list[dict[str, Any]] = []
    fake: list[dict[str, Any]] = []
    seconds = bench.seconds / rounds
    argvs = [[str(BIN / "audit-api")], noop]
    with bench.processes(argvs, [env, {**env, "PYTHONPATH": str(ROOT)}]) as (api, noop_api):
        bench.wait_http(port)
        bench.wait_http(noop_port)
        cpu = CpuMeter(nats=bench.nats_pid, api=[api], noop_api=[noop_api])
        cpu.start()
        for _ in range(rounds):
            real.append(bench.loadgen(port, concurrency=64, seconds=seconds))
            fake.append(bench.loadgen(noop_port, concurrency=64, seconds=seconds))
        used = cpu.stop(1)  # µs in all, divided below by each side's requests
        plain = bench.loadgen(port, concurrency=64, seconds=seconds, method="GET", path="/healthz")
    sides = (
        (f"api_publish_w{workers}", real, "api"),
        (f"api_noop_w{workers}", fake, "noop_api"),
    )
    for name, runs, process in sides:
        median = sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
        statuses: dict[str, int] = {}
        for run in runs:
            for status, count in run["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        requests = sum(statuses.values())
        extra = {"nats_cpu_us": used["nats"] / requests} if process == "api" else {}
        bench.record(
            name,
            rps=median["rps"],
            p50_ms=median["p50_ms"],
            p99_ms=median["p99_ms"],
            statuses=statuses,
            rounds=[round(run["rps"]) for run in runs],
            api_cpu_us=used[process] / requests,
            **extra,
        )
    bench.record(f"loadgen_healthz_w{workers}", rps=plain["rps"])


async def end_to_end(bench: Bench, workers: int) -> None:
    """Steady load at half the API's measured maximum: API ack → committed row visible."""
    await bench.reset()
    rate = bench.results[f"api_publish_w{workers}"]["rps"] / 2
    port = free_port()
    env = bench.env(
        AUDIT_API_PORT=str(port),
        AUDIT_API_HOST="127.0.0.1",
        AUDIT_API_WORKERS=str(workers),
        AUDIT_FETCH_WAIT_SECONDS="0.5",
    )
    consumer_env = bench.env(AUDIT_HEALTH_PORT=str(free_port()), AUDIT_HEALTH_HOST="127.0.0.1")
    argvs = [[str(BIN / "audit-api")], [str(BIN / "audit-consumer")]]
    seen: dict[str, float] = {}
    with bench.processes(argvs, [env, consumer_env]):
        bench.wait_http(port)
        stop = asyncio.Event()

        async def watch() -> None:  # when does each row become visible?
            # Batches commit out of stream order (two connections, or two consumers), so
            # poll above the highest sequence below which every row has been seen.
            done, above = 0, set()
            async with await psycopg.AsyncConnection.connect(bench.pg.url, autocommit=True) as c:
                while not stop.is_set():
                    cur = await c.execute(
                        "SELECT id::text, stream_seq FROM audit_events WHERE stream_seq > %s",
                        (done,),
                    )
                    now = time.time()
                    for id_, seq in await cur.fetchall():
                        seen.setdefault(id_, now)
                        above.add(seq)
                    while done + 1 in above:
                        done += 1
                        above.discard(done)
                    await asyncio.sleep(0.005)

        fed: dict[str, float] = {}

        async def follow() -> None:  # when does the feed hand each row out?
            async with await psycopg.AsyncConnection.connect(bench.pg.url) as c:
                await c.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                after, trust = None, SealTrust(SealKeys([SealKey(SEAL_KEY).public_text()]))
                while not stop.is_set():
                    page = await feed(c, after, 1000, trust)
                    now = time.time()
                    for item in page.items:
                        fed.setdefault(str(item["id"]), now)
                    after = page.next_cursor
                    if not page.items:
                        await asyncio.sleep(0.005)

        watchers = [asyncio.create_task(watch()), asyncio.create_task(follow())]
        result = await asyncio.to_thread(
            bench.loadgen, port, concurrency=64, seconds=bench.seconds, rate=rate, ids=True
        )
        acked = dict(result["acked"])
        while len(seen) < len(acked) or not set(acked) <= set(fed):
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*watchers)
    lat = [max(0.0, seen[i] - t) for i, t in acked.items()]
    p50, p99 = percentiles(lat, 0.5, 0.99)
    bench.record(f"end_to_end_w{workers}", rate=rate, events=len(lat), p50_ms=p50, p99_ms=p99)
    # The feed's price: how long after a row is visible the feed may hand it out (once no
    # older transaction can still commit), with the consumer committing two batches at once.
    behind = [max(0.0, fed[i] - seen[i]) for i in acked]
    p50, p99, most = percentiles(behind, 0.5, 0.99, 1.0)
    bench.record(f"feed_delay_w{workers}", events=len(behind), p50_ms=p50, p99_ms=p99, max_ms=most)
