"""Rows and records against their seals: each seal's entries (flag, key, hash) against what the
tables hold in its transaction range — a row altered, deleted, inserted or moved; a dead-letter
or duplicate record likewise; authorship with the producers' keys; an address stored with a
mask; and rows no seal covers yet (a ``tx_id`` no transaction can have had is named at once).
"""

import bisect
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from audit_events.authorship import EventKeys
from audit_events.model import EVENT_COLUMNS, STORED_EVENT, canonical, stored_values
from audit_events.seals import (
    AUTHORED,
    DUPLICATE,
    DUPLICATE_HASH,
    ENTRY_BYTES,
    LETTER,
    LETTER_HASH,
    RECORD_KEY,
    ROW_BINDING,
    UNSIGNED,
    Seal,
    bound,
    entries,
)
from audit_verify.report import Report

_ENTRIES = "SELECT seq, entries FROM audit_seals WHERE seq >= %s AND seq <= %s ORDER BY seq"
_ROWS = (
    f"SELECT tx_id::text::bigint, signature, recorded_at, {ROW_BINDING},"  # noqa: S608
    " masklen(source_ip) = CASE family(source_ip) WHEN 4 THEN 32 ELSE 128 END,"
    f" tableoid::regclass::text, {STORED_EVENT} FROM audit_events"
    " WHERE tx_id >= %s::text::xid8 AND tx_id < %s::text::xid8"
)
_SCOPE = 5  # the row's partition
_FIRST = 6  # the event's columns start here in a row of _ROWS
_RECORDS = (  # dead-letter and duplicate records of a tx range: key (hex), flag, hash
    f"SELECT encode({RECORD_KEY}, 'hex'), 2, {LETTER_HASH}, tx_id::text::bigint"  # noqa: S608
    " FROM audit_dead_letters WHERE tx_id >= %(start)s::text::xid8 AND tx_id < %(end)s::text::xid8"
    f" UNION ALL SELECT encode({RECORD_KEY}, 'hex'), 3, {DUPLICATE_HASH}, tx_id::text::bigint"
    " FROM audit_duplicates WHERE tx_id >= %(start)s::text::xid8 AND tx_id < %(end)s::text::xid8"
)
_NEXT_TX = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
_NO_END = 2**63 - 1


@dataclass(frozen=True)
class RowChecker:
    """Checks rows against seal entries (picklable: it runs in worker processes too)."""

    event_keys: EventKeys | None
    bad_seals: set[int]
    cut_seals: frozenset[int] = frozenset()  # seals whose rows a valid cut removed
    legacy: dict[int, int] = field(default_factory=dict)  # scope-'' seal -> rows cuts removed

    def check(self, conn: psycopg.Connection[Any], group: list[Seal]) -> Report:
        """The rows and records of consecutive seals against their entries (one query each)."""
        report = Report()
        start, end = group[0].from_tx, group[-1].upto_tx
        ends = [seal.upto_tx for seal in group]
        expected: dict[str, tuple[int, bytes, int]] = {}  # key hex -> (flag, hash, seal)
        listed = dict(conn.execute(_ENTRIES, (group[0].seq, group[-1].seq)).fetchall())
        for link in group:
            blob = bytes(listed.get(link.seq) or b"")
            if link.kind == "cut" or (link.seq in self.cut_seals and not blob):
                continue  # a cut lists no rows; a cut seal's entries went to the archive
            if link.seq not in self.bad_seals and (
                hashlib.sha256(blob).digest() != bytes(link.rows_digest)
                or len(blob) != link.row_count * ENTRY_BYTES
            ):
                report.findings.append(f"seal #{link.seq}: its list of rows was changed")
            for flag, entry_key, digest in entries(blob):
                expected[entry_key.hex] = (flag, digest, link.seq)
        found, keys, sha256 = report.findings.append, self.event_keys, hashlib.sha256
        versions = {seal.seq: seal.version for seal in group}
        # A round's seals share a range, one per partition (scope; '' before partitions).
        scoped = {(seal.upto_tx, seal.scope): seal.seq for seal in group if seal.kind == "rows"}
        rows = conn.execute(_ROWS, (start, end)).fetchall()
        report.rows = len(rows)
        for row in rows:
            values = _event_values(row)
            event_id = values[0]
            upto = group[bisect.bisect_right(ends, row[0])].upto_tx
            seq = scoped.get((upto, row[_SCOPE])) or scoped.get((upto, ""), 0)
            sealed = expected.pop(event_id.replace("-", ""), None)
            if sealed is None:
                found(f"row {event_id}: inserted (in seal #{seq}'s range, not in it)")
                continue
            flag, digest, sealed_in = sealed
            data = canonical(values)
            mine = sha256(data).digest()
            if versions[sealed_in] >= 2:
                mine = bound(mine, bytes(row[3]))
            if mine != digest:
                found(f"row {event_id}: altered (differs from seal #{sealed_in})")
            elif sealed_in != seq:
                found(f"row {event_id}: altered (moved from seal #{sealed_in} to #{seq})")
            elif row[4] is False:
                found(f"row {event_id}: altered (source_ip stored with a mask)")
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
        missing = Counter(seq for flag, _, seq in expected.values() if flag in (AUTHORED, UNSIGNED))
        for key, (flag, _, seq) in expected.items():
            if seq in self.cut_seals:
                continue  # removed by retention (a crash between the drop and the cleanup)
            if (
                seq in self.legacy
                and missing[seq] == self.legacy[seq]
                and flag not in (LETTER, DUPLICATE)
            ):
                continue  # as many of this seal's rows as cuts removed: theirs
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


_ACTION = _FIRST + EVENT_COLUMNS.index("action")


def _authorship(keys: EventKeys, data: bytes, row: tuple[Any, ...]) -> str | None:
    """Why the row's signature does not make it an authentic event, or ``None``: a key of
    ours signed exactly these bytes, and that key may sign the row's action."""
    return keys.check(data, row[1]) or keys.may_sign(row[1], row[_ACTION])


def _event_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A fetched row's :data:`EVENT_COLUMNS` values as the model holds them."""
    return stored_values(row[_FIRST:])


def _record_name(key: str, flag: int) -> str:
    """``dead letter epoch 3 seq 1041`` for a record's entry key (epoch, sequence)."""
    raw = bytes.fromhex(key)
    epoch, seq = int.from_bytes(raw[:4], "big", signed=True), int.from_bytes(raw[4:12], "big")
    kind = "dead letter" if flag == LETTER else "duplicate record"
    return f"{kind} of epoch {epoch}, stream seq {seq}"
