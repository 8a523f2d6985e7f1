"""The benchmark's rig: its PostgreSQL and NATS, settings, processes, and the results it
records. The measurements are in ``ingest.py``, ``api.py`` and ``queries.py``."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.aio.client import Client as NATS

from audit_consumer.jetstream import provision
from audit_consumer.settings import ProvisionSettings, Settings
from audit_devservers import Child, NatsServer, PostgresServer
from audit_devservers.clusters import NatsCluster
from audit_events import AuditEvent
from audit_events.auth import issue_token
from audit_events.authorship import signed
from audit_events.broker import IDENTITIES
from bench.common import (
    EMPTY_LOG,
    EVENT_KEY,
    KEYS,
    NAMES,
    PASSWORD,
    ROOT,
    SEAL_KEY,
    SECRET,
    SUBJECT,
    event,
)


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
            await conn.execute(EMPTY_LOG)
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

    def loadgen(self, port: int, **opts: Any) -> dict[str, Any]:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
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
        url = f"http://127.0.0.1:{port}{path}"
        for _ in range(200):
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"nothing answers on {port}{path}")
