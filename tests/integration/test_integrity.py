"""Tamper evidence against real PostgreSQL: rows written and sealed as the consumer does, then
tampered with as the database owner (or the writer login), and ``audit-verify`` must name each
change — and find nothing when nothing was changed."""

import asyncio
import hashlib
import os
import secrets
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg.conninfo import make_conninfo

from audit_consumer import metrics
from audit_consumer.database import alembic_config, ensure_logins, migrate
from audit_consumer.sealer import Sealer
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter
from audit_events import AuditEvent, encode
from audit_events.authorship import READS, EventKeys, bound, key_id
from audit_events.horizon import HORIZON
from audit_events.seals import GENESIS, Seal, SealKey
from audit_verify import checker as verify_module
from audit_verify.checker import Report, verify
from tests.env import BIN, EVENT_KEY, SEAL_KEY, SEAL_PUBLIC_KEY
from tests.helpers import make_event, sign, signed_row, verify_settings, write

NOW = timedelta(0)  # grace: every unsealed row is overdue


@pytest.fixture
async def sealed(db: Any, migrated: str) -> list[AuditEvent]:
    """Three batches of five rows, written and sealed as the consumers do (three seals)."""
    events = [make_event(resource_id=f"acc-{i}") for i in range(15)]
    writer = await BatchWriter.connect(migrated)
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 1.0)
    for part in range(3):
        batch = events[part * 5 : part * 5 + 5]
        await write(writer, [signed_row(e, i) for i, e in enumerate(batch, start=part * 5)])
        assert await sealer.seal() is not None
    await writer.close()
    await sealer.close()
    return events


async def check(
    url: str, head: str | None = None, grace: timedelta = NOW, jobs: int = 1, **env: str
) -> Report:
    settings = verify_settings(url, **env)
    return await asyncio.to_thread(verify, settings, head=head, grace=grace, jobs=jobs)


async def test_an_untouched_table_is_intact(sealed: list[AuditEvent], migrated: str) -> None:
    report = await check(migrated)
    assert report.findings == []
    assert (report.seals, report.rows, report.unsigned, report.pending) == (3, 15, 0, 0)
    assert report.head.startswith("3:")


@pytest.mark.parametrize(
    ("tamper", "finding"),
    [
        ("UPDATE audit_events SET actor_id = 'mallory' WHERE resource_id = 'acc-7'", "altered"),
        ("UPDATE audit_events SET metadata = '{}' WHERE resource_id = 'acc-7'", "altered"),
        (
            "UPDATE audit_events SET occurred_at = occurred_at - interval '1 day'"
            " WHERE resource_id = 'acc-7'",
            "altered",
        ),
        ("DELETE FROM audit_events WHERE resource_id = 'acc-7'", "deleted"),
        ("UPDATE audit_events SET tx_id = '1' WHERE resource_id = 'acc-7'", "altered"),
        # The database's own columns and the stored form, bound by version 2 seals:
        (
            "UPDATE audit_events SET recorded_at = recorded_at - interval '1 hour'"
            " WHERE resource_id = 'acc-7'",
            "altered",
        ),
        ("UPDATE audit_events SET stream_seq = 1000 WHERE resource_id = 'acc-7'", "altered"),
        ("UPDATE audit_events SET epoch = 9 WHERE resource_id = 'acc-7'", "altered"),
        (
            "UPDATE audit_events SET source_ip = set_masklen(source_ip, 8)"
            " WHERE resource_id = 'acc-7'",
            "altered",
        ),
    ],
)
async def test_each_change_to_a_sealed_row_is_named(
    sealed: list[AuditEvent], db: Any, migrated: str, tamper: str, finding: str
) -> None:
    await db.execute(tamper)  # as the owner: the append-only trigger lets the owner through
    report = await check(migrated)
    assert report.findings, "tampering went unnoticed"
    assert (
        report.findings[0]
        == f"row {sealed[7].id}: {finding} (" + report.findings[0].split("(", 1)[1]
    )
    assert all(str(sealed[7].id) in line for line in report.findings)


