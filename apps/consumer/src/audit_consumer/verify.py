"""``audit-verify``: prove that ``audit_events`` is what the pipeline wrote, or say exactly what
is not.

It recomputes everything from the database with a read-only login and the seals' *public* keys
(never a sealing key): the chain of seals (numbers, links, ranges, signatures), then for every
seal the rows of its transaction range against its entries. One line per finding, naming the
row id or seal number:

- ``altered``: a row's canonical bytes no longer hash to what was sealed;
- ``deleted``: a sealed row is missing;
- ``inserted``: a row in a sealed range that the seal does not list, a row older than
  ``--grace`` that no seal covers, or (with ``AUDIT_EVENT_KEYS``) a row without a valid
  signature by a producer key;
- ``seal``: a missing seal, a broken link, a bad signature, or the pinned ``--head`` no longer
  on the chain (seals deleted or rewritten after you recorded it).

Exit status: 0 intact, 1 something found, 2 could not check (no database, no key, bad option).
"""

import argparse
import asyncio
import bisect
import hashlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import psycopg
from prometheus_client import Gauge, start_http_server
from psycopg.types.json import set_json_loads
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_events.authorship import EventKeys
from audit_events.model import EVENT_COLUMNS, canonical
from audit_events.seals import AUTHORED, GENESIS, UNSIGNED, Seal, SealKeys, entries

log = logging.getLogger("audit.verify")

CHUNK_ROWS = 50_000  # seals are checked in groups of about this many rows (one query each)

_SEALS = (
    "SELECT seq, from_tx::text::bigint, upto_tx::text::bigint, row_count, rows_digest,"
    " prev_hash, sealed_at, key_id, signature, hash FROM audit_seals ORDER BY seq"
)
_ENTRIES = (
    "SELECT tx_id::text::bigint, entries FROM audit_batches"
    " WHERE tx_id >= %s::text::xid8 AND tx_id < %s::text::xid8 ORDER BY tx_id, entries"
)
_COLUMNS = ", ".join("host(source_ip)" if c == "source_ip" else c for c in EVENT_COLUMNS)
_ROWS = (
    f"SELECT tx_id::text::bigint, signature, recorded_at, {_COLUMNS} FROM audit_events"  # noqa: S608
    " WHERE tx_id >= %s::text::xid8 AND tx_id < %s::text::xid8"
)
_NO_END = 2**63 - 1


