"""Upgrading a populated installation to partitions (migration 0006) against real PostgreSQL: a
table of the previous version with rows and seals becomes the first partition without a row
rewritten; its seals still verify; consumers write before and after; and retention can later
remove it — its rows sealed before partitions, by seals that also list other rows."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit_consumer import sealer as sealer_module
from audit_consumer.database import migrate
from audit_consumer.sealer import Sealer
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_events import AuditEvent, encode
from audit_events.model import row
from audit_events.seals import Floor, SealKey, SealKeys
from audit_retention.removal import Policy, run
from audit_verify.archived import check_archives
from audit_verify.checker import verify
from tests.env import ROOT, SEAL_KEY, SEAL_PUBLIC_KEY
from tests.helpers import make_event, sign, verify_settings

TOP: list[int] = []  # the batches written so far


RECORDS: list[AuditEvent] = []  # what a run published (the CLI's Recorder publishes them)


@pytest.fixture
async def old_install(migrated: str) -> AsyncIterator[str]:
    """A database of its own at revision 0005 (the previous version)."""
    name = "audit_upgrade"
    async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(migrated, dbname=name)
    await migrate(Settings(DATABASE_URL=url, AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations")), "0005")
    yield url
    async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def write_and_seal(url: str, first: int, at: datetime, sealer: Sealer) -> None:
    rows = []
    for seq in range(first, first + 10):
        event = make_event(resource_id=f"acc-{seq}", occurred_at=at + timedelta(seconds=seq))
        data = encode(event)
        rows.append(row(event, seq, sign(data), hashlib.sha256(data).digest(), epoch=1))
    writer = await BatchWriter.connect(url)
    assert (await writer.write(rows)).inserted == 10
    await writer.close()
    TOP.append(first)  # the ack floor moves past them
    assert await sealer.seal() is not None


async def test_a_populated_table_becomes_partitioned_and_still_verifies(
    old_install: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert conninfo_to_dict(old_install)["dbname"] == "audit_upgrade"
    now = datetime.now(UTC)
    sealer = Sealer(old_install, SealKey(SEAL_KEY), 1.0, floor=lambda: Floor(1, 1, len(TOP) * 10))
    TOP.clear()
    with monkeypatch.context() as previous:  # the previous version's sealer: no cuts yet
        previous.setattr(sealer_module, "pending_cuts", _no_cuts)
        await write_and_seal(old_install, 1, now - timedelta(days=3), sealer)  # 3 days ago
        await write_and_seal(old_install, 11, now, sealer)  # and today
    settings = verify_settings(old_install)
    before = await asyncio.to_thread(verify, settings, grace=timedelta(minutes=5))
    assert before.findings == []

    await migrate(Settings(DATABASE_URL=old_install, AUDIT_MIGRATIONS_DIR=str(ROOT / "migrations")))
    async with await psycopg.AsyncConnection.connect(old_install) as conn:
        parts = await (await conn.execute(
            "SELECT name, lo, hi FROM audit_partitions ORDER BY lo")).fetchall()  # fmt: skip
        legacy = await (await conn.execute(
            "SELECT count(*), count(DISTINCT tableoid) FROM audit_events")).fetchone()  # fmt: skip
    assert legacy == (20, 1)  # every row still there, in one partition: the old table
    assert parts[0][1] <= now - timedelta(days=3) < parts[0][2]
    assert parts[-1][2] >= now + timedelta(days=6)  # and partitions ahead
    after = await asyncio.to_thread(verify, settings, grace=timedelta(minutes=5))
    assert after.findings == []  # the seals made before still verify
    assert after.rows == 20

    await write_and_seal(old_install, 21, now + timedelta(days=4), sealer)  # a consumer after
    assert (await asyncio.to_thread(verify, settings, grace=timedelta(minutes=5))).findings == []

    # Retention can remove the old table's partition (a policy of "-2 days" reaches it today).
    keys = SealKeys([SEAL_PUBLIC_KEY])
    sealing = asyncio.create_task(_keep_sealing(sealer))
    try:
        removed = await asyncio.to_thread(
            _retain, old_install, Policy(-2, tmp_path, keys, RECORDS.extend)
        )
    finally:
        sealing.cancel()
    assert parts[0][0] in removed
    report = await asyncio.to_thread(verify, settings, grace=timedelta(minutes=5))
    assert report.findings == []
    assert report.rows == 10  # the four-days-ahead rows stay
    archived = check_archives(tmp_path, keys)
    assert archived.findings == []
    assert archived.rows == 20
    await sealer.close()


async def _no_cuts(*_: Any) -> list[Any]:
    return []


def _retain(url: str, policy: Policy) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return run(conn, policy)


async def _keep_sealing(sealer: Sealer) -> Any:
    while True:
        await sealer.seal()
        await asyncio.sleep(0.1)
