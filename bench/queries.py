"""``make bench``'s read side (issue 15): the query service against the same SQL run directly,
its export against ``COPY … TO STDOUT``, and the feed's rows/s — on ``n`` rows loaded here
(1,000,000 in a full run), with the real ``audit-query`` process and its read-only login.
"""

import hashlib
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from audit_consumer.database import ensure_logins
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_devservers import free_port
from audit_events import AuditEvent, Outcome, encode, row
from audit_events.auth import issue_token
from audit_query.exporting import export_statement
from audit_query.store import Filters, page_query
from bench.common import EMPTY_LOG
from bench.rig import Bench
from bench.stats import percentiles

SPACING = timedelta(seconds=3)  # 1,000,000 events span 35 days: that many daily partitions


def start(n: int) -> datetime:
    """Where the ``n`` events begin: ending today, so their days have partitions after
    ``audit_partitions_prepend`` (as an import of history would)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - SPACING * n - timedelta(days=1)


QUESTIONS = {
    "resource history": Filters(resource_type="account", resource_id="acc-42"),
    "actor's actions": Filters(actor_type="user", actor_id="user-7"),
    "denied from an address": Filters(outcome="denied", source_ip="10.3.4.5"),
}
PARAMS = {
    "resource history": {"resource_type": "account", "resource_id": "acc-42"},
    "actor's actions": {"actor_type": "user", "actor_id": "user-7"},
    "denied from an address": {"outcome": "denied", "source_ip": "10.3.4.5"},
}


def events(n: int) -> list[AuditEvent]:
    rng = random.Random(11)
    t0 = start(n)
    out = []
    for i in range(n):
        outcome: Outcome = rng.choices(("success", "failure", "denied"), (90, 5, 5))[0]
        out.append(
            AuditEvent.model_construct(
                id=UUID(f"00000000-0000-7000-8000-{i:012x}"),
                occurred_at=t0 + SPACING * i,
                actor_type="user",
                actor_id=f"user-{rng.randrange(2000)}",
                action=rng.choice(("account.read", "account.update", "account.delete")),
                resource_type="account",
                resource_id=f"acc-{rng.randrange(20000)}",
                outcome=outcome,
                source_ip=f"10.{rng.randrange(8)}.{rng.randrange(16)}.{rng.randrange(16)}",
                user_agent="bench/1",
                request_id=f"req-{i}",
                trace_id=None,
                metadata={"method": "PATCH", "status": 200},
                schema_version=2,
            )
        )
    return out


async def load(url: str, n: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(EMPTY_LOG)
        step = timedelta(days=int(os.environ.get("AUDIT_PARTITION_DAYS", "1")))  # as configured
        await conn.execute("SELECT audit_partitions_prepend(%s, %s)", (start(n), step))
        writer = BatchWriter(conn)
        batch = events(n)
        for first in range(0, n, 20_000):
            part = batch[first : first + 20_000]
            rows = [
                row(e, first + i, "bench:x", hashlib.sha256(encode(e)).digest())
                for i, e in enumerate(part)
            ]
            await writer.write(rows)
        await conn.execute("ANALYZE audit_events")


async def run(bench: Bench, secret: str, n: int, repeat: int, query_bin: Path) -> None:
    await load(bench.pg.url, n)
    reader = make_conninfo(bench.pg.url, user="audit_query", password=secrets.token_urlsafe(16))
    await ensure_logins(Settings(DATABASE_URL=bench.pg.url, AUDIT_READER_DATABASE_URL=reader))
    port = free_port()
    env = bench.env(
        AUDIT_READER_DATABASE_URL=reader, AUDIT_QUERY_PORT=str(port), AUDIT_QUERY_HOST="127.0.0.1"
    )
    headers = {"Authorization": f"Bearer {issue_token(secret, 'bench', scope='audit:read')}"}
    with bench.processes([[str(query_bin)]], [env]) as pids:
        bench.wait_http(port)
        base = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http,
            await psycopg.AsyncConnection.connect(reader) as conn,
        ):
            for name, filters in QUESTIONS.items():
                query, params = page_query(filters, 101)
                direct, served = [], []
                for _ in range(repeat):  # alternating: drift hits both alike
                    started = time.perf_counter()
                    await (await conn.execute(query, params)).fetchall()
                    await conn.rollback()
                    direct.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    response = await http.get("/audit-events", params=PARAMS[name])
                    served.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                (d50, d99), (s50, s99) = (
                    percentiles(direct, 0.5, 0.99),
                    percentiles(served, 0.5, 0.99),
                )
                bench.record(
                    f"query {name}", p50_ms=s50, p99_ms=s99, sql_p50_ms=d50, sql_p99_ms=d99
                )
            process = psutil.Process(pids[0])
            peak = process.memory_info().rss
            started = time.perf_counter()
            rows = 0
            async with http.stream("GET", "/audit-events/export") as response:
                async for block in response.aiter_raw():  # counted like COPY's blocks below
                    rows += block.count(b"\n")
                    peak = max(peak, process.memory_info().rss)
            export_s = time.perf_counter() - started
            peak = max(peak, process.memory_info().rss)
            started = time.perf_counter()
            copied = 0
            statement = export_statement(Filters(), "ndjson", 0)  # what the service runs
            async with conn.cursor() as cur, cur.copy(statement) as stream:
                async for data in stream:
                    copied += bytes(data).count(b"\n")
            copy_s = time.perf_counter() - started
            await conn.rollback()
            started = time.perf_counter()
            plain = "COPY (SELECT * FROM audit_events ORDER BY occurred_at DESC, id DESC) TO STDOUT"
            async with conn.cursor() as cur, cur.copy(plain) as stream:
                async for _ in stream:
                    pass
            raw_s = time.perf_counter() - started
            await conn.rollback()
            bench.record(
                "export",
                rows=rows,
                per_s=rows / export_s,
                copy_per_s=copied / copy_s,
                raw_copy_per_s=n / raw_s,
                peak_rss_mb=peak / 1e6,
            )
            started = time.perf_counter()
            fed, after = 0, None
            while True:
                poll: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
                body = (await http.get("/audit-events/feed", params=poll)).json()
                fed += len(body["items"])
                after = body["next_cursor"]
                if not body["items"]:
                    break
            bench.record("feed", rows=fed, per_s=fed / (time.perf_counter() - started))
            assert fed == n, (fed, n)
