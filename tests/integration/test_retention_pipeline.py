"""Retention end to end with the pipeline running (real consumer process, NATS, PostgreSQL,
the `audit-retention` command): events keep being published and stored while a run archives,
cuts and drops a partition; the removal and a legal hold are recorded as audit events under
retention's own identity and key; everything acknowledged is accounted for afterwards, and the
archive checks offline."""

import asyncio
import os
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from audit_consumer.settings import Settings
from audit_events.authorship import REMOVALS, bound
from audit_events.broker import RETENTION
from audit_retention.removal import LOCK
from audit_verify.checker import verify
from tests.env import BIN, EVENT_KEY, SEAL_PUBLIC_KEY, identity_env, service_env
from tests.helpers import make_event, published, verify_settings, wait_for
from tests.processes import consumer

RETENTION_KEY = secrets.token_urlsafe(32)
CHECKS = f"{EVENT_KEY},{bound(RETENTION_KEY, REMOVALS)}"  # what consumers and verify hold
OLD = datetime(2026, 10, 5, 12, tzinfo=UTC)


def retention(streams: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(
        DATABASE_URL=streams.database_url,
        AUDIT_SEAL_PUBLIC_KEYS=SEAL_PUBLIC_KEY,
        NATS_URL=service_env(streams)["NATS_URL"],
        AUDIT_EVENT_KEYS=RETENTION_KEY,
        **identity_env(RETENTION),
    )
    return subprocess.run(
        [str(BIN / "audit-retention"), *args], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


async def count(db: Any, where: str = "TRUE") -> int:
    query = f"SELECT count(*) FROM audit_events WHERE {where}"  # noqa: S608 (the tests' own)
    row = await (await db.execute(query)).fetchone()
    return int(row[0]) if row else 0


async def test_a_run_with_consumers_writing_records_itself_and_loses_nothing(
    streams: Settings, db: Any, nc: Any, tmp_path: Path
) -> None:
    js = nc.jetstream()

    async def publish(*events: Any) -> None:
        for event in events:
            await js.publish(streams.names.event_subject(event.action), **published(event))

    service = consumer(
        service_env(streams, AUDIT_SEAL_INTERVAL_SECONDS="0.2", AUDIT_EVENT_KEYS=CHECKS),
        tmp_path, 1,
    ).start()  # fmt: skip
    try:
        await publish(*[make_event(occurred_at=OLD + timedelta(minutes=i)) for i in range(20)])
        await wait_for(lambda: _at_least(db, 20))
        held = retention(streams, "hold", "add", "--from", "2026-09-01", "--to", "2026-09-02",
                         "--reason", "case 7", "--actor", "counsel")  # fmt: skip
        assert held.returncode == 0, held.stderr

        async def keep_writing() -> int:  # the API's traffic goes on during the run
            sent = 0
            while not stop.is_set():
                await publish(make_event(occurred_at=datetime.now(UTC)))
                sent += 1
                await asyncio.sleep(0.01)
            return sent

        stop = asyncio.Event()
        writing = asyncio.create_task(keep_writing())
        done = await asyncio.to_thread(
            retention, streams, "run", "--days", "30", "--archive", str(tmp_path / "archive")
        )
        stop.set()
        sent = await writing
        assert done.returncode == 0, done.stderr
        assert sent > 0

        removal = "action = 'audit.retention.partition_removed'"
        others = "action <> 'audit.retention.partition_removed'"
        await wait_for(lambda: _at_least(db, sent + 1, others))  # the new events and the hold
        await wait_for(lambda: _at_least(db, 1, removal))
        assert await count(db, f"{removal} AND (metadata->>'rows')::int = 20") == 1  # the old
        assert await count(db, "occurred_at < '2026-10-31'") == 0  # the old twenty are gone
        hold = await count(db, "action = 'audit.retention.hold_added' AND actor_id = 'counsel'")
        assert hold == 1
        kept = await (await db.execute(
            "SELECT count(*) FROM audit_partitions WHERE lo <= '2026-09-01' AND hi > '2026-09-01'"
        )).fetchone()  # fmt: skip
        assert kept == (1,)  # under the hold

        settings = verify_settings(streams.database_url, AUDIT_EVENT_KEYS=CHECKS)

        async def intact() -> bool:
            report = await asyncio.to_thread(verify, settings, grace=timedelta(minutes=5))
            assert report.findings == [], report.findings
            return report.pending == 0 and report.accounted >= sent + 22

        await wait_for(intact)
        offline = await asyncio.to_thread(_offline, tmp_path / "archive")
        assert offline.returncode == 0, offline.stdout
    finally:
        service.stop()


def _offline(archive: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "audit-verify"), "--archive", str(archive)],
        env={"AUDIT_SEAL_PUBLIC_KEYS": SEAL_PUBLIC_KEY}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


async def _at_least(db: Any, n: int, where: str = "TRUE") -> bool:
    return await count(db, where) >= n


def test_a_second_run_at_once_leaves_the_work_to_the_first_and_fails_nothing(
    streams: Settings, tmp_path: Path
) -> None:
    """A run holding the lock (a slow one, or ``--every``'s): another exits 0 — nothing failed,
    and ``AuditRetentionJobFailed`` must not fire — having removed nothing."""
    with psycopg.connect(streams.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        before = other.execute("SELECT count(*) FROM audit_partitions").fetchone()
        done = retention(streams, "run", "--days", "30", "--archive", str(tmp_path / "a"))
        assert done.returncode == 0, done.stderr
        assert "another retention run is in progress" in done.stderr
        assert other.execute("SELECT count(*) FROM audit_partitions").fetchone() == before