class VerifySettings(BaseSettings):
    """From the environment: where to read, and the keys to check with."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field("", alias="DATABASE_URL")
    reader_database_url: str = Field("", alias="AUDIT_READER_DATABASE_URL")
    seal_public_keys: str = Field("", alias="AUDIT_SEAL_PUBLIC_KEYS")
    event_keys: str = Field("", alias="AUDIT_EVENT_KEYS", repr=False)


@dataclass
class Report:
    """What one run found."""

    findings: list[str] = field(default_factory=list)
    seals: int = 0
    rows: int = 0
    unsigned: int = 0
    pending: int = 0  # rows younger than the grace period, not sealed yet
    head: str = ""

    def found(self, line: str) -> None:
        self.findings.append(line)
        print(line, flush=True)

    def summary(self) -> str:
        verdict = f"FOUND {len(self.findings)} problem(s)" if self.findings else "intact"
        return (
            f"{verdict}: {self.seals} seals, {self.rows} rows checked"
            f" ({self.unsigned} unsigned from before authorship, {self.pending} awaiting a seal);"
            f" head {self.head or 'none'}"
        )


class Verifier:
    """One verification over one connection."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        seal_keys: SealKeys,
        event_keys: EventKeys | None,
        grace: timedelta = timedelta(minutes=1),
    ) -> None:
        self.conn, self.seal_keys, self.event_keys, self.grace = conn, seal_keys, event_keys, grace
        self.report = Report()
        self.bad_seals: set[int] = set()  # their rows are still checked, their counts not

    async def run(self, since: datetime | None = None, head: str | None = None) -> Report:
        await self.conn.execute("SET TimeZone TO 'UTC'")
        seals = await self._chain(head)
        recent = [s for s in seals if since is None or s.sealed_at >= since]
        for group in _groups(recent):
            await self._check_rows(group)
        await self._check_unsealed(seals[-1].upto_tx if seals else 0)
        return self.report

    async def _chain(self, head: str | None) -> list[Seal]:
        """Every seal: numbered 1, 2, …, each linking the previous one's hash and range,
        signed by a known key."""
        rows = await (await self.conn.execute(_SEALS)).fetchall()
        seals = [Seal(*row[:9]) for row in rows]
        prev_hash: bytes | None = GENESIS  # None after a bad seal: its successor's link is moot
        prev_upto, hashes = 0, {}
        for number, (seal, row) in enumerate(zip(seals, rows, strict=True), start=1):
            if seal.seq != number:
                self.report.found(f"seal #{number}: missing (the chain jumps to #{seal.seq})")
            if prev_hash is not None and bytes(seal.prev_hash) != prev_hash:
                self.report.found(f"seal #{seal.seq}: broken chain (previous hash differs)")
            if seal.from_tx != prev_upto:
                self.report.found(f"seal #{seal.seq}: its range does not follow the previous")
            prev_hash, prev_upto = seal.hash, seal.upto_tx
            if why := self.seal_keys.check(seal):
                self.report.found(f"seal #{seal.seq}: {why}")
                self.bad_seals.add(seal.seq)
                prev_hash = None
            elif bytes(row[9]) != seal.hash:
                self.report.found(f"seal #{seal.seq}: its stored hash was changed")
            hashes[seal.seq] = seal.hash
        self.report.seals = len(seals)
        self.report.head = seals[-1].head if seals else ""
        if head:
            seq_text, _, hash_hex = head.partition(":")
            pinned = hashes.get(int(seq_text))
            if pinned is None:
                self.report.found(f"seal #{seq_text}: pinned head is gone (seals were deleted)")
            elif pinned.hex() != hash_hex.lower():
                self.report.found(f"seal #{seq_text}: pinned head differs (history rewritten)")
        return seals

    async def _check_rows(self, group: list[Seal]) -> None:
        """The rows of consecutive seals against their entries (one query each for all)."""
        start, end = group[0].from_tx, group[-1].upto_tx
        ends = [seal.upto_tx for seal in group]
        expected: dict[bytes, tuple[int, bytes, int]] = {}  # id -> (flag, digest, seal)
        digests = [hashlib.sha256() for _ in group]
        counts = [0] * len(group)
        async for tx_id, blob in await self.conn.execute(_ENTRIES, (start, end)):
            at = bisect.bisect_right(ends, tx_id)
            digests[at].update(blob)
            for flag, event_id, row_digest in entries(blob):
                expected[event_id.bytes] = (flag, row_digest, group[at].seq)
                counts[at] += 1
        for seal, digest, count in zip(group, digests, counts, strict=True):
            if seal.seq in self.bad_seals:
                continue
            if digest.digest() != bytes(seal.rows_digest) or count != seal.row_count:
                self.report.found(f"seal #{seal.seq}: its batch entries were changed")
        async for row in await self.conn.execute(_ROWS, (start, end)):
            self._check_row(row, expected, group[bisect.bisect_right(ends, row[0])].seq)
        for raw, (_, _, seq) in expected.items():
            self.report.found(f"row {UUID(bytes=raw)}: deleted (sealed in seal #{seq})")

    def _check_row(
        self, row: tuple[Any, ...], expected: dict[bytes, tuple[int, bytes, int]], seal: int
    ) -> None:
        values = row[3:]
        event_id = values[0]
        self.report.rows += 1
        sealed = expected.pop(event_id.bytes, None)
        if sealed is None:
            self.report.found(f"row {event_id}: inserted (in seal #{seal}'s range, not in it)")
            return
        flag, digest, sealed_in = sealed
        data = canonical(values)
        if hashlib.sha256(data).digest() != digest:
            self.report.found(f"row {event_id}: altered (differs from seal #{sealed_in})")
        elif sealed_in != seal:
            self.report.found(f"row {event_id}: altered (moved from seal #{sealed_in} to #{seal})")
        elif flag == UNSIGNED:
            self.report.unsigned += 1
        elif flag == AUTHORED and self.event_keys and (why := self.event_keys.check(data, row[1])):
            self.report.found(f"row {event_id}: inserted: no valid authorship ({why})")

    async def _check_unsealed(self, start: int) -> None:
        """Rows no seal covers yet: fine while young, inserted behind our back when old."""
        cutoff = datetime.now(UTC) - self.grace
        async for row in await self.conn.execute(_ROWS, (start, _NO_END)):
            event_id, recorded_at = row[3], row[2]
            self.report.rows += 1
            if recorded_at < cutoff:
                age = int((datetime.now(UTC) - recorded_at).total_seconds())
                self.report.found(f"row {event_id}: inserted (unsealed, stored {age}s ago)")
                continue
            self.report.pending += 1
            if self.event_keys and (why := self.event_keys.check(canonical(row[3:]), row[1])):
                self.report.found(f"row {event_id}: inserted: no valid authorship ({why})")


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


