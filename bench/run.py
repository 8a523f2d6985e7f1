"""``make bench``: the pipeline's throughput and latency against this machine's own ceilings,
measured in one run on the same data, reported as ratios (absolute numbers mean little on a
shared machine), with the CPU each process spent per event, which says what limits each
number. Prints a markdown table and writes ``bench-results/bench.json``.

``--quick`` (CI) runs the same steps on tiny inputs: it must finish and print, nothing more.

(One file on purpose, over 250 lines: every measurement shares the run's servers, data and CPU
accounting, and the table compares them with each other.)
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import runpy
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psutil
import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from psycopg import sql

from audit_consumer.database import migrate
from audit_consumer.jetstream import provision
from audit_consumer.puller import Puller
from audit_consumer.settings import ProvisionSettings, Settings
from audit_devservers import Child, NatsServer, PostgresServer, free_port
from audit_devservers.clusters import NatsCluster
from audit_events import COLUMNS, AuditEvent, StreamNames, encode, row, uuid7
from audit_events.auth import issue_token
from audit_events.authorship import EventKeys, signed
from audit_events.broker import IDENTITIES
from audit_events.seals import SealKey, generate_seal_key
from audit_query.store import feed
from audit_verify.checker import VerifySettings, verify
from bench import queries

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "bench-secret-0123456789abcdef0123456789"
NAMES = StreamNames()
PASSWORD = secrets.token_urlsafe(18)
METADATA = COLUMNS.index("metadata")  # the jsonb column
SUBJECT = NAMES.event_subject("account.update")
QUERY_INDEXES: dict[str, str] = runpy.run_path(
    str(ROOT / "migrations" / "versions" / "0004_query_indexes.py")
)["INDEXES"]
EVENT_KEY = secrets.token_urlsafe(32)
KEYS = EventKeys([EVENT_KEY])
SEAL_KEY = generate_seal_key()


def event(i: int) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": uuid7(),
            "occurred_at": datetime.now(UTC),
            "actor_type": "user",
            "actor_id": f"user-{i % 97}",
            "action": "account.update",
            "resource_type": "account",
            "resource_id": f"acc-{i % 1009}",
            "outcome": "success",
            "source_ip": "10.1.2.3",
            "user_agent": "bench/1.0",
            "request_id": f"req-{i}",
            "metadata": {
                "method": "PATCH",
                "path": f"/accounts/acc-{i % 1009}",
                "status": 200,
                "fields": ["email", "plan"],
            },
        }
    )


class CpuMeter:
    """CPU seconds each group of processes (with their children) used between ``start`` and
    ``stop``: what the pipeline costs per event, and so what the machine could do at most.
    A process counts in the first group whose tree holds it (the servers are this script's
    children too: list this script last)."""

    def __init__(self, **groups: list[int]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}

    def _cpu(self) -> dict[str, dict[int, float]]:
        claimed: set[int] = set()
        found: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            found[name] = {}
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        if proc.pid in claimed:
                            continue
                        with contextlib.suppress(psutil.Error):
                            times = proc.cpu_times()
                            found[name][proc.pid] = times.user + times.system
                            claimed.add(proc.pid)
        return found

    def start(self) -> None:
        self.before = {pid: t for procs in self._cpu().values() for pid, t in procs.items()}

    def stop(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event, per group."""
        return {
            name: sum(t - self.before.get(pid, 0.0) for pid, t in procs.items()) / events * 1e6
            for name, procs in self._cpu().items()
        }


