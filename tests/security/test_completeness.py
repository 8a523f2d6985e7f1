"""Acknowledged events that vanish are named: the attacks that removed them unseen in the last
trial, against a real consumer process, real PostgreSQL and NATS. The broker numbered each
event; the consumer's sealer records the durable's ack floor in its seals; ``audit-verify``
names every sequence at or below it that no row, dead-letter or duplicate record accounts for.
"""

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from audit_consumer import metrics
from audit_consumer import sealer as sealer_module
from audit_consumer.database import ensure_logins
from audit_consumer.sealer import Sealer
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_events import AuditEvent
from audit_events.seals import SealKey
from audit_verify.checker import Report, verify
from tests.env import SEAL_KEY, service_env
from tests.helpers import (
    drained,
    make_event,
    metric,
    published,
    signed_row,
    verify_settings,
    wait_for,
    write,
)
from tests.processes import Service, consumer

GAP = re.compile(r"^epoch (\d+), stream seq (\d+)(?:-(\d+))?: acknowledged by the broker")


@pytest.fixture
async def writer(streams: Settings, db: Any, tmp_path: Path) -> AsyncIterator[Service]:
    service = consumer(service_env(streams, AUDIT_SEAL_INTERVAL_SECONDS="0.2"), tmp_path, 1)
    try:
        yield service
    finally:
        service.stop()


async def publish(
    nc: Any, streams: Settings, events: list[AuditEvent], verb: str = "update"
) -> None:
    js = nc.jetstream()
    subject = streams.names.event_subject(f"account.{verb}")
    for event in events:
        await js.publish(
            subject, **published(event.model_copy(update={"action": f"account.{verb}"}))
        )


async def check(url: str) -> Report:
    settings = verify_settings(url)
    return await asyncio.to_thread(verify, settings, grace=timedelta(hours=1))


def missing(report: Report) -> list[int]:
    """Every sequence the findings name as unaccounted for."""
    seqs: list[int] = []
    for line in report.findings:
        if match := GAP.match(line):
            start = int(match[2])
            seqs += range(start, int(match[3] or start) + 1)
    return seqs


async def named(url: str, count: int) -> Report:
    """Verify until ``count`` sequences are named (the floor reaches a seal within a second or
    so; the wait is a bound, not a speed assertion)."""
    reports: list[Report] = []

    async def enough() -> bool:
        reports.append(await check(url))
        return len(missing(reports[-1])) >= count

    await wait_for(enough, timeout=60, interval=0.3)
    return reports[-1]


async def test_events_an_owners_trigger_drops_are_named_and_alerted(
    streams: Settings, db: Any, nc: Any, writer: Service, migrated: str
) -> None:
    """A BEFORE INSERT trigger returning NULL for one actor: the broker acknowledged all, the
    consumer's COPY "succeeded". The consumer counts the shortfall; verify names the events."""
    await db.execute(
        "CREATE FUNCTION drop_victim() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF NEW.actor_id = 'victim' THEN RETURN NULL; END IF; RETURN NEW; END $$"
    )
    await db.execute(
        "CREATE TRIGGER drop_victim BEFORE INSERT ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION drop_victim()"
    )
    try:
        writer.start()
        writer.wait_ready()
        events = [make_event(actor_id="victim" if i % 4 == 1 else "alice") for i in range(20)]
        await publish(nc, streams, events)
        await wait_for(lambda: drained(streams))
        report = await named(migrated, 5)
        assert len(missing(report)) == 5, report.findings
        stored = await (await db.execute("SELECT count(*) FROM audit_events")).fetchone()
        assert stored == (15,)
        scraped = writer.get("/metrics")[1].decode()
        assert metric(scraped, "audit_consumer_rows_missing_total") == 5
    finally:
        await db.execute("DROP TRIGGER drop_victim ON audit_events")
        await db.execute("DROP FUNCTION drop_victim()")