# -- command line ----------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([smhd])$")


def since_arg(text: str) -> datetime:
    """``--since``: an ISO 8601 time with offset, or a duration back from now (``90m``, ``2d``)."""
    if match := _DURATION.match(text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(match[1])})
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give the offset, e.g. 2026-11-28T10:00:00+00:00")
    return moment


def head_arg(text: str) -> str:
    if not re.fullmatch(r"\d+:[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError("expected <seq>:<64 hex digits>, as a seal log line says")
    return text


async def verify_once(
    settings: VerifySettings,
    since: datetime | None,
    head: str | None,
    grace: timedelta,
) -> Report:
    """Connect with the read-only login and check; raises on anything that stops the check."""
    seal_keys = SealKeys.parse(settings.seal_public_keys)
    event_keys = EventKeys.parse(settings.event_keys) if settings.event_keys else None
    url = settings.reader_database_url or settings.database_url
    if not url:
        raise ValueError("set AUDIT_READER_DATABASE_URL (the read-only login)")
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as conn:
        await conn.set_read_only(True)
        set_json_loads(orjson.loads, conn)
        async with conn.transaction():  # one snapshot for the whole check
            return await Verifier(conn, seal_keys, event_keys, grace).run(since, head)


VERIFY_OK = Gauge("audit_verify_ok", "1 if the last verification found the log intact")
VERIFY_FINDINGS = Gauge("audit_verify_findings", "Problems the last verification found")
VERIFY_UNSIGNED = Gauge("audit_verify_unsigned_rows", "Sealed rows without authorship")
VERIFY_LAST = Gauge("audit_verify_last_run_timestamp_seconds", "When the last check finished")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit-verify", description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=since_arg, help="check rows of seals made since then")
    parser.add_argument("--head", type=head_arg, help="a seal head recorded earlier (seq:hash)")
    parser.add_argument(
        "--grace", type=float, default=60.0, help="seconds a row may wait for its seal"
    )
    parser.add_argument("--every", type=float, help="keep running: check every N seconds")
    parser.add_argument("--metrics-port", type=int, default=9102, help="with --every")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = VerifySettings()
    grace = timedelta(seconds=args.grace)
    if args.every is None:
        sys.exit(_check(settings, args.since, args.head, grace))
    start_http_server(args.metrics_port)
    head = args.head
    while True:  # each run pins the head the previous one saw
        _check(settings, args.since, head, grace)
        head = _LAST_HEAD[0] or head
        time.sleep(args.every)


_LAST_HEAD = [""]


def _check(
    settings: VerifySettings, since: datetime | None, head: str | None, grace: timedelta
) -> int:
    try:
        report = asyncio.run(verify_once(settings, since, head, grace))
    except (psycopg.Error, OSError, ValueError) as exc:
        print(f"could not check: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        VERIFY_OK.set(0)
        return 2
    print(report.summary(), flush=True)
    VERIFY_OK.set(0 if report.findings else 1)
    VERIFY_FINDINGS.set(len(report.findings))
    VERIFY_UNSIGNED.set(report.unsigned)
    VERIFY_LAST.set_to_current_time()
    _LAST_HEAD[0] = report.head
    return 1 if report.findings else 0
