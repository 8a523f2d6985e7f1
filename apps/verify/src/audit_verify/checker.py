"""The check: prove that ``audit_events`` is what the pipeline wrote, or say exactly what is not.

It recomputes everything from the database with a read-only login and the seals' *public* keys
(never a sealing key): the chain of seals (numbers, links, ranges, signatures), then for every
seal the rows of its transaction range against its entries. One line per finding, naming the
row id or seal number:

- ``altered``: a row's canonical bytes no longer hash to what was sealed (or it moved to
  another seal's range);
- ``deleted``: a sealed row is missing;
- ``inserted``: a row in a sealed range that the seal does not list, a row older than
  ``--grace`` that no seal covers, or (with ``AUDIT_EVENT_KEYS``) a row without a valid
  signature by a producer key;
- ``seal``: a missing seal, a broken link, a bad signature, or the pinned ``--head`` no longer
  on the chain (seals deleted or rewritten after you recorded it);
- ``epoch E, stream seq A-B``: sequences the broker acknowledged (at or below an ack floor a
  seal recorded) that no row, dead-letter record or duplicate record accounts for — events
  dropped by a trigger, deleted before their seal, or purged from the stream unstored
  (``audit_consumer/accounting.py``).

Version 2 seals bind every column of a row, the database's own too (``recorded_at``, ``tx_id``,
``stream_seq``, the epoch, the address with its mask), and the dead-letter and duplicate
records. A stored address whose mask is not a single host is named at once, and so is a row
whose ``tx_id`` no transaction can have had yet.

Rows are checked by ``--jobs`` processes, each over its own connection but all in the one
snapshot the chain was read in (``pg_export_snapshot``), so the result is one consistent view.
"""

import bisect
import contextlib
import gc
import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from audit_events.authorship import EventKeys, EventKeySettings
from audit_events.model import EVENT_COLUMNS, canonical, canonical_ip, read_as
from audit_events.seals import (
    AUTHORED,
    DUPLICATE,
    DUPLICATE_HASH,
    ENTRY_BYTES,
    GENESIS,
    LETTER,
    LETTER_HASH,
    RECORD_KEY,
    ROW_BINDING,
    SEAL_COLUMNS,
    UNSIGNED,
    Floor,
    Seal,
    SealKeys,
    bound,
    entries,
    seal_of,
)

log = logging.getLogger("audit.verify")

CHUNK_ROWS = 20_000  # rows are checked in groups of consecutive seals of about this many

_SEALS = f"SELECT {SEAL_COLUMNS}, hash FROM audit_seals ORDER BY seq"  # noqa: S608
_ENTRIES = "SELECT seq, entries FROM audit_seals WHERE seq >= %s AND seq <= %s ORDER BY seq"
_COLUMNS = ", ".join("id::text" if c == "id" else read_as(c) for c in EVENT_COLUMNS)
_ROWS = (
    f"SELECT tx_id::text::bigint, signature, recorded_at, {ROW_BINDING},"  # noqa: S608
    " masklen(source_ip) = CASE family(source_ip) WHEN 4 THEN 32 ELSE 128 END,"
    f" {_COLUMNS} FROM audit_events WHERE tx_id >= %s::text::xid8 AND tx_id < %s::text::xid8"
)
_FIRST = 5  # the event's columns start here in a row of _ROWS
_RECORDS = (  # dead-letter and duplicate records of a tx range: key (hex), flag, hash
    f"SELECT encode({RECORD_KEY}, 'hex'), 2, {LETTER_HASH}, tx_id::text::bigint"  # noqa: S608
    " FROM audit_dead_letters WHERE tx_id >= %(start)s::text::xid8 AND tx_id < %(end)s::text::xid8"
    f" UNION ALL SELECT encode({RECORD_KEY}, 'hex'), 3, {DUPLICATE_HASH}, tx_id::text::bigint"
    " FROM audit_duplicates WHERE tx_id >= %(start)s::text::xid8 AND tx_id < %(end)s::text::xid8"
)
_NEXT_TX = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
_GAPS = (  # unaccounted runs of [first, floor] in one epoch (sentinels at both ends)
    "SELECT s + 1, nxt - 1 FROM (SELECT s, lead(s) OVER (ORDER BY s) AS nxt FROM ("
    " SELECT stream_seq AS s FROM audit_events WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT stream_seq FROM audit_dead_letters WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT stream_seq FROM audit_duplicates WHERE epoch = %(e)s"
    " AND stream_seq BETWEEN %(first)s AND %(floor)s"
    " UNION SELECT %(first)s - 1 UNION SELECT %(floor)s + 1) a) g WHERE nxt > s + 1 ORDER BY s"
)
_ORPHANS = (  # duplicate records whose event is not stored
    "SELECT d.epoch, d.stream_seq, d.event_id::text FROM audit_duplicates d"
    " WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = d.event_id)"
    " ORDER BY d.epoch, d.stream_seq"
)
_NO_END = 2**63 - 1


