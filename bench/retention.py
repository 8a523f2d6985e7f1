"""What partitions and retention cost, and what a row costs on disk (README, "Capacity"):

- COPY into the partitioned table vs the same rows into an unpartitioned copy of it with the
  same indexes (alternating, twice each);
- dropping (detach + drop) a partition of ``n`` rows vs one of ``n / 100``: a drop, not a
  delete, so about the same time;
- writing a partition's archive vs ``COPY … TO STDOUT`` of the same rows;
- bytes per row: the table, each index, and the seal entry;
- one consumer draining the backlog while a retention run archives and drops a partition of
  ``n`` rows, against the same drain without it (``ingest.drain``).
"""

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_consumer.sealer import Sealer
from audit_events import COLUMNS, encode, row
from audit_events.seals import ENTRY_BYTES, SealKey, SealKeys
from audit_retention import removal
from audit_retention.archiving import write_archive
from bench import ingest
from bench.common import KEYS, METADATA, SEAL_KEY, event
from bench.rig import Bench

_COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))


def _rows(n: int, at: datetime) -> list[list[Any]]:
    out = []
    for i in range(n):
        e = event(i).model_copy(update={"occurred_at": at + timedelta(microseconds=i)})
        data = encode(e)
        values = list(row(e, i, KEYS.sign(data), hashlib.sha256(data).digest()))
        values[METADATA] = json.dumps(values[METADATA])
        out.append(values)
    return out


async def _copy(conn: psycopg.AsyncConnection[Any], table: str, rows: list[list[Any]]) -> float:
    started = time.perf_counter()
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), _COLS)
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        for values in rows:
            await copy.write_row(values)
    await conn.commit()
    return time.perf_counter() - started


async def run(bench: Bench, archive: Path) -> None:
    n = bench.n
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = _rows(n, today + timedelta(hours=1))
    async with await psycopg.AsyncConnection.connect(bench.pg.url) as conn:
        await conn.execute("TRUNCATE audit_events")
        await conn.execute("DROP TABLE IF EXISTS audit_events_flat")
        await conn.execute("CREATE TABLE audit_events_flat (LIKE audit_events INCLUDING ALL)")
        await conn.commit()
        partitioned, flat = [], []
        for _ in range(2):  # alternating: a shared machine drifts
            partitioned.append(n / await _copy(conn, "audit_events", rows))
            flat.append(n / await _copy(conn, "audit_events_flat", rows))
            await conn.execute("TRUNCATE audit_events, audit_events_flat")
            await conn.commit()
        bench.record(
            "partitioned_copy",
            rows=n,
            per_s=max(partitioned),
            flat_per_s=max(flat),
            ratio=max(partitioned) / max(flat),
        )
        await _copy(conn, "audit_events", rows)
        await conn.execute("ANALYZE audit_events")
        await conn.commit()
        bench.record("bytes_per_row", **await _sizes(conn, n))

        # Two old partitions, n and n / 100 rows; then drop each; archive the big one.
        old = today - timedelta(days=40)  # beyond a 30-day policy, few partitions to make
        await conn.execute("SELECT audit_partitions_prepend(%s, interval '1 day')", (old,))
        await conn.commit()
        big, small = old, old + timedelta(days=1)
        await _copy(conn, "audit_events", _rows(n, big))
        await _copy(conn, "audit_events", _rows(max(n // 100, 1), small))
        await conn.execute("ANALYZE audit_events")
        await conn.commit()
    async with await psycopg.AsyncConnection.connect(bench.pg.url, autocommit=True) as conn:
        name = f"audit_events_p{big:%Y%m%d}"
        started = time.perf_counter()
        async with conn.cursor() as cur:
            copy = f"COPY (SELECT * FROM {name} ORDER BY tx_id, id) TO STDOUT"
            async with cur.copy(copy) as stream:
                async for _ in stream:
                    pass
        copy_s = time.perf_counter() - started
    with psycopg.connect(bench.pg.url, autocommit=True) as sync:
        started = time.perf_counter()
        write_archive(sync, archive, name, big, big + timedelta(days=1))
        archive_s = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (archive / name).iterdir())
        bench.record(
            "archive",
            rows=n,
            per_s=n / archive_s,
            copy_to_per_s=n / copy_s,
            ratio=round(copy_s / archive_s, 3),
            bytes_per_row=size / n,
        )
        drops = {}
        for day, count in ((big, n), (small, max(n // 100, 1))):
            part = f"audit_events_p{day:%Y%m%d}"
            started = time.perf_counter()
            sync.execute(f"ALTER TABLE audit_events DETACH PARTITION {part} CONCURRENTLY")
            sync.execute(f"DROP TABLE {part}")
            drops[count] = time.perf_counter() - started
        big_s, small_s = drops[n], drops[max(n // 100, 1)]
        bench.record("drop_partition", big_rows=n, big_ms=big_s * 1000, small_ms=small_s * 1000,
                     ratio=big_s / small_s)  # fmt: skip


_SIZES = (
    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_inherits i JOIN pg_class c"
    " ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
)


async def _sizes(conn: psycopg.AsyncConnection[Any], n: int) -> dict[str, float]:
    """Bytes per row of the table (heap + TOAST) and of each index, summed over partitions."""
    out: dict[str, float] = {}
    table = await (await conn.execute(
        "SELECT sum(pg_table_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass")).fetchone()  # fmt: skip
    out["table"] = float(table[0] or 0) / n if table else 0.0
    indexes = await (await conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'audit_events'::regclass"
    )).fetchall()  # fmt: skip
    for (index,) in indexes:
        parts = await (await conn.execute(_SIZES, (index,))).fetchall()
        out[index.removeprefix("audit_events_")] = sum(size for _, size in parts) / n
    out["seal_entry"] = float(ENTRY_BYTES)
    out["total"] = sum(out.values())
    return out


async def drain_while_removing(bench: Bench, archive: Path) -> None:
    """The consumer's throughput while a run archives and removes an old partition of ``n``
    rows (sealed before; the consumer's sealer signs the cut) vs the same drain alone."""
    # (40 days back: past a 30-day policy with few partitions, so the one with rows is what
    # is measured, not the archiving of hundreds of empty ones)
    old = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=40)

    async def old_partition() -> None:  # n old rows, sealed before the drain starts
        async with await psycopg.AsyncConnection.connect(bench.pg.url) as conn:
            await conn.execute("SELECT audit_partitions_prepend(%s, interval '1 day')", (old,))
            await conn.commit()
            await _copy(conn, "audit_events", _rows(bench.n, old))
        sealer = Sealer(bench.pg.url, SealKey(SEAL_KEY), 1.0)
        await sealer.seal()
        await sealer.close()

    async def remove() -> None:
        keys = SealKeys([SealKey(SEAL_KEY).public_text()])
        policy = removal.Policy(30, archive, keys, lambda _: None, wait_seconds=600)
        with psycopg.connect(bench.pg.url, autocommit=True) as conn:
            removed = await asyncio.to_thread(removal.run, conn, policy)
        assert removed, "nothing was removed"

    await ingest.drain(bench, 1, name="consumer_1p_alone")
    await ingest.drain(bench, 1, name="consumer_1p_during_retention", before=old_partition,
                       during=remove)  # fmt: skip
    alone = bench.results["consumer_1p_alone"]["per_s"]
    during = bench.results["consumer_1p_during_retention"]["per_s"]
    bench.record("retention_drain", per_s=during, alone_per_s=alone, ratio=during / alone)
