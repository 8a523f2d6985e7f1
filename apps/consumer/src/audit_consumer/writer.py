"""The batch writer: store a batch of audit rows in one transaction, isolating rows PostgreSQL
rejects, and report what PostgreSQL really inserted.

Fast path: the batch is formatted once as COPY text and copied straight into ``audit_events``
in one statement (autocommit: the COPY is its own transaction, one round trip per batch). Each
row carries the SHA-256 of its canonical bytes (``digest``), which the sealer later seals
(``sealer.py``); nothing else has to commit with it.

Why nothing is doubled: ``id`` is the primary key. If any row of the batch is already stored
(a redelivery after a crash between commit and ack, or the same event published twice), the
COPY fails as a whole with a unique violation, nothing of it is kept, and the batch is written
again the slow way: COPY into a temp table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``,
which skips exactly the rows already there (and records their sequences as duplicates).
Why a loss is seen: the fast path compares the count PostgreSQL reports for the COPY with the
rows sent; a shortfall (a trigger that silently dropped rows) is reported as ``missing``.
Why nothing is lost: the caller acks a message only after :meth:`BatchWriter.write` returned,
i.e. after COMMIT; any error before that leaves every message unacked in the stream.
"""

import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from psycopg import sql

from audit_consumer.bounds import no_partition
from audit_events import COLUMNS, Row
from audit_events.model import storable

ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
"""SQLSTATE classes 22 and 23: the row itself is unacceptable, retrying cannot help.
Everything else (connection lost, missing table, permissions) is the deployment's problem and
is retried, never dead-lettered."""

_COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
_COPY = sql.SQL("COPY audit_events ({}) FROM STDIN").format(_COLS)
_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS audit_stage"
    " (LIKE audit_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = sql.SQL("COPY audit_stage ({}) FROM STDIN").format(_COLS)
# No conflict target: the key is (id, occurred_at) since the table is partitioned (0006), (id)
# before; consumers of this version work with both. A row that inserts nothing repeats an
# event already stored: its sequence is recorded as a duplicate in the same transaction, so the
# broker's numbering stays accounted for (a trigger that drops rows shows up as a duplicate of
# an event that does not exist: audit-verify names it).
_INSERT = sql.SQL(
    "WITH ins AS (INSERT INTO audit_events ({cols}) SELECT {cols} FROM audit_stage"
    " ON CONFLICT DO NOTHING RETURNING id),"
    " dup AS (INSERT INTO audit_duplicates (epoch, stream_seq, event_id)"
    " SELECT s.epoch, s.stream_seq, s.id FROM audit_stage s"
    " WHERE s.epoch IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = s.id)"
    " ON CONFLICT DO NOTHING)"
    " SELECT count(*) FROM ins"
).format(cols=_COLS)

TRACER = trace.get_tracer("audit_consumer")
Line = tuple[int, bytes]  # (index in the batch, one row as COPY text)


@dataclass
class WriteResult:
    """What happened to one batch: rows inserted, duplicates skipped, rows refused (with why)."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)
    missing: int = 0  # accepted by PostgreSQL, yet not inserted (a trigger dropped them)


class BatchWriter:
    """Writes batches over one connection (see the module docstring for the two paths)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._staged = False

    @classmethod
    async def connect(cls, url: str) -> "BatchWriter":
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def write(self, rows: Sequence[Row]) -> WriteResult:
        """Store ``rows``; a row PostgreSQL rejects is isolated by splitting the batch in
        halves, so its neighbours are still stored. Other errors propagate untouched."""
        result = WriteResult()
        lines: list[Line] = []
        for i, values in enumerate(rows):
            try:
                lines.append((i, copy_line(values)))
            except ValueError as exc:  # refused before sending: no round trip, no bisection
                result.rejected.append((i, str(exc)))
        await self._write(lines, result, dedupe=False)
        result.rejected.sort()
        return result

    async def _write(self, lines: list[Line], result: WriteResult, dedupe: bool) -> None:
        if not lines:
            return
        data = b"".join(line for _, line in lines)
        try:
            inserted = await (self._insert_new if dedupe else self._copy)(data, len(lines))
        except ROW_ERRORS as exc:
            if no_partition(exc):  # not the row's fault (bounds.py): the caller retries
                raise
            if isinstance(exc, psycopg.errors.UniqueViolation) and not dedupe:
                await self._write(lines, result, dedupe=True)  # some rows are already stored
            elif len(lines) == 1:
                result.rejected.append((lines[0][0], _describe(exc)))
            else:
                middle = len(lines) // 2
                await self._write(lines[:middle], result, dedupe)
                await self._write(lines[middle:], result, dedupe)
            return
        result.inserted += inserted
        if dedupe:
            result.duplicates += len(lines) - inserted
        else:
            result.missing += len(lines) - inserted

    async def _copy(self, data: bytes, count: int) -> int:
        """All rows are new (the usual case): one COPY, committed when it ends. What PostgreSQL
        says it inserted is what counts, not what was sent (:meth:`_write` compares)."""
        with _db_span("COPY", count):  # the psycopg instrumentation does not see COPY
            async with self.conn.cursor() as cur:
                async with cur.copy(_COPY) as copy:
                    await copy.write(data)
                return cur.rowcount

    async def _insert_new(self, data: bytes, count: int) -> int:
        """Some rows may be stored already: stage them, insert only the new ones."""
        if not self._staged:
            await self.conn.execute(_STAGE)
            self._staged = True
        async with self.conn.transaction(), self.conn.cursor() as cur:
            with _db_span("COPY", count, "audit_stage"):
                async with cur.copy(_COPY_STAGE) as copy:
                    await copy.write(data)
            await cur.execute(_INSERT)
            inserted = await cur.fetchone()
            return int(inserted[0]) if inserted else 0