async def test_a_row_inserted_behind_the_pipeline_is_named(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    fake = make_event(actor_id="mallory")
    await write(BatchWriter(db), [signed_row(fake, 99, "00000000:forged")])  # with a digest
    report = await check(migrated)
    assert report.findings == [f"row {fake.id}: inserted (unsealed, stored 0s ago)"]
    # Inside a sealed range instead (the owner sets tx_id): not in that seal.
    await db.execute("UPDATE audit_events SET tx_id = '1' WHERE id = %s", (fake.id,))
    report = await check(migrated)
    assert report.findings == [f"row {fake.id}: inserted (in seal #1's range, not in it)"]


async def test_a_forged_row_sealed_like_a_real_one_fails_authorship(
    sealed: list[AuditEvent], migrated: str
) -> None:
    """Someone with the writer's password but not the producers' key can insert a row with a
    right digest, and a consumer will seal it; the event key check still finds it."""
    fake = make_event(actor_id="mallory")
    forged = sign(encode(make_event()))  # a real signature, of another event
    await write(await BatchWriter.connect(migrated), [signed_row(fake, 99, forged)])
    await Sealer(migrated, SealKey(SEAL_KEY), 1.0).seal()
    report = await check(migrated)
    assert report.findings == [
        f"row {fake.id}: inserted: no valid authorship (signature does not match)"
    ]
    assert (await check(migrated, AUDIT_EVENT_KEYS="")).findings == []  # the documented limit


async def test_a_row_signed_by_a_records_key_outside_its_actions_fails_authorship(
    sealed: list[AuditEvent], migrated: str
) -> None:
    """audit-query's key may sign only the records of reads: an account event signed with it
    and inserted with the writer's password is found, sealed or not."""
    query_key = secrets.token_urlsafe(32)
    fake = make_event(actor_id="mallory")
    signature = EventKeys([query_key]).sign(encode(fake))
    await write(await BatchWriter.connect(migrated), [signed_row(fake, 99, signature)])
    keys = ",".join([EVENT_KEY, bound(query_key, READS)])
    kid = key_id(query_key)
    finding = (
        f"row {fake.id}: inserted: no valid authorship (key {kid} may not sign account.update)"
    )
    report = await check(migrated, grace=timedelta(hours=1), AUDIT_EVENT_KEYS=keys)
    assert report.findings == [finding]  # unsealed
    await Sealer(migrated, SealKey(SEAL_KEY), 1.0).seal()
    assert (await check(migrated, AUDIT_EVENT_KEYS=keys)).findings == [finding]  # sealed
    unbound = ",".join([EVENT_KEY, query_key])  # the same key, not bound: it would pass
    assert (await check(migrated, AUDIT_EVENT_KEYS=unbound)).findings == []


async def test_a_changed_seal_or_entry_is_named(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    await db.execute("UPDATE audit_seals SET row_count = 4 WHERE seq = 2")
    assert (await check(migrated)).findings == ["seal #2: bad signature"]
    await db.execute("UPDATE audit_seals SET row_count = 5 WHERE seq = 2")
    await db.execute("UPDATE audit_seals SET entries = substring(entries from 50) WHERE seq = 3")
    first, dropped = (await check(migrated)).findings
    assert first == "seal #3: its list of rows was changed"
    assert dropped.endswith(": inserted (in seal #3's range, not in it)")
    assert dropped.split()[1].rstrip(":") in {str(e.id) for e in sealed[10:15]}


async def test_deleting_the_newest_seal_is_found_against_a_pinned_head(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    head = (await check(migrated)).head
    await db.execute("DELETE FROM audit_seals WHERE seq = 3")
    quiet = await check(migrated, grace=timedelta(hours=1))  # rows wait for a new seal
    assert quiet.findings == []  # the chain alone still looks whole...
    report = await check(migrated, head=head, grace=timedelta(hours=1))
    assert report.findings == ["seal #3: pinned head is gone (seals were deleted)"]
    later = await check(migrated)  # ...and its rows are overdue for a seal
    assert len(later.findings) == 5
    assert all("inserted (unsealed" in line for line in later.findings)


async def test_a_rewritten_chain_is_found_against_a_pinned_head(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    """The owner deletes every seal and row 7, and re-seals with a key of their own that the
    verifier is told about: only the pinned head shows history was rewritten."""
    head = (await check(migrated)).head
    await db.execute("DELETE FROM audit_events WHERE resource_id = 'acc-7'")
    await db.execute("DELETE FROM audit_seals")
    rows = await (await db.execute("SELECT id FROM audit_events")).fetchall()
    assert len(rows) == 14
    await db.execute("TRUNCATE audit_events")
    own_key = SealKey(SEAL_KEY)  # the worst case: the attacker even holds the sealing key
    writer = BatchWriter(db)
    await write(writer, [signed_row(e, i) for i, e in enumerate(sealed) if i != 7])
    for _ in range(3):
        await Sealer(migrated, own_key, 1.0).seal()
    assert (await check(migrated)).findings == []
    report = await check(migrated, head=head)
    assert report.findings == ["seal #3: pinned head is gone (seals were deleted)"] or (
        report.findings == ["seal #3: pinned head differs (history rewritten)"]
    ), report.findings


async def test_recorded_at_and_tx_id_are_the_databases(db: Any, settings: Settings) -> None:
    """The writer login may not backdate rows or choose their transaction."""
    url = make_conninfo(settings.database_url, user="audit_consumer", password="pw-1")
    await ensure_logins(Settings(DATABASE_URL=settings.database_url, AUDIT_WRITER_DATABASE_URL=url))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for column, value in (("recorded_at", "2020-01-01"), ("tx_id", "1")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(
                    f"INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, action,"  # noqa: S608
                    f" resource_type, resource_id, outcome, stream_seq, {column})"
                    f" VALUES (%s, now(), 'user', 'a', 'x.y', 'r', '1', 'success', 1, %s)",
                    (uuid.uuid4(), value),
                )


async def test_the_reader_login_verifies_and_can_change_nothing(
    sealed: list[AuditEvent], settings: Settings, migrated: str
) -> None:
    url = make_conninfo(settings.database_url, user="audit_verify", password="pw-2")
    await ensure_logins(Settings(DATABASE_URL=settings.database_url, AUDIT_READER_DATABASE_URL=url))
    assert (await check(url)).findings == []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for statement in (
            "INSERT INTO audit_seals SELECT * FROM audit_seals",
            "UPDATE audit_events SET digest = ''",
            "DELETE FROM audit_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)


async def test_rows_stored_before_the_upgrade_are_sealed_as_unsigned(
    db: Any, settings: Settings, migrated: str
) -> None:
    """Migration 0003 enters the rows it finds, so the first seal covers them too."""
    config = alembic_config(settings)
    command.downgrade(config, "0002")
    try:
        old = [make_event(resource_id=f"old-{i}", source_ip="::ffff:10.0.0.1") for i in range(3)]
        async with await psycopg.AsyncConnection.connect(migrated, autocommit=True) as conn:
            for i, e in enumerate(old):
                await conn.execute(
                    "INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, action,"
                    " resource_type, resource_id, outcome, source_ip, user_agent, metadata,"
                    " stream_seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (e.id, e.occurred_at, e.actor_type, e.actor_id, e.action, e.resource_type,
                     e.resource_id, e.outcome, e.source_ip, e.user_agent,
                     psycopg.types.json.Jsonb(e.metadata), i),
                )  # fmt: skip
    finally:
        await migrate(settings)
    writer = await BatchWriter.connect(migrated)
    await write(writer, [signed_row(make_event(), 10)])
    await writer.close()
    assert await Sealer(migrated, SealKey(SEAL_KEY), 1.0).seal() is not None
    report = await check(migrated)
    assert report.findings == []
    assert (report.rows, report.unsigned) == (4, 3)


def test_the_command_exits_0_intact_1_found_2_could_not_check(
    sealed: list[AuditEvent], migrated: str
) -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
        base.update(DATABASE_URL=migrated, AUDIT_SEAL_PUBLIC_KEYS=SEAL_PUBLIC_KEY)
        return subprocess.run(
            [str(BIN / "audit-verify")], env={**base, **env}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("intact: 3 seals, 15 rows checked")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'failure' WHERE resource_id = 'acc-3'")
    found = run()
    assert found.returncode == 1
    assert f"row {sealed[3].id}: altered" in found.stdout
    assert found.stdout.splitlines()[-1].startswith("FOUND 1 problem(s)")
    assert run(AUDIT_SEAL_PUBLIC_KEYS="").returncode == 2
    unreachable = run(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("could not check:")


async def test_parallel_jobs_share_one_snapshot_and_find_the_same(
    sealed: list[AuditEvent], db: Any, migrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "CHUNK_ROWS", 5)  # one group per seal: three workers
    await db.execute("DELETE FROM audit_events WHERE resource_id IN ('acc-1', 'acc-13')")
    report = await check(migrated, jobs=3)
    assert sorted(report.findings) == sorted(
        f"row {sealed[i].id}: deleted (sealed in seal #{i // 5 + 1})" for i in (1, 13)
    )
    assert report.rows == 13


async def test_since_checks_recent_seals_rows_and_the_whole_chain(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    """``--since`` skips the rows of older seals (that is what makes it quick), never the
    chain; a pinned head that the chain still extends passes."""
    head = (await check(migrated)).head
    await db.execute("UPDATE audit_events SET actor_id = 'mallory' WHERE resource_id = 'acc-1'")
    settings = verify_settings(migrated, AUDIT_EVENT_KEYS="")
    later = datetime.now(UTC) + timedelta(seconds=1)  # every seal is older than this
    recent = await asyncio.to_thread(verify, settings, since=later, head=head, grace=NOW)
    assert (recent.findings, recent.seals, recent.rows) == ([], 3, 0)
    await db.execute("UPDATE audit_seals SET row_count = 9 WHERE seq = 1")
    chain = await asyncio.to_thread(verify, settings, since=later, head=head, grace=NOW)
    assert chain.findings[0] == "seal #1: bad signature"  # the chain: always checked whole
    whole = await check(migrated)
    assert f"row {sealed[1].id}: altered (differs from seal #1)" in whole.findings


async def test_a_row_with_a_transaction_id_from_the_future_is_named_at_once(
    sealed: list[AuditEvent], db: Any, migrated: str
) -> None:
    """A forged tx_id beyond any transaction would wait "for a seal" for ever: named now, with
    any grace."""
    fake = make_event(actor_id="mallory")
    await write(BatchWriter(db), [signed_row(fake, 99)])
    await db.execute("UPDATE audit_events SET tx_id = '9000000000' WHERE id = %s", (fake.id,))
    report = await check(migrated, grace=timedelta(hours=1))
    assert report.findings == [
        f"row {fake.id}: inserted (tx_id 9000000000: no transaction has had it yet)"
    ]


async def test_a_masked_address_is_named_before_any_seal(db: Any, migrated: str) -> None:
    """``127.0.0.1/8`` drops the row out of address searches while ``host()`` shows
    ``127.0.0.1``: a stored mask is named even on an unsealed row."""
    event = make_event(source_ip="127.0.0.1")
    await write(BatchWriter(db), [signed_row(event, 1)])
    await db.execute("UPDATE audit_events SET source_ip = '127.0.0.1/8'")
    report = await check(migrated, grace=timedelta(hours=1))
    assert report.findings == [f"row {event.id}: altered (source_ip stored with a mask)"]


async def test_a_fake_seal_by_the_writer_stops_sealing_loudly_and_is_named(
    sealed: list[AuditEvent], db: Any, settings: Settings, migrated: str
) -> None:
    """The writer login may insert seals: one claiming every transaction to come would have
    stopped sealing at 0 lag. The sealer refuses to extend it, says so (metric, log), the lag
    grows from the last seal that checks, and audit-verify names the seal."""
    url = make_conninfo(settings.database_url, user="audit_consumer", password="pw-1")
    await ensure_logins(Settings(DATABASE_URL=settings.database_url, AUDIT_WRITER_DATABASE_URL=url))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as writer:
        await writer.execute(
            "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
            " sealed_at, key_id, signature, hash, entries) SELECT 4, upto_tx, '9000000000', 0,"
            " '', hash, now(), key_id, '', '', '' FROM audit_seals WHERE seq = 3"
        )
    late = make_event(resource_id="late")
    await write(BatchWriter(db), [signed_row(late, 50)])
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 1.0)
    assert await sealer.seal() is None  # the head cannot be extended
    await sealer.close()
    assert metrics.SEAL_CHAIN_OK._value.get() == 0
    assert metrics.SEAL_LAG._value.get() > 0  # measured from seal #3, not from the fake
    report = await check(migrated, grace=timedelta(hours=1))
    assert report.findings[0] == "seal #4: bad signature"
    await db.execute("DELETE FROM audit_seals WHERE seq = 4")  # the owner's repair (README)
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 1.0)
    assert await sealer.seal() is not None
    await sealer.close()
    assert metrics.SEAL_CHAIN_OK._value.get() == 1
    assert (await check(migrated)).findings == []


V1_ENTRIES = (  # what the previous release's sealer listed: flag, id, the event digest only
    "SELECT string_agg(CASE WHEN signature IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END"
    " || uuid_send(id) || digest, ''::bytea ORDER BY tx_id, id) FROM audit_events"
)


async def test_the_previous_versions_seals_verify_and_the_chain_goes_on(
    db: Any, migrated: str
) -> None:
    """The rolling-upgrade rule: rows and version 1 seals already stored stay as they are and
    verify as before (they bind the event, not the database's columns); the first consumer of
    this version extends the same chain with version 2 seals; rows stored before carry no epoch
    and are outside the completeness accounting."""
    old = [make_event(resource_id=f"old-{i}") for i in range(3)]
    await write(BatchWriter(db), [signed_row(e, i) for i, e in enumerate(old)])
    entries = bytes((await (await db.execute(V1_ENTRIES)).fetchone())[0])
    upto = int((await (await db.execute(HORIZON)).fetchone())[0])
    v1 = SealKey(SEAL_KEY).sign(
        Seal(1, 0, upto, 3, hashlib.sha256(entries).digest(), GENESIS, datetime.now(UTC), "",
             version=1)
    )  # fmt: skip
    await db.execute(
        "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
        " sealed_at, key_id, signature, hash, entries, version) VALUES (1, '0', %s::text::xid8,"
        " 3, %s, %s, %s, %s, %s, %s, %s, 1)",
        (upto, v1.rows_digest, v1.prev_hash, v1.sealed_at, v1.key_id, v1.signature, v1.hash,
         entries),
    )  # fmt: skip
    await write(BatchWriter(db), [signed_row(make_event(resource_id="new"), 9)])
    sealer = Sealer(migrated, SealKey(SEAL_KEY), 1.0)
    second = await sealer.seal()
    await sealer.close()
    assert second is not None
    assert second.version == 2
    assert second.prev_hash == v1.hash
    report = await check(migrated)
    assert (report.findings, report.seals, report.rows) == ([], 2, 4)
    await db.execute("UPDATE audit_events SET actor_id = 'mallory' WHERE resource_id = 'old-1'")
    assert (await check(migrated)).findings == [f"row {old[1].id}: altered (differs from seal #1)"]
