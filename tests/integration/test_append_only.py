"""Least privilege: the consumer's login can INSERT and SELECT but never change history; the
append-only trigger stops even a role that was granted UPDATE/DELETE."""

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit_consumer.database import ensure_logins
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from tests.helpers import make_event, signed_row, write


@pytest.fixture
async def writer_url(db: Any, settings: Settings) -> str:
    url = make_conninfo(settings.database_url, user="audit_consumer", password="pw-1")
    await ensure_logins(Settings(DATABASE_URL=settings.database_url, AUDIT_WRITER_DATABASE_URL=url))
    await ensure_logins(  # twice: idempotent, refreshes the password
        Settings(DATABASE_URL=settings.database_url, AUDIT_WRITER_DATABASE_URL=url)
    )
    return url


async def test_writer_inserts_and_reads_but_cannot_change_or_delete(writer_url: str) -> None:
    assert conninfo_to_dict(writer_url)["user"] == "audit_consumer"
    writer = await BatchWriter.connect(writer_url)
    event = make_event()
    assert (await write(writer, [signed_row(event, 1)])).inserted == 1
    await writer.close()
    async with await psycopg.AsyncConnection.connect(writer_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM audit_events")
        assert await cur.fetchone() == (1,)
        for statement in (
            "UPDATE audit_events SET actor_id = 'mallory'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)


async def test_trigger_blocks_update_and_delete_even_when_granted(db: Any) -> None:
    assert (await write(BatchWriter(db), [signed_row(make_event(), 1)])).inserted == 1
    await db.execute("DROP ROLE IF EXISTS careless")
    await db.execute("CREATE ROLE careless")
    await db.execute("GRANT SELECT, UPDATE, DELETE ON audit_events TO careless")
    try:
        await db.execute("SET ROLE careless")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await db.execute("UPDATE audit_events SET outcome = 'failure'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await db.execute("DELETE FROM audit_events")
    finally:
        await db.execute("RESET ROLE")
        await db.execute("REVOKE ALL ON audit_events FROM careless")
        await db.execute("DROP ROLE careless")
    cur = await db.execute("SELECT count(*), min(outcome) FROM audit_events")
    assert await cur.fetchone() == (1, "success")