_LETTERS = (
    "INSERT INTO audit_dead_letters (epoch, stream_seq, subject, kind, reason, digest)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


async def record_letters(
    writer: "BatchWriter", epoch: int, letters: Sequence[tuple[int, str, str, str, bytes]]
) -> int:
    """The durable record of dead letters ``(stream_seq, subject, kind, reason, sha256 of the
    bytes)``, written before they are acked: the DLQ stream's own limits never erase the
    accounting. A redelivered letter is recorded once (the key is its sequence)."""
    async with writer.conn.transaction(), writer.conn.cursor() as cur:
        await cur.executemany(
            _LETTERS, [(epoch, seq, subject, kind, storable(reason), digest)
                       for seq, subject, kind, reason, digest in letters]
        )  # fmt: skip
    return len(letters)


class WriterPool:
    """One :class:`BatchWriter` per batch PostgreSQL may be storing at once
    (``AUDIT_DB_CONNECTIONS``). A slot connects on first use and again after :meth:`discard`."""

    def __init__(self, size: int, connect: Callable[[], Awaitable[BatchWriter]]) -> None:
        self.size = size
        self._connect = connect
        self._slots: list[BatchWriter | None] = [None] * size

    def connected(self, slot: int) -> bool:
        return self._slots[slot] is not None

    async def get(self, slot: int) -> BatchWriter:
        """The slot's writer, connecting it if needed (raises what connecting raises)."""
        writer = self._slots[slot]
        if writer is None:
            writer = self._slots[slot] = await self._connect()
        return writer

    async def discard(self, slot: int) -> None:
        """Drop a slot's connection after an error; the next :meth:`get` reconnects."""
        writer, self._slots[slot] = self._slots[slot], None
        if writer is not None:
            await writer.close()

    async def close(self) -> None:
        for slot in range(self.size):
            await self.discard(slot)


# -- COPY text format ------------------------------------------------------------------------
# One join per row instead of psycopg's per-value dumpers: the formatting was the largest cost
# the consumer had after decoding. Only the types ``audit_events.row()`` produces are handled.

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    if value.isprintable() and "\\" not in value:  # nearly always: nothing to escape
        return value
    if "\x00" in value:
        raise ValueError("22021 PostgreSQL text cannot contain NUL (0x00) characters")
    return value.translate(_ESCAPES)


def _json(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: the standard library copes
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("\\", "\\\\")  # JSON has no raw control characters, only escapes


_FORMATS: dict[type, Callable[[Any], str]] = {
    str: _text,
    int: str,
    UUID: str,
    datetime: datetime.isoformat,
    dict: _json,
    bytes: lambda value: "\\\\x" + value.hex(),  # bytea hex input, its backslash escaped
}


def copy_line(values: Sequence[Any]) -> bytes:
    """One row in COPY text format (tab-separated, ``\\N`` for NULL, newline-terminated).
    Raises ValueError for a value PostgreSQL's text could not hold."""
    fields = ["\\N" if v is None else _FORMATS[type(v)](v) for v in values]
    try:
        return ("\t".join(fields) + "\n").encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from "\ud800" in the JSON
        raise ValueError("22021 text is not valid UTF-8 (lone surrogate)") from None


def _db_span(
    operation: str, rows: int, table: str = "audit_events"
) -> AbstractContextManager[trace.Span]:
    """A client span like the psycopg instrumentation's, for the statements it cannot see."""
    return TRACER.start_as_current_span(
        f"{operation} {table}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system": "postgresql",
            "db.operation.name": operation,
            "db.collection.name": table,
            "db.operation.batch.size": rows,
        },
    )


def _describe(exc: psycopg.Error) -> str:
    """``SQLSTATE message`` on one line, e.g. ``22P05 unsupported Unicode escape sequence``."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).splitlines()[0]
    return f"{diag.sqlstate or '?'} {message}"
