"""The repository layer against real PostgreSQL: set-based insert, duplicates absorbed, a row
PostgreSQL rejects isolated while its neighbours are stored."""

from typing import Any

import psycopg
import pytest

from audit_consumer.writer import BatchWriter
from audit_events import COLUMNS, AuditEvent, row
from tests.helpers import count_rows, make_event, signed_row, unchecked_event, write


@pytest.fixture
async def writer(db: psycopg.AsyncConnection[Any], migrated: str):
    w = await BatchWriter.connect(migrated)
    yield w
    await w.close()


async def test_batch_insert_stores_every_column(writer: BatchWriter, db: Any) -> None:
    """(The digest goes through COPY's text format as bytea: escaped, unchanged.)"""
    events = [make_event(resource_id=f"acc-{i}", trace_id="ab" * 16) for i in range(50)]
    result = await write(writer, [signed_row(e, 100 + i) for i, e in enumerate(events)])
    assert (result.inserted, result.duplicates, result.rejected) == (50, 0, [])
    cur = await db.execute(
        "SELECT id, actor_id, action, resource_id, outcome, host(source_ip), user_agent,"
        " trace_id, stream_seq, metadata, occurred_at, recorded_at >= occurred_at"
        " FROM audit_events WHERE resource_id = 'acc-7'"
    )
    stored = await cur.fetchone()
    e = events[7]
    assert stored == (
        e.id,
        "alice",
        "account.update",
        "acc-7",
        "success",
        "10.0.0.7",
        "curl/8",
        "ab" * 16,
        107,
        {"method": "PATCH", "fields": ["email"]},
        e.occurred_at,
        True,
    )


async def test_duplicates_are_ignored(writer: BatchWriter, db: Any) -> None:
    rows = [signed_row(make_event(), i) for i in range(10)]
    assert (await write(writer, rows)).inserted == 10
    again = await write(writer, [*rows[:5], signed_row(make_event(), 99)])
    assert (again.inserted, again.duplicates) == (1, 5)
    assert await count_rows(db) == 11


async def test_rejected_rows_are_isolated(writer: BatchWriter, db: Any) -> None:
    rows = [signed_row(make_event(), i) for i in range(20)]
    rows[3] = signed_row(unchecked_event(actor_id="nul\x00byte"), 3)  # text can't hold NUL
    rows[17] = signed_row(unchecked_event(metadata={"k": "\u0000"}), 17)  # nor can jsonb
    result = await write(writer, rows)
    assert result.inserted == 18
    assert [i for i, _ in result.rejected] == [3, 17]
    assert "NUL" in result.rejected[0][1]
    assert result.rejected[1][1].startswith("22P05")  # SQLSTATE class 22: data exception
    assert await count_rows(db) == 18


async def test_connection_errors_propagate_instead_of_rejecting(migrated: str) -> None:
    writer = await BatchWriter.connect(migrated)
    await writer.conn.close()
    with pytest.raises(psycopg.OperationalError):
        await write(writer, [signed_row(make_event(), 1)])


async def test_duplicates_and_rejected_rows_in_one_batch(writer: BatchWriter, db: Any) -> None:
    """The fast COPY fails on the stored row; the ON CONFLICT path then isolates the bad ones."""
    stored = signed_row(make_event(), 1)
    assert (await write(writer, [stored])).inserted == 1
    batch = [
        signed_row(make_event(user_agent="tab\there, new\nline, back\\slash"), 2),  # escaped, kept
        stored,
        signed_row(unchecked_event(metadata={"k": "\u0000"}), 3),  # refused by PostgreSQL
        signed_row(make_event(), 4),
        signed_row(unchecked_event(request_id="\x00"), 5),  # refused before sending
    ]
    result = await write(writer, batch)
    assert (result.inserted, result.duplicates) == (2, 1)
    assert [i for i, _ in result.rejected] == [2, 4]
    assert await count_rows(db) == 3
    cur = await db.execute("SELECT user_agent FROM audit_events WHERE stream_seq = 2")
    assert await cur.fetchone() == ("tab\there, new\nline, back\\slash",)


async def test_the_row_definition_is_the_tables(db: Any) -> None:
    """COLUMNS (the COPY list and signed_row()'s order) names every column but the database's own
    recorded_at and tx_id, and signed_row() puts each event field under its own name."""
    cur = await db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_events'"
    )
    table = {r[0] for r in await cur.fetchall()}
    assert set(COLUMNS) == table - {"recorded_at", "tx_id"}
    assert len(COLUMNS) == len(set(COLUMNS))
    event = make_event(trace_id="ab" * 16, request_id="r-1")
    values = dict(zip(COLUMNS, row(event, 42, "k:sig", b"d" * 32, 7), strict=True))
    assert values.pop("epoch") == 7
    assert values.pop("stream_seq") == 42
    assert values.pop("signature") == "k:sig"
    assert values.pop("digest") == b"d" * 32
    assert values == {name: getattr(event, name) for name in values}
    assert set(values) <= set(AuditEvent.model_fields)