class Bench:
    def __init__(self, root: Path, quick: bool) -> None:
        self.quick = quick
        self.n = 2_000 if quick else 100_000
        self.seconds = 1.5 if quick else 9.0
        self.pg = PostgresServer(root / "pg")
        # As shipped: NATS requires the project's identities (one password for all of them
        # here), and the bench's own clients log in as an admin.
        users = {**dict.fromkeys(IDENTITIES, PASSWORD), "admin": PASSWORD}
        self.nats: NatsServer | NatsCluster = NatsServer(root / "nats", auth=users)
        self.root, self.users, self.replicas = root, users, 1
        self.results: dict[str, dict[str, Any]] = {}

    @property
    def settings(self) -> Settings:
        return Settings(
            DATABASE_URL=self.pg.url,
            NATS_URL=self.nats.url_as("admin"),
            AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations"),
            provision=ProvisionSettings(AUDIT_STREAM_REPLICAS=self.replicas),
        )

    async def connect(self) -> NATS:
        """The bench's own admin client (to every node of a cluster)."""
        return await nats.connect(servers=self.nats.url_as("admin").split(","))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
        env.update(
            DATABASE_URL=self.pg.url,
            NATS_URL=self.nats.url,
            AUDIT_NATS_PASSWORD=PASSWORD,
            AUDIT_JWT_SECRET=SECRET,
            AUDIT_EVENT_KEYS=EVENT_KEY,
            AUDIT_SEAL_KEY=SEAL_KEY,
            PYTHONUNBUFFERED="1",
            **extra,
        )
        return env

    def record(self, name: str, **values: Any) -> None:
        self.results[name] = values
        shown = ", ".join(
            f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        print(f"  {name}: {shown}", flush=True)

    # -- state ---------------------------------------------------------------------------

    async def reset(self) -> None:
        """Empty table, fresh streams and durable."""
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            await conn.execute("TRUNCATE audit_events, audit_seals")
        nc = await self.connect()
        for name in (NAMES.stream, NAMES.dlq_stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(name)
        await nc.close()
        await provision(self.settings)

    async def backlog(self, n: int) -> None:
        """``n`` events in the stream, published with acks, 256 in flight."""
        nc = await self.connect()
        js = nc.jetstream()
        events = [event(i) for i in range(n)]
        gate = asyncio.Semaphore(256)

        async def one(e: AuditEvent) -> None:  # as the API publishes: id and signature
            data, headers = signed(e, KEYS)
            async with gate:
                await js.publish(SUBJECT, data, headers=headers)

        await asyncio.gather(*(one(e) for e in events))
        await nc.close()

    async def rows(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
            cur = await conn.execute("SELECT count(*) FROM audit_events")
            (n,) = await cur.fetchone()  # type: ignore[misc]
            return int(n)

    # -- ceilings ------------------------------------------------------------------------

    @property
    def pg_pid(self) -> list[int]:
        assert self.pg.proc is not None
        return [self.pg.proc.pid]

    @property
    def nats_pid(self) -> list[int]:
        nodes = self.nats.nodes if isinstance(self.nats, NatsCluster) else [self.nats]
        return [node.proc.pid for node in nodes if node.proc is not None]

    async def db_ceiling(self, query_indexes: bool = True) -> None:
        """COPY straight into the table; ``query_indexes=False``: with migration 0004's indexes
        dropped for the run (and recreated after), to show what they cost."""
        rows = [
            row(e, i, KEYS.sign(encode(e)), hashlib.sha256(encode(e)).digest())
            for i, e in enumerate(map(event, range(self.n)))
        ]
        cols = ", ".join(COLUMNS)
        cpu = CpuMeter(postgres=self.pg_pid)
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
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
            used = cpu.stop(self.n)
            if not query_indexes:
                for name, definition in QUERY_INDEXES.items():
                    create = f"CREATE INDEX {name} ON audit_events {definition}"
                    await conn.execute(create)
                await conn.commit()
        self.record(
            "db_ceiling" + ("" if query_indexes else "_without_query_indexes"),
            rows=self.n,
            per_s=self.n / elapsed,
            postgres_cpu_us=used["postgres"],
        )

    async def broker_ceiling(self) -> None:
        await self.reset()
        await self.backlog(self.n)
        nc = await self.connect()
        # The consumer's own pull path (audit_consumer.puller), so the ratio isolates the cost
        # of decoding and storing; nats-py's fetch() is measured too, for reference.
        puller = Puller(nc, NAMES.stream, NAMES.durable)
        await puller.start()
        cpu = CpuMeter(nats=self.nats_pid, postgres=self.pg_pid, fetch_ack=[os.getpid()])
        cpu.start()
        elapsed = await self.fetch_and_ack(nc, lambda: puller.fetch(500, 2.0))
        used = cpu.stop(self.n)
        await puller.stop()
        await self.backlog(self.n)
        sub = await nc.jetstream().pull_subscribe_bind(NAMES.durable, NAMES.stream)
        nats_py_elapsed = await self.fetch_and_ack(nc, lambda: sub.fetch(500, timeout=2))
        await nc.close()
        self.record(
            "broker_ceiling",
            msgs=self.n,
            per_s=self.n / elapsed,
            nats_py_fetch_per_s=self.n / nats_py_elapsed,
            fetch_ack_cpu_us=used["fetch_ack"],
            nats_cpu_us=used["nats"],
        )

    async def fetch_and_ack(self, nc: NATS, fetch: Callable[[], Awaitable[list[Msg]]]) -> float:
        """Seconds to fetch and ack the whole backlog of n messages, no other work."""
        done = 0
        started = time.perf_counter()
        while done < self.n:
            msgs = await fetch()
            for m in msgs:
                await m.ack()
            done += len(msgs)
        await nc.flush()  # the server has every ack
        return time.perf_counter() - started

    # -- consumers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def processes(self, argvs: list[list[str]], envs: list[dict[str, str]]) -> Iterator[list[int]]:
        procs = [Child(a[0], a, e).start() for a, e in zip(argvs, envs, strict=True)]
        try:
            yield [p.pid for p in procs]
        finally:
            for p in procs:
                p.signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)

    async def drain(self, consumers: int, integrity: bool = True, name: str = "") -> None:
        """Time ``consumers`` audit-consumer processes take to store a backlog of n events
        (``integrity=False``: the same consumer without signature checks and sealing)."""
        await self.reset()
        nc = await self.connect()
        js: JetStreamContext = nc.jetstream()
        await js.pause_consumer(NAMES.stream, NAMES.durable, "2999-01-01T00:00:00Z")
        await self.backlog(self.n)
        ports = [free_port() for _ in range(consumers)]
        # A pull request left waiting on the paused durable is not served when it resumes; the
        # consumer's next request is. A 50 ms expiry (instead of 1 s) makes that wait vanish
        # from the measurement; with a backlog every request is filled at once, so nothing
        # else changes.
        envs = [
            self.env(
                AUDIT_HEALTH_PORT=str(p),
                AUDIT_HEALTH_HOST="127.0.0.1",
                AUDIT_FETCH_WAIT_SECONDS="0.05",
            )
            for p in ports
        ]
        argv = [str(BIN / "audit-consumer")]
        if not integrity:
            argv = [sys.executable, str(ROOT / "bench" / "consumer_without_integrity.py")]
        with self.processes([argv] * consumers, envs) as pids:
            await asyncio.sleep(2.0)  # started, connected, idle on the paused durable
            cpu = CpuMeter(consumer=pids, postgres=self.pg_pid, nats=self.nats_pid)
            cpu.start()
            started = time.perf_counter()
            await js.resume_consumer(NAMES.stream, NAMES.durable)
            # Poll JetStream, not PostgreSQL (a count(*) every 50 ms would steal the database's
            # CPU): acks follow commits, so an empty durable means every row is committed.
            while True:
                info = await js.consumer_info(NAMES.stream, NAMES.durable)
                if info.num_pending + info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            used = cpu.stop(self.n)
            assert await self.rows() == self.n
            if integrity:
                await self.sealed()
        await nc.close()
        self.record(
            name or f"consumer_{consumers}p" + ("" if integrity else "_without_integrity"),
            events=self.n,
            per_s=self.n / elapsed,
            **{f"{k}_cpu_us": v for k, v in used.items()},
        )

    async def sealed(self, timeout: float = 120) -> None:
        """Wait until every committed batch is sealed (the consumers are still running)."""
        unsealed = (
            "SELECT count(*) FROM audit_events WHERE tx_id >="
            " coalesce((SELECT max(upto_tx) FROM audit_seals), '0')"
        )
        deadline = time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as conn:
            while (await (await conn.execute(unsealed)).fetchone()) != (0,):
                assert time.monotonic() < deadline, "sealing did not catch up"
                await asyncio.sleep(0.2)

    async def verify_speed(self) -> None:
        """``audit-verify`` over every row (sealed by the last drain) against reading the same
        rows with ``COPY … TO STDOUT``, both against the same table in the same run."""
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
            started = time.perf_counter()
            size = 0
            query = "COPY (SELECT * FROM audit_events) TO STDOUT"
            async with conn.cursor() as cur, cur.copy(query) as copy:
                async for block in copy:
                    size += len(block)
            copy_s = time.perf_counter() - started
        settings = VerifySettings.model_validate(
            {
                "DATABASE_URL": self.pg.url,
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
            speeds[f"per_s{name}"] = self.n / (time.perf_counter() - started)
            assert report.findings == [], report.summary()
            assert report.rows == self.n, report.summary()
        self.record(
            "verify",
            rows=self.n,
            seals=report.seals,
            jobs=jobs,
            **speeds,
            copy_per_s=self.n / copy_s,
            copy_mb=size / 1e6,
        )

    async def per_message(self) -> None:
        """The usual design: fetch 1, INSERT 1, COMMIT, ack 1 — same data, one at a time."""
        n = 300 if self.quick else 3_000
        await self.reset()
        await self.backlog(n)
        nc = await self.connect()
        sub = await nc.jetstream().pull_subscribe_bind(NAMES.durable, NAMES.stream)
        cols = ", ".join(COLUMNS)
        marks = ", ".join(["%s"] * len(COLUMNS))
        insert = f"INSERT INTO audit_events ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
        from audit_events import decode

        METADATA = COLUMNS.index("metadata")

        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
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
        self.record("per_message_baseline", events=n, per_s=n / elapsed)

    async def publish_latency(self, n: int, in_flight: int = 16) -> dict[str, float]:
        """JetStream publish → ack latency, ``in_flight`` publishers at once (the API's path)."""
        await self.reset()
        nc = await self.connect()
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
        samples.sort()
        return {
            "publish_p50_ms": samples[len(samples) // 2] * 1000,
            "publish_p99_ms": samples[int(len(samples) * 0.99)] * 1000,
            "publish_per_s": n / elapsed,
        }

    async def broker_shapes(self) -> None:
        """One node beside a three-node cluster with R3 streams, both as shipped (fsync before
        every ack): the publish path's latency and one consumer's drain rate."""
        single = NatsServer(self.root / "shape-single", sync="always", auth=self.users)
        cluster = NatsCluster(self.root / "shape-cluster", 3, "always", self.users)
        shipped, self.replicas = self.nats, 1
        try:
            for label, server, replicas in (("single", single, 1), ("r3", cluster, 3)):
                server.start()
                self.nats, self.replicas = server, replicas
                try:
                    latency = await self.publish_latency(2_000 if self.quick else 20_000)
                    await self.drain(1, name=f"shape_{label}_consumer")
                    drained = self.results.pop(f"shape_{label}_consumer")
                    self.record(f"shape_{label}", **latency, consumer_per_s=drained["per_s"])
                finally:
                    server.stop()
        finally:
            self.nats, self.replicas = shipped, 1

    # -- API -----------------------------------------------------------------------------

    def loadgen(self, port: int, **opts: Any) -> dict[str, Any]:
        argv = [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "--port",
            str(port),
            "--token",
            issue_token(SECRET, "bench"),
        ]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        result, end = json.JSONDecoder().raw_decode(out)
        if extra := out[end:].strip():  # something else wrote to its stdout: say what
            print(f"  (loadgen also printed: {extra[:500]!r})", flush=True)
        return dict(result)

    def wait_http(self, port: int, path: str = "/readyz") -> None:
        import urllib.request

        url = f"http://127.0.0.1:{port}{path}"
        for _ in range(200):
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"nothing answers on {port}{path}")

    async def api(self, workers: int, rounds: int = 3) -> None:
        """The API with the real publish and with a no-op publish, both running, measured in
        alternating rounds (a shared machine drifts; alternating spreads the drift over both).
        Each row is the round with the median rate."""
        await self.reset()
        port, noop_port = free_port(), free_port()
        env = self.env(
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
        seconds = self.seconds / rounds
        argvs = [[str(BIN / "audit-api")], noop]
        with self.processes(argvs, [env, {**env, "PYTHONPATH": str(ROOT)}]) as (api, noop_api):
            self.wait_http(port)
            self.wait_http(noop_port)
            cpu = CpuMeter(nats=self.nats_pid, api=[api], noop_api=[noop_api])
            cpu.start()
            for _ in range(rounds):
                real.append(self.loadgen(port, concurrency=64, seconds=seconds))
                fake.append(self.loadgen(noop_port, concurrency=64, seconds=seconds))
            used = cpu.stop(1)  # µs in all, divided below by each side's requests
            plain = self.loadgen(
                port, concurrency=64, seconds=seconds, method="GET", path="/healthz"
            )
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
            self.record(
                name,
                rps=median["rps"],
                p50_ms=median["p50_ms"],
                p99_ms=median["p99_ms"],
                statuses=statuses,
                rounds=[round(run["rps"]) for run in runs],
                api_cpu_us=used[process] / requests,
                **extra,
            )
        self.record(f"loadgen_healthz_w{workers}", rps=plain["rps"])

    async def end_to_end(self, workers: int) -> None:
        """Steady load at half the API's measured maximum: API ack → committed row visible."""
        await self.reset()
        rate = self.results[f"api_publish_w{workers}"]["rps"] / 2
        port = free_port()
        env = self.env(
            AUDIT_API_PORT=str(port),
            AUDIT_API_HOST="127.0.0.1",
            AUDIT_API_WORKERS=str(workers),
            AUDIT_FETCH_WAIT_SECONDS="0.5",
        )
        consumer_env = self.env(AUDIT_HEALTH_PORT=str(free_port()), AUDIT_HEALTH_HOST="127.0.0.1")
        argvs = [[str(BIN / "audit-api")], [str(BIN / "audit-consumer")]]
        seen: dict[str, float] = {}
        with self.processes(argvs, [env, consumer_env]):
            self.wait_http(port)
            stop = asyncio.Event()

            async def watch() -> None:  # when does each row become visible?
                # Batches commit out of stream order (two connections, or two consumers), so
                # poll above the highest sequence below which every row has been seen.
                done, above = 0, set()
                async with await psycopg.AsyncConnection.connect(self.pg.url, autocommit=True) as c:
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
                async with await psycopg.AsyncConnection.connect(self.pg.url) as c:
                    await c.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                    after = None
                    while not stop.is_set():
                        page = await feed(c, after, 1000)
                        now = time.time()
                        for item in page.items:
                            fed.setdefault(str(item["id"]), now)
                        after = page.next_cursor
                        if not page.items:
                            await asyncio.sleep(0.005)

            watchers = [asyncio.create_task(watch()), asyncio.create_task(follow())]
            result = await asyncio.to_thread(
                self.loadgen, port, concurrency=64, seconds=self.seconds, rate=rate, ids=True
            )
            acked = dict(result["acked"])
            while len(seen) < len(acked) or not set(acked) <= set(fed):
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*watchers)
        lat = sorted(max(0.0, seen[i] - t) for i, t in acked.items())
        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
        self.record(f"end_to_end_w{workers}", rate=rate, events=len(lat), p50_ms=p50, p99_ms=p99)
        # The feed's price: how long after a row is visible the feed may hand it out (once no
        # older transaction can still commit), with the consumer committing two batches at once.
        behind = sorted(max(0.0, fed[i] - seen[i]) for i in acked)
        self.record(
            f"feed_delay_w{workers}",
            events=len(behind),
            p50_ms=behind[len(behind) // 2] * 1000,
            p99_ms=behind[int(len(behind) * 0.99)] * 1000,
            max_ms=behind[-1] * 1000,
        )


def table(r: dict[str, dict[str, Any]], workers: int) -> str:
    db, ceiling = r["db_ceiling"], r["broker_ceiling"]
    lean = r["db_ceiling_without_query_indexes"]
    broker, nats_py = ceiling["per_s"], ceiling["nats_py_fetch_per_s"]
    c1, c2 = r["consumer_1p"]["per_s"], r["consumer_2p"]["per_s"]
    plain, verify = r["consumer_1p_without_integrity"]["per_s"], r["verify"]
    copy = verify["copy_per_s"]
    base = r["per_message_baseline"]["per_s"]
    api, noop = r[f"api_publish_w{workers}"], r[f"api_noop_w{workers}"]
    e2e, fd = r[f"end_to_end_w{workers}"], r[f"feed_delay_w{workers}"]
    cores = os.cpu_count() or 1
    # Where the CPU goes per stored event (2 processes: the run that keeps every core busy).
    cost = {k: r["consumer_2p"][f"{k}_cpu_us"] for k in ("consumer", "postgres", "nats")}
    bound = cores * 1e6 / sum(cost.values())
    # What 0.75 x the broker ceiling would take: one consumer process is one thread, so its
    # CPU per event must fit in one core at that rate; and the three processes must fit in all.
    target = 0.75 * broker
    budget_us = 1e6 / target
    cores_needed = target * sum(cost.values()) / 1e6

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    lines = [
        "| measurement | value | ratio | target |",
        "|---|---:|---:|---|",
        f"| DB ceiling: COPY into audit_events (indexes on) | {db['per_s']:,.0f} rows/s "
        f"| PostgreSQL {db['postgres_cpu_us']:.1f} µs CPU/row | |",
        f"| the same without the query service's {len(QUERY_INDEXES)} indexes (migration 0004) "
        f"| {lean['per_s']:,.0f} rows/s | with them: {db['per_s'] / lean['per_s']:.2f} × "
        f"(PostgreSQL {lean['postgres_cpu_us']:.1f} → {db['postgres_cpu_us']:.1f} µs/row) | |",
        f"| broker ceiling: fetch + ack, no DB (the consumer's puller) | {broker:,.0f} msgs/s "
        f"| nats-py fetch(): {nats_py:,.0f} msgs/s; CPU/msg: client "
        f"{ceiling['fetch_ack_cpu_us']:.1f} µs, NATS {ceiling['nats_cpu_us']:.1f} µs | |",
        f"| consumer, 1 process, draining {r['consumer_1p']['events']:,} | {c1:,.0f} events/s "
        f"| {c1 / broker:.2f} × broker ({c1 / nats_py:.2f} × nats-py fetch) "
        f"| ≥ 0.75 × broker: {ok(c1 >= 0.75 * broker)} |",
        f"| consumer, 1 process, without authorship checks and sealing | {plain:,.0f} events/s "
        f"| with them: {c1 / plain:.2f} × | ≥ 0.85: {ok(c1 >= 0.85 * plain)} |",
        f"| consumer, 2 processes | {c2:,.0f} events/s | {c2 / c1:.2f} × 1 process | |",
        f"| audit-verify, {verify['rows']:,} rows in {verify['seals']:,} seals, with the event "
        f"key, --jobs {verify['jobs']} | {verify['per_s_jobs']:,.0f} rows/s (1 job: "
        f"{verify['per_s']:,.0f}; 1 job, seals only: {verify['per_s_no_key']:,.0f}) "
        f"| {verify['per_s_jobs'] / copy:.2f} × COPY TO STDOUT ({copy:,.0f} rows/s) "
        f"| ≥ 0.25: {ok(verify['per_s_jobs'] >= 0.25 * copy)} |",
        f"| CPU per stored event (2 processes) | consumer {cost['consumer']:.1f} µs, "
        f"PostgreSQL {cost['postgres']:.1f} µs, NATS {cost['nats']:.1f} µs "
        f"| {cores} cores allow ≤ {bound:,.0f} events/s; 2 processes reach {c2 / bound:.0%} | |",
        f"| 0.75 × broker = {target:,.0f} events/s would need | one process at ≤ "
        f"{budget_us:.1f} µs CPU/event (now {cost['consumer']:.1f}, of which fetch + ack "
        f"{ceiling['fetch_ack_cpu_us']:.1f}); {cores_needed:.1f} cores at today's costs "
        f"| this machine: {cores} cores | |",
        f"| per-message baseline (fetch 1, insert, commit, ack) | {base:,.0f} events/s "
        f"| consumer = {c1 / base:.1f} × baseline | ≥ 10: {ok(c1 >= 10 * base)} |",
        f"| API PATCH, publish + JetStream ack ({workers} worker(s), 64 conns) "
        f"| {api['rps']:,.0f} req/s, p50 {api['p50_ms']:.1f} ms, p99 {api['p99_ms']:.1f} ms "
        f"| {api['rps'] / noop['rps']:.2f} × no-op "
        f"| ≥ 0.6: {ok(api['rps'] >= 0.6 * noop['rps'])} |",
        f"| API PATCH, no-op publish | {noop['rps']:,.0f} req/s, p50 {noop['p50_ms']:.1f} ms, "
        f"p99 {noop['p99_ms']:.1f} ms | CPU/request: API {api['api_cpu_us']:.0f} µs with "
        f"publish, {noop['api_cpu_us']:.0f} µs without; NATS {api['nats_cpu_us']:.0f} µs/publish "
        f"| |",
        f"| load generator vs GET /healthz (its own ceiling here) "
        f"| {r[f'loadgen_healthz_w{workers}']['rps']:,.0f} "
        f"req/s | | not the bottleneck if ≫ the rows above |",
        f"| end to end at {e2e['rate']:,.0f} req/s (half the API max): ack → row | "
        f"p50 {e2e['p50_ms']:.0f} ms, p99 {e2e['p99_ms']:.0f} ms | | p99 ≤ 250 ms: "
        f"{ok(e2e['p99_ms'] <= 250)} |",
        f"| feed, under that load: row visible → handed out by the feed (commit horizon) "
        f"| p50 {fd['p50_ms']:.0f} ms, p99 {fd['p99_ms']:.0f} ms, max {fd['max_ms']:.0f} ms "
        f"| {fd['events']:,} rows, each handed out | |",
    ]
    one, r3 = r["shape_single"], r["shape_r3"]
    lines += [
        f"| publish → JetStream ack, 16 in flight, fsync always: one node | p50 "
        f"{one['publish_p50_ms']:.1f} ms, p99 {one['publish_p99_ms']:.1f} ms, "
        f"{one['publish_per_s']:,.0f} msgs/s | | |",
        f"| the same on three nodes, stream R3 (loopback, one machine) | p50 "
        f"{r3['publish_p50_ms']:.1f} ms, p99 {r3['publish_p99_ms']:.1f} ms, "
        f"{r3['publish_per_s']:,.0f} msgs/s | {r3['publish_per_s'] / one['publish_per_s']:.2f} × "
        f"one node's rate | |",
        f"| consumer, 1 process, draining: one node vs three nodes (R3) "
        f"| {one['consumer_per_s']:,.0f} vs {r3['consumer_per_s']:,.0f} events/s "
        f"| {r3['consumer_per_s'] / one['consumer_per_s']:.2f} × | |",
    ]
    reads = [r[f"query {name}"] for name in queries.QUESTIONS]
    for name, q in zip(queries.QUESTIONS, reads, strict=True):
        bound = 2 * q["sql_p50_ms"] + 2
        lines.append(
            f"| query: {name} (GET /audit-events, 100 rows) | p50 {q['p50_ms']:.1f} ms, "
            f"p99 {q['p99_ms']:.1f} ms | the same SQL directly: p50 {q['sql_p50_ms']:.1f} ms, "
            f"p99 {q['sql_p99_ms']:.1f} ms | ≤ 2 × + 2 ms: {ok(q['p50_ms'] <= bound)} |"
        )
    export, feed = r["export"], r["feed"]
    lines += [
        f"| export, NDJSON, {export['rows']:,} rows | {export['per_s']:,.0f} rows/s, peak RSS "
        f"{export['peak_rss_mb']:.0f} MB | {export['per_s'] / export['copy_per_s']:.2f} × "
        f"the same COPY run directly ({export['copy_per_s']:,.0f} rows/s; `SELECT *` "
        f"unformatted: {export['raw_copy_per_s']:,.0f}) "
        f"| ≥ 0.5: {ok(export['per_s'] >= 0.5 * export['copy_per_s'])} |",
        f"| feed, from the start, 1,000 per poll | {feed['per_s']:,.0f} rows/s | | |",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.quick)
        bench.pg.start()
        bench.nats.start()
        try:
            await migrate(bench.settings)
            print(f"benchmark: {bench.n:,} events, {os.cpu_count()} CPUs", flush=True)
            await bench.db_ceiling(query_indexes=False)
            await bench.db_ceiling()
            await bench.broker_ceiling()
            await bench.drain(1, integrity=False)
            await bench.drain(1)
            await bench.verify_speed()
            await bench.drain(2)
            await bench.broker_shapes()
            await bench.per_message()
            await bench.api(args.workers)
            await bench.end_to_end(args.workers)
            n, repeat = (20_000, 20) if bench.quick else (1_000_000, 200)
            await queries.run(bench, SECRET, n, repeat, BIN / "audit-query")
        finally:
            bench.nats.stop()
            bench.pg.stop()
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(bench.results, indent=2))
    print("\n" + table(bench.results, args.workers))
    print(f"\n(JSON: {out / 'bench.json'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs (CI smoke)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers for the API")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
