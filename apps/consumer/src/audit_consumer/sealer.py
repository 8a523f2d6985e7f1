"""Sealing, inside the consumers: every ``AUDIT_SEAL_INTERVAL_SECONDS`` one of them seals the
batches committed since the last seal (``audit_events/seals.py`` says what a seal is).

Why every row is sealed exactly once, with any number of consumers, crashes, out-of-order
commits and redeliveries:

- a seal covers the rows whose ``tx_id`` lies in ``[previous seal's upto_tx, horizon)``; the
  horizon (``audit_events/horizon.py``) is read in the same REPEATABLE READ snapshot as those
  rows, so no row can join that range later, and the next seal starts where this one ends;
- a redelivered message inserts no row (``writer.py``), so there is nothing twice to seal;
- one sealer at a time: a transaction-scoped advisory lock (a consumer that cannot take it skips
  this round), and ``seq`` is the primary key, so even a sealer that read a stale chain cannot
  add a second seal with the same number: its insert fails, nothing is written;
- a crash before COMMIT leaves no seal; the next round covers the same range.
"""

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import IsolationLevel

from audit_consumer import metrics
from audit_events.horizon import horizon
from audit_events.seals import ENTRY_BYTES, GENESIS, Seal, SealKey

log = logging.getLogger("audit.sealer")

LOCK = 0x61756469745F7365  # "audit_se": one sealer at a time, per database
_LAST = "SELECT seq, upto_tx::text::bigint, hash FROM audit_seals ORDER BY seq DESC LIMIT 1"
_ENTRIES = (  # flag, id, digest of each row, in (tx_id, id) order, built by PostgreSQL
    "SELECT string_agg(CASE WHEN signature IS NULL THEN '\\x01'::bytea ELSE '\\x00'::bytea END"
    " || uuid_send(id) || digest, ''::bytea ORDER BY tx_id, id) FROM audit_events"
    " WHERE tx_id >= %s::text::xid8 AND tx_id < %s::text::xid8"
)
_LAG = (
    "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(recorded_at)), 0)::float8"
    " FROM audit_events WHERE tx_id >= %s::text::xid8"
)
_INSERT = (
    "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
    " sealed_at, key_id, signature, hash, entries)"
    " VALUES (%s, %s::text::xid8, %s::text::xid8, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class Sealer:
    """Seals from one consumer process, over its own connection (the writer login)."""

    def __init__(self, url: str, key: SealKey, interval: float) -> None:
        self.url, self.key, self.interval = url, key, interval
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self) -> None:
        """Seal every ``interval`` seconds until cancelled; errors are logged and retried."""
        failing = False
        while True:
            try:
                await self.seal()
                if failing:
                    log.info("sealing works again")
                failing = False
            except Exception as exc:  # an outage, or a bug: never stop sealing for good
                if not failing:  # once per outage, not every round
                    log.warning("sealing failed (will retry): %s", " ".join(str(exc).split()))
                failing = True
                await self.close()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()

    async def seal(self) -> Seal | None:
        """One round: seal what is final if no other consumer is sealing; the new seal, if any."""
        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5
            )
            await self.conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        conn = self.conn
        try:
            async with conn.transaction():
                seal, lag_from = await self._seal(conn)
                lag = await (await conn.execute(_LAG, (lag_from,))).fetchone()
        except psycopg.errors.UniqueViolation:  # another sealer was faster: it sealed this range
            return None
        metrics.SEAL_LAG.set(lag[0] if lag else 0.0)
        if seal is not None:
            metrics.SEALS.inc()
            metrics.SEALED_ROWS.inc(seal.row_count)
            metrics.SEAL_HEAD.info({"seq": str(seal.seq), "hash": seal.hash.hex()})
            log.info("sealed #%d: %d rows; head %s", seal.seq, seal.row_count, seal.head)
        return seal

    async def _seal(self, conn: psycopg.AsyncConnection[Any]) -> tuple[Seal | None, int]:
        """Inside the REPEATABLE READ transaction: the seal written (if any), and the tx id from
        which rows are still unsealed."""
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK,))
        ).fetchone()
        last = await (await conn.execute(_LAST)).fetchone()
        seq, start, prev = (last[0], last[1], bytes(last[2])) if last else (0, 0, GENESIS)
        if not (locked and locked[0]):
            return None, start
        upto = await horizon(conn)
        found = await (await conn.execute(_ENTRIES, (start, upto))).fetchone()
        entries = bytes(found[0] or b"") if found else b""
        if not entries:
            return None, start
        seal = self.key.sign(
            Seal(
                seq=seq + 1,
                from_tx=start,
                upto_tx=upto,
                row_count=len(entries) // ENTRY_BYTES,
                rows_digest=hashlib.sha256(entries).digest(),
                prev_hash=prev,
                sealed_at=datetime.now(UTC),
                key_id=self.key.id,
            )
        )
        await conn.execute(
            _INSERT,
            (
                seal.seq,
                seal.from_tx,
                seal.upto_tx,
                seal.row_count,
                seal.rows_digest,
                seal.prev_hash,
                seal.sealed_at,
                seal.key_id,
                seal.signature,
                seal.hash,
                entries,
            ),
        )
        return seal, upto
