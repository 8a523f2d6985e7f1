"""Retention end to end against real PostgreSQL: old partitions archived, cut by a signed cut the
sealer makes, dropped — ``audit-verify`` intact after it, ``audit-verify --archive`` intact —
and every way to cheat it named: an archived line altered, a row deleted outside a cut, a
forged cut; a legal hold respected; a run stopped midway finished by the next."""

import asyncio
import contextlib
import functools
import gzip
import hashlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson
import psycopg
import pytest

from audit_consumer.sealer import Sealer
from audit_consumer.writer import BatchWriter
from audit_devservers import Child, free_port
from audit_events import AuditEvent, encode
from audit_events.archives import CUT, seal_line
from audit_events.cuts import Cut
from audit_events.model import row
from audit_events.seals import (
    SEAL_COLUMNS,
    Floor,
    Seal,
    SealKey,
    SealKeys,
    generate_seal_key,
    seal_of,
)
from audit_retention import removal
from audit_retention.archiving import write_archive
from audit_retention.removal import Policy, run
from audit_verify.archived import check_archives
from audit_verify.checker import verify
from audit_verify.locations import upload
from tests.env import BIN, SEAL_KEY, SEAL_PUBLIC_KEY
from tests.helpers import assert_intact as assert_sealed
from tests.helpers import make_event, sign, verify_settings, wait_for

OLD = datetime(2026, 10, 5, 12, tzinfo=UTC)  # in the tests' weekly partitions, > 30 days ago
KEYS = SealKeys([SEAL_PUBLIC_KEY])


RECORDS: list[AuditEvent] = []  # what a run published (the CLI's Recorder publishes them)


async def write_twenty(migrated: str) -> Sealer:
    """20 rows of epoch 1 (sequences 1-20): 10 old, 10 now; a sealer with the ack floor at 20."""
    writer = await BatchWriter.connect(migrated)
    rows = []
    for seq in range(1, 21):
        at = OLD + timedelta(minutes=seq) if seq <= 10 else datetime.now(UTC)
        event = make_event(resource_id=f"acc-{seq}", occurred_at=at)
        data = encode(event)
        rows.append(row(event, seq, sign(data), hashlib.sha256(data).digest(), epoch=1))
    result = await writer.write(rows)
    assert result.inserted == 20
    await writer.close()
    return Sealer(migrated, SealKey(SEAL_KEY), 0.1, floor=lambda: Floor(1, 1, 20))


@pytest.fixture
async def log(db: Any, migrated: str) -> AsyncIterator[Sealer]:
    """:func:`write_twenty`'s rows, the sealer sealing every 0.1 s in the background (as the
    consumers do)."""
    sealer = await write_twenty(migrated)
    task = asyncio.create_task(sealer.run())
    yield sealer
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sealer.close()


def retain(url: str, archive: Path, **options: Any) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return run(conn, Policy(30, archive, KEYS, RECORDS.extend, **options))


async def verified(url: str) -> Any:
    return await asyncio.to_thread(verify, verify_settings(url), grace=timedelta(minutes=5))


async def partitions(db: Any) -> set[str]:
    return {r[0] for r in await (await db.execute("SELECT name FROM audit_partitions")).fetchall()}


