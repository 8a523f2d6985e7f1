"""The repository: store a batch of audit rows in one transaction, isolating rows PostgreSQL
rejects.

Why nothing is doubled: ``id`` is the primary key and every insert is ``ON CONFLICT (id) DO
NOTHING``, so a redelivered or re-published event is absorbed by the database itself.
Why nothing is lost: the caller acks a message only after :meth:`BatchWriter.write` returned,
i.e. after COMMIT; any error before that leaves every message unacked in the stream.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from audit_events import COLUMNS

ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
"""SQLSTATE classes 22 and 23: the row itself is unacceptable, retrying cannot help.
Everything else (connection lost, missing table, permissions) is the deployment's problem and
is retried, never dead-lettered."""

_COLS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
_STAGE = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS audit_stage"
    " (LIKE audit_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COPY = sql.SQL("COPY audit_stage ({}) FROM STDIN").format(_COLS)
_INSERT = sql.SQL(
    "INSERT INTO audit_events ({cols}) SELECT {cols} FROM audit_stage ON CONFLICT (id) DO NOTHING"
).format(cols=_COLS)
_METADATA = COLUMNS.index("metadata")


@dataclass
class WriteResult:
    """What happened to one batch: rows inserted, duplicates skipped, rows refused (with why)."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)


class BatchWriter:
    """Writes batches over one connection: COPY into a temp table, one set-based INSERT."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._staged = False

    @classmethod
    async def connect(cls, url: str) -> "BatchWriter":
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        """Store ``rows``; a row PostgreSQL rejects is isolated by splitting the batch in
        halves, so its neighbours are still stored. Other errors propagate untouched."""
        result = WriteResult()
        await self._write(list(enumerate(rows)), result)
        return result

    async def _write(self, rows: list[tuple[int, tuple[Any, ...]]], result: WriteResult) -> None:
        if not rows:
            return
        try:
            inserted = await self._insert([r for _, r in rows])
        except ROW_ERRORS as exc:
            if len(rows) == 1:
                result.rejected.append((rows[0][0], _describe(exc)))
                return
            middle = len(rows) // 2
            await self._write(rows[:middle], result)
            await self._write(rows[middle:], result)
            return
        result.inserted += inserted
        result.duplicates += len(rows) - inserted

    async def _insert(self, rows: list[tuple[Any, ...]]) -> int:
        if not self._staged:
            await self.conn.execute(_STAGE)
            self._staged = True
        async with self.conn.transaction(), self.conn.cursor() as cur:
            async with cur.copy(_COPY) as copy:
                for row in rows:
                    values = list(row)
                    values[_METADATA] = Jsonb(values[_METADATA])
                    await copy.write_row(values)
            await cur.execute(_INSERT)
            return cur.rowcount


def _describe(exc: psycopg.Error) -> str:
    """``SQLSTATE message`` on one line, e.g. ``22P05 unsupported Unicode escape sequence``."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).splitlines()[0]
    return f"{diag.sqlstate or '?'} {message}"