class VerifySettings(EventKeySettings):
    """From the environment: where to read, and the keys to check with."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field("", alias="DATABASE_URL")
    reader_database_url: str = Field("", alias="AUDIT_READER_DATABASE_URL")
    seal_public_keys: str = Field("", alias="AUDIT_SEAL_PUBLIC_KEYS")

    @property
    def url(self) -> str:
        url = self.reader_database_url or self.database_url
        if not url:
            raise ValueError("set AUDIT_READER_DATABASE_URL (the read-only login)")
        return url


@dataclass
class Report:
    """What one run found."""

    findings: list[str] = field(default_factory=list)
    seals: int = 0
    rows: int = 0
    unsigned: int = 0
    pending: int = 0  # rows younger than the grace period, not sealed yet
    accounted: int = 0  # broker sequences checked for completeness
    head: str = ""

    def add(self, other: "Report") -> None:
        self.findings += other.findings
        self.rows += other.rows
        self.unsigned += other.unsigned
        self.pending += other.pending

    def summary(self) -> str:
        verdict = f"FOUND {len(self.findings)} problem(s)" if self.findings else "intact"
        return (
            f"{verdict}: {self.seals} seals, {self.rows} rows checked"
            f" ({self.unsigned} unsigned from before authorship, {self.pending} awaiting a seal),"
            f" {self.accounted} broker sequences accounted for; head {self.head or 'none'}"
        )


def connect(url: str, snapshot: str | None = None) -> psycopg.Connection[Any]:
    """A read-only REPEATABLE READ transaction in UTC (in ``snapshot`` when given)."""
    conn = psycopg.connect(url, connect_timeout=10)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    set_json_loads(orjson.loads, conn)
    if snapshot:  # the first statement of the transaction, as PostgreSQL requires
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    conn.execute("SET TimeZone TO 'UTC'")  # the transaction stays open until the connection closes
    return conn


def verify(
    settings: VerifySettings,
    since: datetime | None = None,
    head: str | None = None,
    grace: timedelta = timedelta(minutes=1),
    jobs: int = 1,
) -> Report:
    """The whole check; raises on anything that stops it (no database, bad key text)."""
    seal_keys = SealKeys.parse(settings.seal_public_keys)
    event_keys = settings.keys if settings.event_keys else None
    with connect(settings.url) as conn:
        snapshot = str(_one(conn, "SELECT pg_export_snapshot()"))
        report, seals, bad = _chain(conn, seal_keys, head)
        groups = list(_groups([s for s in seals if since is None or s.sealed_at >= since]))
        checker = RowChecker(event_keys, bad)
        if jobs > 1 and len(groups) > 1:
            with ProcessPoolExecutor(min(jobs, len(groups))) as pool:
                tasks = [(settings.url, snapshot, g, checker) for g in groups]
                for part in pool.map(_check_group, tasks):
                    report.add(part)
        else:
            with _no_gc():
                for group in groups:
                    report.add(checker.check(conn, group))
        report.add(checker.unsealed(conn, seals[-1].upto_tx if seals else 0, grace))
        report.add(completeness(conn, [s for s in seals if s.seq not in bad]))
    return report


def completeness(conn: psycopg.Connection[Any], seals: list[Seal]) -> Report:
    """Every sequence up to the highest ack floor a valid seal recorded, per epoch, is a row, a
    dead-letter record or a duplicate record; and every duplicate repeats a stored event."""
    report = Report()
    floors: dict[int, Floor] = {}
    for seal in seals:
        if (floor := seal.floor) and floor.seq >= floors.get(floor.epoch, floor).seq:
            floors[floor.epoch] = floor
    for epoch, floor in sorted(floors.items()):
        if floor.seq < floor.first:
            continue
        bounds = {"e": epoch, "first": floor.first, "floor": floor.seq}
        for start, end in conn.execute(_GAPS, bounds).fetchall():
            seqs = f"{start}" if start == end else f"{start}-{end}"
            report.findings.append(
                f"epoch {epoch}, stream seq {seqs}: acknowledged by the broker,"
                " neither stored nor dead-lettered"
            )
        report.accounted += floor.seq - floor.first + 1
    for epoch, seq, event_id in conn.execute(_ORPHANS).fetchall():
        report.findings.append(
            f"epoch {epoch}, stream seq {seq}: recorded as a duplicate of {event_id},"
            " which is not stored"
        )
    return report


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Tens of thousands of fetched rows would trigger the cyclic garbage collector again and
    again (it walks every tracked object each time); rows hold no cycles, so pause it."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _one(conn: psycopg.Connection[Any], query: LiteralString) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _chain(
    conn: psycopg.Connection[Any], seal_keys: SealKeys, head: str | None
) -> tuple[Report, list[Seal], set[int]]:
    """Every seal: numbered 1, 2, …, each linking the previous one's hash and range, signed by
    a known key; the pinned head still on the chain."""
    report, bad = Report(), set()
    rows = conn.execute(_SEALS).fetchall()
    seals = [seal_of(row) for row in rows]
    prev_hash: bytes | None = GENESIS  # None after a bad seal: its successor's link is moot
    prev_upto, hashes = 0, {}
    for number, (seal, row) in enumerate(zip(seals, rows, strict=True), start=1):
        if seal.seq != number:
            report.findings.append(f"seal #{number}: missing (the chain jumps to #{seal.seq})")
        if prev_hash is not None and bytes(seal.prev_hash) != prev_hash:
            report.findings.append(f"seal #{seal.seq}: broken chain (previous hash differs)")
        if seal.from_tx != prev_upto:
            report.findings.append(f"seal #{seal.seq}: its range does not follow the previous")
        digest = seal.hash  # (computed from the seal's fields, once)
        prev_hash, prev_upto = digest, seal.upto_tx
        if why := seal_keys.check(seal):
            report.findings.append(f"seal #{seal.seq}: {why}")
            bad.add(seal.seq)
            prev_hash = None
        elif bytes(row[16]) != digest:
            report.findings.append(f"seal #{seal.seq}: its stored hash was changed")
        hashes[seal.seq] = digest
    report.seals = len(seals)
    report.head = seals[-1].head if seals else ""
    if head:
        seq_text, _, hash_hex = head.partition(":")
        pinned = hashes.get(int(seq_text))
        if pinned is None:
            report.findings.append(f"seal #{seq_text}: pinned head is gone (seals were deleted)")
        elif pinned.hex() != hash_hex.lower():
            report.findings.append(f"seal #{seq_text}: pinned head differs (history rewritten)")
    return report, seals, bad


@dataclass(frozen=True)
class RowChecker:
    """Checks rows against seal entries (picklable: it runs in worker processes too)."""

    event_keys: EventKeys | None
    bad_seals: set[int]

    def check(self, conn: psycopg.Connection[Any], group: list[Seal]) -> Report:
        """The rows and records of consecutive seals against their entries (one query each)."""
        report = Report()
        start, end = group[0].from_tx, group[-1].upto_tx
        ends = [seal.upto_tx for seal in group]
        expected: dict[str, tuple[int, bytes, int]] = {}  # key hex -> (flag, hash, seal)
        listed = dict(conn.execute(_ENTRIES, (group[0].seq, group[-1].seq)).fetchall())
        for link in group:
            blob = bytes(listed.get(link.seq) or b"")
            if link.seq not in self.bad_seals and (
                hashlib.sha256(blob).digest() != bytes(link.rows_digest)
                or len(blob) != link.row_count * ENTRY_BYTES
            ):
                report.findings.append(f"seal #{link.seq}: its list of rows was changed")
            for flag, entry_key, digest in entries(blob):
                expected[entry_key.hex] = (flag, digest, link.seq)
        found, keys, sha256 = report.findings.append, self.event_keys, hashlib.sha256
        versions = {seal.seq: seal.version for seal in group}
        rows = conn.execute(_ROWS, (start, end)).fetchall()
        report.rows = len(rows)
        for row in rows:
            values = _event_values(row)
            event_id = values[0]
            link = group[bisect.bisect_right(ends, row[0])]
            sealed = expected.pop(event_id.replace("-", ""), None)
            if sealed is None:
                found(f"row {event_id}: inserted (in seal #{link.seq}'s range, not in it)")
                continue
            flag, digest, sealed_in = sealed
            data = canonical(values)
            mine = sha256(data).digest()
            if versions[sealed_in] >= 2:
                mine = bound(mine, bytes(row[3]))
            if mine != digest:
                found(f"row {event_id}: altered (differs from seal #{sealed_in})")
            elif sealed_in != link.seq:
                found(f"row {event_id}: altered (moved from seal #{sealed_in} to #{link.seq})")
            elif row[4] is False:
                found(f"row {event_id}: altered (source_ip stored with a network mask)")
            elif flag == UNSIGNED:
                report.unsigned += 1
            elif flag == AUTHORED and keys and (why := _authorship(keys, data, row)):
                found(f"row {event_id}: inserted: no valid authorship ({why})")
        for key, flag, digest, tx in conn.execute(_RECORDS, {"start": start, "end": end}):
            what = _record_name(key, flag)
            sealed = expected.pop(key, None)
            if sealed is None or sealed[0] != flag:
                seq = group[bisect.bisect_right(ends, tx)].seq
                found(f"{what}: inserted (in seal #{seq}'s range, not in it)")
            elif bytes(digest) != sealed[1]:
                found(f"{what}: altered (differs from seal #{sealed[2]})")
        for key, (flag, _, seq) in expected.items():
            if flag in (LETTER, DUPLICATE):
                found(f"{_record_name(key, flag)}: deleted (sealed in seal #{seq})")
            else:
                found(f"row {UUID(key)}: deleted (sealed in seal #{seq})")
        return report

    def unsealed(self, conn: psycopg.Connection[Any], start: int, grace: timedelta) -> Report:
        """Rows no seal covers yet: fine while young, inserted behind our back when old."""
        report = Report()
        now = datetime.now(UTC)
        next_tx = int(conn.execute(_NEXT_TX).fetchone()[0])  # type: ignore[index]
        for row in conn.execute(_ROWS, (start, _NO_END)).fetchall():
            event_id, recorded_at = row[_FIRST], row[2]
            report.rows += 1
            if row[0] >= next_tx:
                found = f"row {event_id}: inserted (tx_id {row[0]}: no transaction has had it yet)"
                report.findings.append(found)
                continue
            if row[4] is False:
                report.findings.append(f"row {event_id}: altered (source_ip stored with a mask)")
            if recorded_at < now - grace:
                age = int((now - recorded_at).total_seconds())
                report.findings.append(f"row {event_id}: inserted (unsealed, stored {age}s ago)")
                continue
            report.pending += 1
            keys = self.event_keys
            if keys and (why := _authorship(keys, canonical(_event_values(row)), row)):
                report.findings.append(f"row {event_id}: inserted: no valid authorship ({why})")
        return report


_IP = _FIRST + EVENT_COLUMNS.index("source_ip")
_ACTION = _FIRST + EVENT_COLUMNS.index("action")


def _authorship(keys: EventKeys, data: bytes, row: tuple[Any, ...]) -> str | None:
    """Why the row's signature does not make it an authentic event, or ``None``: a key of
    ours signed exactly these bytes, and that key may sign the row's action."""
    return keys.check(data, row[1]) or keys.may_sign(row[1], row[_ACTION])


