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

import contextlib
import gc
import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from audit_events.authorship import EventKeySettings
from audit_events.seals import (
    GENESIS,
    SEAL_COLUMNS,
    Seal,
    SealKeys,
    seal_of,
)
from audit_verify.completeness import completeness
from audit_verify.report import Report
from audit_verify.retained import cuts, legacy_removed
from audit_verify.rows import RowChecker

log = logging.getLogger("audit.verify")

CHUNK_ROWS = 20_000  # rows are checked in groups of consecutive seals of about this many

_SEALS = f"SELECT {SEAL_COLUMNS}, hash FROM audit_seals ORDER BY seq"  # noqa: S608


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


__all__ = ["Report", "RowChecker", "VerifySettings", "completeness", "verify"]


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
        found, valid_cuts, cut_seals = cuts(conn, seals, bad)
        report.add(found)
        groups = list(_groups([s for s in seals if since is None or s.sealed_at >= since]))
        checker = RowChecker(event_keys, bad, cut_seals, legacy_removed(valid_cuts))
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
        report.add(completeness(conn, [s for s in seals if s.seq not in bad], valid_cuts))
        report.cuts = len(valid_cuts)
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
    prev_range = (-1, -1)  # the seals of one round (one per partition) share their range
    for number, (seal, row) in enumerate(zip(seals, rows, strict=True), start=1):
        if seal.seq != number:
            report.findings.append(f"seal #{number}: missing (the chain jumps to #{seal.seq})")
        if prev_hash is not None and bytes(seal.prev_hash) != prev_hash:
            report.findings.append(f"seal #{seal.seq}: broken chain (previous hash differs)")
        if seal.from_tx != prev_upto and (seal.from_tx, seal.upto_tx) != prev_range:
            report.findings.append(f"seal #{seal.seq}: its range does not follow the previous")
        digest = seal.hash  # (computed from the seal's fields, once)
        prev_hash, prev_upto, prev_range = digest, seal.upto_tx, (seal.from_tx, seal.upto_tx)
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


def _check_group(task: tuple[str, str, list[Seal], RowChecker]) -> Report:
    """In a worker process: one group, in the main check's snapshot."""
    url, snapshot, group, checker = task
    with connect(url, snapshot) as conn, _no_gc():
        return checker.check(conn, group)


def _follows(group: list[Seal], seal: Seal) -> bool:
    """``seal`` continues ``group``'s ranges: the next round, or another seal of its last."""
    if not group:
        return True
    last = group[-1]
    return seal.from_tx == last.upto_tx or (seal.from_tx, seal.upto_tx) == (
        last.from_tx,
        last.upto_tx,
    )


def _groups(seals: list[Seal]) -> Iterator[list[Seal]]:
    """Consecutive seals, about :data:`CHUNK_ROWS` rows per group, never splitting a round
    (its seals share one transaction range)."""
    group: list[Seal] = []
    rows = 0
    for seal in seals:
        new_round = seal.from_tx == group[-1].upto_tx if group else True
        if (group and new_round and rows + seal.row_count > CHUNK_ROWS) or not _follows(
            group, seal
        ):
            yield group
            group, rows = [], 0
        group.append(seal)
        rows += seal.row_count
    if group:
        yield group
