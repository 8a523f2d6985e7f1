"""Time partitions against real PostgreSQL and NATS: a redelivery across a partition boundary
is stored once; events outside the partitions are dead-lettered with the reason while their
batch neighbours are stored; a missing current partition is an outage (retried), never a dead
letter; partitions are kept ahead by the consumers, the writer login may do nothing else."""

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from audit_consumer import metrics
from audit_consumer.bounds import Bounds
from audit_consumer.database import ensure_logins
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_events import encode
from audit_events.model import row
from tests.env import PAST, service_env
from tests.helpers import assert_intact, make_event, published, sign, wait_for
from tests.processes import consumer


async def boundary(db: Any) -> datetime:
    """Where one of the tests' partitions ends and the next begins."""
    found = await (await db.execute(
        "SELECT hi FROM audit_partitions WHERE lo <= '2026-11-20' AND hi > '2026-11-20'"
    )).fetchone()  # fmt: skip
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


def rows_at(*moments: datetime) -> list[tuple[Any, ...]]:
    out = []
    for seq, at in enumerate(moments, start=1):
        event = make_event(resource_id=f"acc-{seq}", occurred_at=at)
        data = encode(event)
        out.append(row(event, seq, sign(data), hashlib.sha256(data).digest(), epoch=1))
    return out


async def test_a_batch_redelivered_across_a_partition_boundary_is_stored_once(
    db: Any, migrated: str
) -> None:
    edge = await boundary(db)
    batch = rows_at(edge - timedelta(microseconds=1), edge, edge + timedelta(hours=1))
    writer = await BatchWriter.connect(migrated)
    first = await writer.write(batch)
    again = await writer.write(batch)  # a redelivery: the same events, same occurred_at
    await writer.close()
    assert (first.inserted, again.inserted, again.duplicates) == (3, 0, 3)
    spread = await (await db.execute(
        "SELECT count(DISTINCT tableoid), count(*) FROM audit_events")).fetchone()  # fmt: skip
    assert spread == (2, 3)  # two partitions, each row once
    dupes = await (await db.execute("SELECT count(*) FROM audit_duplicates")).fetchone()
    assert dupes == (3,)


async def test_a_missing_partition_is_an_outage_not_a_rejection(db: Any, migrated: str) -> None:
    edge = await boundary(db)
    found = await (await db.execute(
        "SELECT name, lo, hi FROM audit_partitions WHERE lo = %s", (edge,))).fetchone()  # fmt: skip
    assert found is not None
    name, *bounds = found
    await db.execute(f"ALTER TABLE audit_events DETACH PARTITION {name}")
    writer = await BatchWriter.connect(migrated)
    try:
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
            await writer.write(rows_at(edge))  # raised to be retried, not a rejected row
    finally:
        await writer.close()
        lo, hi = (b.isoformat() for b in bounds)
        await db.execute(
            f"ALTER TABLE audit_events ATTACH PARTITION {name} FOR VALUES FROM ('{lo}') TO ('{hi}')"
        )


async def test_events_outside_the_partitions_are_dead_lettered_with_why(
    streams: Settings, db: Any, nc: Any, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events = [
        make_event(resource_id="fine-1", occurred_at=now),
        make_event(resource_id="too-old", occurred_at=datetime(2020, 1, 1, tzinfo=UTC)),
        make_event(resource_id="fine-2", occurred_at=now - timedelta(days=2)),
        make_event(resource_id="too-new", occurred_at=now + timedelta(days=2)),
        make_event(resource_id="fine-3", occurred_at=datetime.fromisoformat(PAST + "T00:00Z")),
    ]
    js = nc.jetstream()
    for event in events:
        await js.publish(streams.names.event_subject(event.action), **published(event))
    service = consumer(service_env(streams, AUDIT_SEAL_INTERVAL_SECONDS="0.2"), tmp_path, 1)
    service.start()
    try:

        async def settled() -> bool:
            n = await (await db.execute("SELECT count(*) FROM audit_dead_letters")).fetchone()
            return bool(n == (2,))

        await wait_for(settled)
        stored = await (await db.execute(
            "SELECT resource_id FROM audit_events ORDER BY resource_id")).fetchall()  # fmt: skip
        assert [r[0] for r in stored] == ["fine-1", "fine-2", "fine-3"]
        reasons = [r[0] for r in await (await db.execute(
            "SELECT reason FROM audit_dead_letters ORDER BY stream_seq")).fetchall()]  # fmt: skip
        assert "older than the oldest retained partition" in reasons[0]
        assert "ahead of the consumer's clock" in reasons[1]

        async def accounted() -> bool:  # once the ack floor reached a seal
            return (await assert_intact(streams.database_url)).accounted == 5

        await wait_for(accounted)
    finally:
        service.stop()


async def test_the_writer_may_extend_partitions_and_nothing_else(
    db: Any, migrated: str, settings: Settings
) -> None:
    url = make_conninfo(migrated, user="partition_writer", password="pw-partition-writer")
    await ensure_logins(settings.model_copy(update={"writer_database_url": url}))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        bounds = Bounds(ahead=timedelta(days=9))
        await bounds.extend(conn)
        assert bounds.newest is not None
        assert bounds.newest >= datetime.now(UTC) + timedelta(days=8)
        # What retention should remove first, for AuditRetentionBehind: the oldest partition,
        # unless a legal hold keeps it (then the next one).
        parts = [lo for (lo,) in await (await db.execute(
            "SELECT lo FROM audit_partitions ORDER BY lo LIMIT 2")).fetchall()]  # fmt: skip
        assert metrics.PARTITION_UNHELD._value.get() == parts[0].timestamp()
        await db.execute(
            "INSERT INTO audit_holds (lo, hi, reason) VALUES (%s, %s, 'case 1')",
            (parts[0], parts[0] + timedelta(hours=1)),
        )
        await bounds.extend(conn)
        assert metrics.PARTITION_UNHELD._value.get() == parts[1].timestamp()
        attempts: tuple[LiteralString, ...] = (
            "SELECT audit_partition_create(now() - interval '9 days', now() - interval '8 days')",
            "SELECT audit_partitions_prepend(now() - interval '900 days', interval '1 day')",
            "SELECT audit_partitions_extend(interval '5000 days', interval '1 day')",
            "CREATE TABLE audit_events_x PARTITION OF audit_events"
            " FOR VALUES FROM ('2001-01-01') TO ('2001-01-02')",
        )
        for attempt in attempts:
            with pytest.raises(psycopg.Error):
                await conn.execute(attempt)