def _event_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A fetched row's :data:`EVENT_COLUMNS` values as the model holds them."""
    if row[_IP] is None:
        return row[_FIRST:]
    return (*row[_FIRST:_IP], canonical_ip(row[_IP]), *row[_IP + 1 :])


def _record_name(key: str, flag: int) -> str:
    """``dead letter epoch 3 seq 1041`` for a record's entry key (epoch, sequence)."""
    raw = bytes.fromhex(key)
    epoch, seq = int.from_bytes(raw[:4], "big", signed=True), int.from_bytes(raw[4:12], "big")
    kind = "dead letter" if flag == LETTER else "duplicate record"
    return f"{kind} of epoch {epoch}, stream seq {seq}"


def _check_group(task: tuple[str, str, list[Seal], RowChecker]) -> Report:
    """In a worker process: one group, in the main check's snapshot."""
    url, snapshot, group, checker = task
    with connect(url, snapshot) as conn, _no_gc():
        return checker.check(conn, group)


def _groups(seals: list[Seal]) -> Iterator[list[Seal]]:
    """Consecutive seals, about :data:`CHUNK_ROWS` rows per group."""
    group: list[Seal] = []
    rows = 0
    for seal in seals:
        if group and (rows + seal.row_count > CHUNK_ROWS or seal.from_tx != group[-1].upto_tx):
            yield group
            group, rows = [], 0
        group.append(seal)
        rows += seal.row_count
    if group:
        yield group