async def test_a_run_archives_cuts_and_drops_and_everything_still_verifies(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    before = await partitions(db)
    RECORDS.clear()
    removed = await asyncio.to_thread(retain, migrated, tmp_path)
    recorded = {e.resource_id: e for e in RECORDS}
    assert set(recorded) == set(removed)  # each removal on the record
    assert {e.action for e in RECORDS} == {"audit.retention.partition_removed"}
    assert 10 in [e.metadata["rows"] for e in RECORDS]
    assert removed, "nothing older than 30 days was removed"
    assert not set(removed) & await partitions(db)
    assert await partitions(db) < before
    stored = await (await db.execute("SELECT count(*) FROM audit_events")).fetchone()
    assert stored == (10,)  # the old ten are gone, today's ten stay

    report = await verified(migrated)
    assert report.findings == []
    assert report.cuts == len(removed)
    assert report.accounted == 20  # sequences 1-10 accounted for by the cut

    archived = check_archives(tmp_path, KEYS)
    assert archived.findings == []
    assert archived.rows == 10
    (cut,) = [
        Cut.parse(bytes(r[0]))
        for r in await (
            await db.execute("SELECT body FROM audit_seals WHERE kind = 'cut' AND row_count > 0")
        ).fetchall()
    ]
    assert cut.rows == 10
    assert cut.sequences == {1: [(1, 10)]}

    # the command-line check too, with no database at all
    done = await asyncio.to_thread(_cli_check, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout

    # a rerun has nothing left to do
    assert await asyncio.to_thread(retain, migrated, tmp_path) == []


async def test_one_sealer_round_cuts_every_partition_a_run_removes(
    db: Any, migrated: str, tmp_path: Path
) -> None:
    """A run asks for every cut at once, after archiving (a sealer looks at the last hour's
    requests only, and archiving may take longer): a first run over many old partitions takes
    one round of the consumers' sealer, not one round per partition."""
    sealer = await write_twenty(migrated)
    try:
        await sealer.seal()  # every row sealed; from here on the sealer runs only when told
        due = await (await db.execute(
            "SELECT count(*) FROM audit_partitions WHERE hi <= now() - interval '30 days'"
        )).fetchone()  # fmt: skip
        assert due is not None
        assert due[0] > 2
        one_try = functools.partial(retain, migrated, tmp_path, wait_seconds=30)
        running = asyncio.create_task(asyncio.to_thread(one_try))
        asked = "SELECT count(DISTINCT partition) = %s FROM audit_cut_requests"
        await wait_for(lambda: _exists_async(db, asked, due[0]))
        together = "SELECT count(DISTINCT requested_at) FROM audit_cut_requests"
        assert await (await db.execute(together)).fetchone() == (1,)
        await sealer.seal()  # one round
        removed = await running
        assert len(removed) == due[0]
        assert (await verified(migrated)).findings == []
    finally:
        await sealer.close()


async def test_a_removal_record_too_old_to_store_is_not_published_again(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    """Until a consumer stored it, each run publishes a removal's record again (JetStream
    dedupes); but once the record is older than every open partition — it aged out with its
    own partition, one day — it is never published again (every run would be dead-lettered)."""
    await asyncio.to_thread(retain, migrated, tmp_path)
    RECORDS.clear()
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert {e.action for e in RECORDS} == {"audit.retention.partition_removed"}  # not stored here
    RECORDS.clear()
    # The records' time in no open partition. (In threads: the sealer, on this event loop,
    # must go on, or reopening would wait for its lock for ever.)
    closed = await asyncio.to_thread(_close_up_to_now, migrated)
    try:
        await asyncio.to_thread(retain, migrated, tmp_path)
    finally:
        await asyncio.to_thread(_reopen, migrated, closed)
    assert RECORDS == []


def _close_up_to_now(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        query = "SELECT name FROM audit_partitions WHERE lo <= now() AND NOT closed"
        names = [name for (name,) in conn.execute(query).fetchall()]
        for name in names:
            removal._close(conn, name)
        return names


def _reopen(url: str, names: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            removal._reopen(conn, name)


async def _exists_async(db: Any, query: str, *params: Any) -> bool:
    row = await (await db.execute(query, params)).fetchone()
    return bool(row and row[0])


async def test_an_altered_dropped_or_added_archive_line_is_named(
    log: Sealer, migrated: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(retain, migrated, tmp_path)
    folder = _with_rows(tmp_path)
    lines = _rows(folder)
    changed = orjson.loads(lines[3])
    changed["event"] = changed["event"].replace('"resource_id":"acc-', '"resource_id":"acX-')
    forged = [
        *lines[:3],
        orjson.dumps(changed),
        *lines[5:],
        lines[0].replace(b'"id":"', b'"id":"f'),
    ]
    (folder / "rows.ndjson.gz").write_bytes(gzip.compress(b"\n".join(forged) + b"\n"))
    findings = check_archives(tmp_path, KEYS).findings
    assert any("rows.ndjson.gz differs from the manifest" in f for f in findings), findings
    assert any("altered" in f for f in findings), findings
    assert any("deleted" in f for f in findings), findings  # line 5 dropped


async def test_a_changed_manifest_is_not_the_one_the_cut_signed(
    log: Sealer, migrated: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(retain, migrated, tmp_path)
    folder = _with_rows(tmp_path)
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest["rows"] = 9
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    findings = check_archives(tmp_path, KEYS).findings
    assert any("the manifest differs from the one the cut signed" in f for f in findings)


async def test_a_row_deleted_outside_a_cut_is_still_named(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(retain, migrated, tmp_path)
    await db.execute("DELETE FROM audit_events WHERE resource_id = 'acc-15'")  # as the owner
    findings = (await verified(migrated)).findings
    assert any("deleted" in f for f in findings), findings
    assert any("stream seq 15:" in f for f in findings), findings


async def test_a_forged_cut_is_named(log: Sealer, db: Any, migrated: str, tmp_path: Path) -> None:
    """A cut by an unknown key, and one by the real key claiming seals that are not its
    partition's (what the owner could make with a stolen sealing key and no care)."""
    await asyncio.to_thread(retain, migrated, tmp_path)
    await asyncio.sleep(0.3)
    head = await _head(db)
    live = (await partitions(db)).pop()
    fake = Cut(partition=live, lo=OLD, hi=OLD, rows=0, seals=(), manifest_sha256="0" * 64,
               request=0)  # fmt: skip
    stranger = SealKey(generate_seal_key())
    await _append(db, stranger, head, fake)
    findings = (await verified(migrated)).findings
    assert any("unknown key" in f for f in findings), findings


async def test_a_cut_of_a_held_partition_is_named(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    live = sorted(await partitions(db))[-1]
    await db.execute(
        "INSERT INTO audit_holds (lo, hi, reason) SELECT lo, hi, 'case 7' FROM audit_partitions"
        " WHERE name = %s", (live,)
    )  # fmt: skip
    await asyncio.sleep(0.3)
    await _append(db, SealKey(SEAL_KEY), await _head(db), Cut(
        partition=live, lo=OLD, hi=datetime.now(UTC) + timedelta(days=9), rows=0, seals=(),
        manifest_sha256="0" * 64, request=0))  # fmt: skip
    findings = (await verified(migrated)).findings
    assert any("under legal hold" in f for f in findings), findings


async def test_a_legal_hold_keeps_its_partitions(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    await db.execute(
        "INSERT INTO audit_holds (lo, hi, reason) VALUES (%s, %s, 'litigation 42')",
        (OLD - timedelta(days=1), OLD + timedelta(days=1)),
    )
    removed = await asyncio.to_thread(retain, migrated, tmp_path)
    kept = await (await db.execute("SELECT count(*) FROM audit_events")).fetchone()
    assert kept == (20,)  # the held rows stay
    assert removed  # (other, empty old partitions go)
    await db.execute(
        "INSERT INTO audit_hold_releases (hold_id, reason) SELECT id, 'over' FROM audit_holds"
    )
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT count(*) FROM audit_events")).fetchone() == (10,)
    assert (await verified(migrated)).findings == []


STEPS = ("closed", "archived", "asked", "cut", "detached", "dropped")


async def _replay(db: Any, migrated: str, folder: Path, until: str) -> str:
    """A run over the old rows' partition that died after step ``until`` of :data:`STEPS`
    (replayed here as the run takes them, archiving into ``folder``): the partition's name."""
    found = await (await db.execute(
        "SELECT name, lo, hi FROM audit_partitions WHERE lo <= %s AND hi > %s", (OLD, OLD)
    )).fetchone()  # fmt: skip
    assert found is not None
    name, lo, hi = found
    await assert_sealed(migrated)
    done = STEPS[: STEPS.index(until) + 1]
    with psycopg.connect(migrated, autocommit=True) as conn:
        removal._close(conn, name)
        if "archived" in done:
            _, manifest = write_archive(conn, folder, name, lo, hi)
        if "asked" in done:
            conn.execute(
                "INSERT INTO audit_cut_requests (partition, manifest_sha256)"
                " VALUES (%s, sha256(%s))", (name, manifest),
            )  # fmt: skip
        if "cut" in done:
            signed = "SELECT 1 FROM audit_seals WHERE kind = 'cut' AND scope = %s"
            await wait_for(lambda: _exists(conn, signed, name))  # the fixture's sealer signs
        if "detached" in done:  # (the cut goes beside its archive first)
            cut = conn.execute(
                f"SELECT {SEAL_COLUMNS} FROM audit_seals WHERE kind = 'cut' AND scope = %s",  # noqa: S608
                (name,),
            ).fetchone()
            assert cut is not None
            (folder / name / CUT).write_bytes(seal_line(seal_of(cut), b""))
            conn.execute(f"ALTER TABLE audit_events DETACH PARTITION {name} CONCURRENTLY")
        if "dropped" in done:
            conn.execute(f"DROP TABLE {name}")
    return str(name)


async def test_a_hold_that_comes_after_the_cut_keeps_the_partition_until_released(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    """A hold added between the cut's signature and the drop (a run died in between): the
    partition stays — closed, its rows readable, never reopened (the cut counts them) — and
    the chain still verifies; released, the next run finishes the removal."""
    name = await _replay(db, migrated, tmp_path, "cut")
    await db.execute(
        "INSERT INTO audit_holds (lo, hi, reason) VALUES (%s, %s, 'subpoena 9')",
        (OLD - timedelta(hours=1), OLD + timedelta(hours=1)),
    )
    assert name not in await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT count(*) FROM audit_events")).fetchone() == (20,)
    closed = "SELECT closed FROM audit_partitions WHERE name = %s"
    assert await (await db.execute(closed, (name,))).fetchone() == (True,)
    assert (await verified(migrated)).findings == []
    await db.execute(
        "INSERT INTO audit_hold_releases (hold_id, reason) SELECT id, 'over' FROM audit_holds"
    )
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT count(*) FROM audit_events")).fetchone() == (10,)
    assert (await verified(migrated)).findings == []
    assert check_archives(tmp_path, KEYS).findings == []


async def test_a_run_stopped_after_asking_for_its_cut_is_finished_by_the_next(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    """A run that died after closing, archiving and asking (the steps it took, replayed here):
    the closed partition refuses rows meanwhile; the next run finishes, nothing doubled."""
    await _replay(db, migrated, tmp_path, "asked")
    with pytest.raises(psycopg.errors.CheckViolation, match="closed: retention"):
        await db.execute(
            "INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, action,"
            " resource_type, resource_id, outcome, stream_seq, digest)"
            " VALUES (gen_random_uuid(), %s, 'user', 'u', 'a.b', 'r', '1', 'success', 99,"
            " '\\x00')", (OLD,)
        )  # fmt: skip
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT count(*) FROM audit_events")).fetchone() == (10,)
    cuts = await (await db.execute("SELECT count(*), count(DISTINCT scope) FROM audit_seals"
                                   " WHERE kind = 'cut'")).fetchone()  # fmt: skip
    assert cuts is not None
    assert cuts[0] == cuts[1]  # one cut per partition
    assert (await verified(migrated)).findings == []
    assert check_archives(tmp_path, KEYS).findings == []


def _cli_check(
    archive: Path | str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "audit-verify", "--archive", str(archive)],
        env={"AUDIT_SEAL_PUBLIC_KEYS": SEAL_PUBLIC_KEY, "PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True, text=True, check=False,
    )  # fmt: skip


async def _exists(conn: psycopg.Connection[Any], query: str, name: str) -> bool:
    return conn.execute(query, (name,)).fetchone() is not None


def _with_rows(archive: Path) -> Path:
    """The one archive that holds rows (the others are of empty partitions)."""
    (folder,) = [p.parent for p in archive.glob("*/cut.json") if _rows(p.parent)]
    return folder


def _rows(folder: Path) -> list[bytes]:
    return gzip.decompress((folder / "rows.ndjson.gz").read_bytes()).splitlines()


async def _head(db: Any) -> tuple[int, bytes, int]:
    found = await (await db.execute(
        "SELECT seq, hash, upto_tx::text::bigint FROM audit_seals ORDER BY seq DESC LIMIT 1"
    )).fetchone()  # fmt: skip
    assert found is not None
    return found[0], bytes(found[1]), found[2]


async def _append(db: Any, key: SealKey, head: tuple[int, bytes, int], cut: Cut) -> None:
    """A cut seal inserted behind the sealers' back (as the owner)."""
    seq, prev, upto = head
    body = cut.body()
    seal = key.sign(Seal(seq=seq + 1, from_tx=upto, upto_tx=upto, row_count=cut.rows,
                         rows_digest=hashlib.sha256(body).digest(), prev_hash=prev,
                         sealed_at=datetime.now(UTC), key_id="", kind="cut",
                         scope=cut.partition, body=body))  # fmt: skip
    await db.execute(
        "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
        " sealed_at, key_id, signature, hash, entries, version, kind, scope, body)"
        " VALUES (%s, %s::text::xid8, %s::text::xid8, %s, %s, %s, %s, %s, %s, %s, '', 2,"
        " 'cut', %s, %s)",
        (seal.seq, upto, upto, seal.row_count, seal.rows_digest, seal.prev_hash, seal.sealed_at,
         seal.key_id, seal.signature, seal.hash, seal.scope, body),
    )  # fmt: skip


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3-compatible server process: moto's (no MinIO can be installed here), its endpoint
    given to boto3 the standard way (``AWS_ENDPOINT_URL``)."""
    port = free_port()
    server = Child("s3", [str(BIN / "moto_server"), "-p", str(port)], None, tmp_path / "s3.log")
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    deadline = time.monotonic() + 30
    while True:  # a bound on start-up, not a timing assertion
        try:
            boto3.client("s3").create_bucket(Bucket="audit-archive")
            break
        except Exception:
            assert time.monotonic() < deadline, (tmp_path / "s3.log").read_text()
            time.sleep(0.2)
    yield endpoint
    server.stop()


async def test_archives_in_object_storage_are_checked_from_there(
    log: Sealer, db: Any, migrated: str, tmp_path: Path, s3: str
) -> None:
    url = "s3://audit-archive/prod/audit"
    with psycopg.connect(migrated, autocommit=True) as conn:
        policy = Policy(30, url, KEYS, RECORDS.extend, staging=tmp_path / "staging")
        removed = await asyncio.to_thread(run, conn, policy)
    assert removed
    keys = {
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="audit-archive")["Contents"]
    }
    assert {k.rsplit("/", 1)[1] for k in keys} == {"rows.ndjson.gz", "seals.ndjson",
                                                   "manifest.json", "cut.json"}  # fmt: skip
    done = await asyncio.to_thread(_cli_check, url, {**S3_ENV, "AWS_ENDPOINT_URL": s3})
    assert done.returncode == 0, done.stdout + done.stderr
    # One archived line altered in the bucket: named from there.
    s3c = boto3.client("s3")
    (key, lines), *_ = [
        (k, body)
        for k in sorted(keys)
        if k.endswith("rows.ndjson.gz")
        and (body := gzip.decompress(s3c.get_object(Bucket="audit-archive", Key=k)["Body"].read()))
    ]  # the archive that holds rows (the others are of empty partitions)
    s3c.put_object(Bucket="audit-archive", Key=key,
                   Body=gzip.compress(lines.replace(b'"acc-', b'"acX-', 1)))  # fmt: skip
    done = await asyncio.to_thread(_cli_check, url, {**S3_ENV, "AWS_ENDPOINT_URL": s3})
    assert done.returncode == 1
    assert "altered" in done.stdout


async def test_a_lost_archive_is_written_again_before_its_partition_goes(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    """The archive of a cut partition is gone when the next run comes (a new pod, a disk
    moved): it is written again from the rows still there, the bytes the cut signed, and only
    then is the partition dropped."""
    name = await _replay(db, migrated, tmp_path, "cut")
    shutil.rmtree(tmp_path / name)
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT to_regclass(%s)", (name,))).fetchone() == (None,)
    archived = check_archives(tmp_path, KEYS)
    assert archived.findings == []
    assert archived.rows == 10


async def test_a_detached_partition_whose_archive_is_lost_is_not_dropped(
    log: Sealer, db: Any, migrated: str, tmp_path: Path
) -> None:
    """Detached, its rows no longer readable through the table, and its archive gone: the run
    stops and names it; the table stays for a person to look at."""
    name = await _replay(db, migrated, tmp_path, "cut")
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE audit_events DETACH PARTITION {name} CONCURRENTLY")
    shutil.rmtree(tmp_path / name)
    try:
        with pytest.raises(removal.Failed, match="cannot be written again"):
            await asyncio.to_thread(retain, migrated, tmp_path)
        kept = await (await db.execute("SELECT to_regclass(%s)", (name,))).fetchone()
        assert kept != (None,)
    finally:
        await db.execute(f"DROP TABLE {name}")  # (the next test's partitions take its name)


async def test_a_rerun_in_a_new_pod_puts_the_cut_beside_its_archive_in_object_storage(
    log: Sealer, db: Any, migrated: str, tmp_path: Path, s3: str
) -> None:
    """A run died after its cut was signed; the next runs in a new pod (empty staging): the
    cut still reaches the bucket, so the archive there verifies."""
    url = "s3://audit-archive/prod/audit"
    name = await _replay(db, migrated, tmp_path / "pod-1", "cut")
    upload(tmp_path / "pod-1" / name, url)  # as the run did before asking
    with psycopg.connect(migrated, autocommit=True) as conn:
        policy = Policy(30, url, KEYS, RECORDS.extend, staging=tmp_path / "pod-2")
        await asyncio.to_thread(run, conn, policy)
    assert await (await db.execute("SELECT to_regclass(%s)", (name,))).fetchone() == (None,)
    done = await asyncio.to_thread(_cli_check, url, {**S3_ENV, "AWS_ENDPOINT_URL": s3})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("stopped_after", STEPS)
async def test_a_run_stopped_after_any_step_is_finished_by_the_next(
    log: Sealer, db: Any, migrated: str, tmp_path: Path, stopped_after: str
) -> None:
    """A run killed after each of its steps (the steps replayed up to there): the next run
    finishes it — one cut per partition, every row accounted for, the archive intact."""
    name = await _replay(db, migrated, tmp_path, stopped_after)
    await asyncio.to_thread(retain, migrated, tmp_path)
    assert await (await db.execute("SELECT to_regclass(%s)", (name,))).fetchone() == (None,)
    cuts = await (await db.execute(
        "SELECT count(*), count(DISTINCT scope) FROM audit_seals WHERE kind = 'cut'"
    )).fetchone()  # fmt: skip
    assert cuts is not None
    assert cuts[0] == cuts[1]
    report = await verified(migrated)
    assert report.findings == []
    assert report.accounted == 20
    assert check_archives(tmp_path, KEYS).findings == []