@pytest.mark.parametrize("filtered", [False, True], ids=["whole", "filtered"])
async def test_a_purge_of_unstored_events_is_named(
    streams: Settings, db: Any, nc: Any, writer: Service, migrated: str, filtered: bool
) -> None:
    """With the consumers away, a purge (the consumer identity may purge, to trim) removes
    acknowledged events before they were stored. Whole or by subject: named."""
    writer.start()
    writer.wait_ready()
    await publish(nc, streams, [make_event() for _ in range(5)])
    await wait_for(lambda: drained(streams))
    writer.stop()
    await publish(nc, streams, [make_event() for _ in range(10)])
    await publish(nc, streams, [make_event() for _ in range(10)], verb="delete")
    js = nc.jetstream()
    if filtered:
        await js.purge_stream(
            streams.names.stream, subject=streams.names.event_subject("account.delete")
        )
    else:
        await js.purge_stream(streams.names.stream)
    writer.start()
    writer.wait_ready()
    await publish(nc, streams, [make_event() for _ in range(5)])  # life goes on
    await wait_for(lambda: drained(streams))
    lost = 10 if filtered else 20
    report = await named(migrated, lost)
    assert len(missing(report)) == lost, report.findings
    assert missing(report) == sorted(missing(report))


async def test_a_fresh_row_deleted_while_sealing_is_held_back_is_named(
    streams: Settings, db: Any, nc: Any, writer: Service, migrated: str
) -> None:
    """An open transaction holds the horizon (nothing new is sealed); the owner deletes a row
    that no seal lists yet. Its sequence, acknowledged and below the floor, is named."""
    writer.start()
    writer.wait_ready()
    holder = await psycopg.AsyncConnection.connect(migrated)
    await holder.execute("SELECT pg_current_xact_id()")  # an open transaction with an xid
    try:
        events = [make_event(resource_id=f"held-{i}") for i in range(10)]
        await publish(nc, streams, events)
        await wait_for(lambda: drained(streams))

        async def floor_sealed() -> bool:
            row = await (await db.execute("SELECT max(floor_seq) FROM audit_seals")).fetchone()
            return bool(row and row[0] and row[0] >= 10)

        await wait_for(floor_sealed)
        await db.execute("DELETE FROM audit_events WHERE resource_id = 'held-3'")
    finally:
        await holder.rollback()
        await holder.close()
    report = await named(migrated, 1)
    assert len(missing(report)) == 1, report.findings
    assert not any("deleted" in line for line in report.findings)  # it was never sealed


async def test_the_session_holding_the_horizon_is_named_and_logins_have_timeouts(
    db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any login, even a reader in another database, can hold sealing and the feed back with
    an idle transaction. The project's own logins get timeouts; whoever holds it is named."""
    writer_url = make_conninfo(settings.database_url, user="audit_consumer", password="pw-1")
    query_url = make_conninfo(settings.database_url, user="audit_query", password="pw-3")
    await ensure_logins(
        Settings(
            DATABASE_URL=settings.database_url,
            AUDIT_WRITER_DATABASE_URL=writer_url,
            AUDIT_QUERY_DATABASE_URL=query_url,
        )
    )
    async with await psycopg.AsyncConnection.connect(query_url) as reader:
        shown = await (await reader.execute("SHOW idle_in_transaction_session_timeout")).fetchone()
        assert shown == ("1min",)  # the login's default, set by audit-setup
        await reader.execute("SET application_name = 'stuck-report'")
        await reader.execute("SELECT pg_current_xact_id()")  # and now it idles
        await write(BatchWriter(db), [signed_row(make_event(), 1)])
        monkeypatch.setattr(sealer_module, "HOLDER_AFTER_SECONDS", 0.0)
        sealer = Sealer(writer_url, SealKey(SEAL_KEY), 1.0)
        await sealer.seal()
        await sealer.close()
        samples = [s for f in metrics.HORIZON_HOLDER.collect() for s in f.samples]
        assert [s.labels["application"] for s in samples] == ["stuck-report"]
        assert samples[0].labels["user"] == "audit_query"
        await reader.rollback()
