"""Sealing, inside the consumers: every ``AUDIT_SEAL_INTERVAL_SECONDS`` one of them seals the
batches committed since the last seal (``audit_events/seals.py`` says what a seal is).

Why every row is sealed exactly once, with any number of consumers, crashes, out-of-order
commits and redeliveries:

- a round covers the rows (and dead-letter and duplicate records) whose ``tx_id`` lies in
  ``[previous round's upto_tx, horizon)``, with one seal per partition the rows are in (and
  one, scope ``''``, for the records), so retention can remove a partition with whole seals
  (``audit-retention``); the horizon (``audit_events/horizon.py``) is read in the
  same REPEATABLE READ snapshot as those rows, so no row can join that range later, and the next
  round starts where this one ends;
- a redelivered message inserts no row (``writer.py``), so there is nothing twice to seal;
- one sealer at a time: a transaction-scoped advisory lock (a consumer that cannot take it skips
  this round), and ``seq`` is the primary key, so even a sealer that read a stale chain cannot
  add a second seal with the same number: its insert fails, nothing is written;
- a crash before COMMIT leaves no seal; the next round covers the same range.

Why sealing cannot be stopped quietly: the sealer extends only a head it can check — signed by a
key it trusts, claiming no transaction beyond the current horizon. A head that fails (a seal the
writer login forged, say with a huge ``upto_tx``) stops sealing *loudly*: ``seal_chain_ok`` 0,
an error line, the ``AuditSealChainBroken`` alert; the seal lag is measured from the newest seal
that checks, so it grows as it should. When the horizon is held back, the session holding it is
named (log line and ``horizon_holder_age_seconds``).
"""

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import IsolationLevel

from audit_consumer import metrics
from audit_consumer.bounds import Bounds
from audit_consumer.cutting import pending_cuts
from audit_events.horizon import horizon
from audit_events.seals import (
    DUPLICATE_HASH,
    ENTRY_BYTES,
    GENESIS,
    LETTER_HASH,
    LOOK_BACK,
    NEWEST_SEALS,
    RECORD_KEY,
    ROW_BINDING,
    Floor,
    Seal,
    SealKey,
    SealKeys,
    seal_of,
)

log = logging.getLogger("audit.sealer")

LOCK = 0x61756469745F7365  # "audit_se": one sealer at a time, per database
HOLDER_AFTER_SECONDS = 10.0  # name the session holding the horizon once sealing lags this much
_RANGE = "tx_id >= %(start)s::text::xid8 AND tx_id < %(upto)s::text::xid8"
_ENTRIES = (  # per scope (a partition; '' for records): flag, key, hash of each, in order
    "SELECT scope, string_agg(entry, ''::bytea ORDER BY tx, entry) FROM ("  # noqa: S608
    " SELECT CASE WHEN tableoid = 'audit_events'::regclass THEN '' ELSE tableoid::regclass::text"
    " END AS scope, tx_id AS tx, CASE WHEN signature IS NULL"
    " THEN '\\x01'::bytea ELSE '\\x00'::bytea END"
    f" || uuid_send(id) || sha256(digest || {ROW_BINDING}) AS entry"
    f" FROM audit_events WHERE {_RANGE}"
    f" UNION ALL SELECT '', tx_id, '\\x02'::bytea || {RECORD_KEY} || {LETTER_HASH}"
    f" FROM audit_dead_letters WHERE {_RANGE}"
    f" UNION ALL SELECT '', tx_id, '\\x03'::bytea || {RECORD_KEY} || {DUPLICATE_HASH}"
    f" FROM audit_duplicates WHERE {_RANGE}) e GROUP BY scope ORDER BY scope"
)
_LAG = (
    "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(recorded_at)), 0)::float8"
    " FROM audit_events WHERE tx_id >= %s::text::xid8"
)
_HOLDER = (  # the oldest transaction with an id, anywhere on the server
    "SELECT pid, coalesce(usename, '?'), coalesce(datname, '?'), coalesce(application_name, ''),"
    " extract(epoch FROM clock_timestamp() - xact_start)::float8 FROM pg_stat_activity"
    " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
    " ORDER BY age(backend_xid) DESC LIMIT 1"
)
_INSERT = (
    "INSERT INTO audit_seals (seq, from_tx, upto_tx, row_count, rows_digest, prev_hash,"
    " sealed_at, key_id, signature, hash, entries, version, kind, scope, floor_epoch,"
    " floor_first, floor_seq, body) VALUES (%s, %s::text::xid8, %s::text::xid8, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class Sealer:
    """Seals from one consumer process, over its own connection (the writer login).
    ``floor`` tells it the ack floor the consumer last read (``None`` until it knows one)."""

    def __init__(
        self,
        url: str,
        key: SealKey,
        interval: float,
        trusted: SealKeys | None = None,
        floor: Callable[[], Floor | None] = lambda: None,
        bounds: Bounds | None = None,
    ) -> None:
        self.url, self.key, self.interval, self.floor = url, key, interval, floor
        self.bounds = bounds or Bounds()
        self.trusted = trusted or SealKeys([key.public_text()])
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self._broken: str | None = None  # why the head cannot be extended (said once)
        self._extend_failing = False

    async def run(self) -> None:
        """Keep partitions ahead and seal, every ``interval`` seconds until cancelled; errors
        are logged and retried."""
        failing = False
        while True:
            await self.extend()
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

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None:
            self.conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=5
            )
            await self.conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        return self.conn

    async def extend(self) -> None:
        """Partitions up to ``now + ahead`` (``bounds.py``), in a transaction of its own: the
        writer consumers learn the bounds from it. A failure (a lock not granted within the
        function's ``lock_timeout``, an outage) never stops sealing: said once, retried."""
        try:
            await self.bounds.extend(await self._connection())
        except Exception as exc:
            if not self._extend_failing:
                log.warning("partitions not extended (will retry): %s", " ".join(str(exc).split()))
            self._extend_failing = True
            await self.close()
            return
        if self._extend_failing:
            log.info("partitions extended again")
        self._extend_failing = False

    async def seal(self) -> Seal | None:
        """One round: seal what is final if no other consumer is sealing; the newest seal
        written, if any."""
        conn = await self._connection()
        try:
            async with conn.transaction():
                written, lag_from = await self._seal(conn)
                lag = await (await conn.execute(_LAG, (lag_from,))).fetchone()
                lag_seconds = lag[0] if lag else 0.0
                if lag_seconds >= HOLDER_AFTER_SECONDS:
                    await self._name_holder(conn)
                else:
                    metrics.HORIZON_HOLDER.clear()
        except psycopg.errors.UniqueViolation:  # another sealer was faster: it sealed this range
            return None
        metrics.SEAL_LAG.set(lag_seconds)
        for seal in written:
            metrics.SEALS.inc()
            metrics.SEALED_ROWS.inc(seal.row_count)
            metrics.SEAL_HEAD.info({"seq": str(seal.seq), "hash": seal.hash.hex()})
            what = f"{seal.row_count} entries of {seal.scope or 'records'}"
            log.info("sealed #%d (%s): %s; head %s", seal.seq, seal.kind, what, seal.head)
        return written[-1] if written else None

    async def _seal(self, conn: psycopg.AsyncConnection[Any]) -> tuple[list[Seal], int]:
        """Inside the REPEATABLE READ transaction: the seals written, and the tx id from which
        rows are still unsealed."""
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK,))
        ).fetchone()
        upto = await horizon(conn)
        found = await (await conn.execute(NEWEST_SEALS, (1,))).fetchone()
        head = seal_of(found) if found else None
        if head is not None and (why := self._why_not(head, upto)):
            self._chain(f"seal #{head.seq} cannot be extended: {why}")
            older = await (await conn.execute(NEWEST_SEALS, (LOOK_BACK,))).fetchall()
            valid = next((s for s in map(seal_of, older) if self._why_not(s, upto) is None), None)
            return [], valid.upto_tx if valid else 0  # the lag counts from the last good seal
        self._chain(None)
        seq, start, prev = (head.seq, head.upto_tx, head.hash) if head else (0, 0, GENESIS)
        if not (locked and locked[0]):
            return [], start
        params = {"start": start, "upto": upto}
        scoped = [(scope, bytes(blob)) for scope, blob in await (
            await conn.execute(_ENTRIES, params)).fetchall()]  # fmt: skip
        floor = self.floor()
        new_floor = floor is not None and (head is None or head.floor != floor)
        written: list[Seal] = []

        async def link(entries: bytes, **fields: Any) -> None:
            """The next seal of the chain, signed and inserted."""
            last = written[-1] if written else None
            seal = Seal(
                seq=(last.seq if last else seq) + 1,
                prev_hash=last.hash if last else prev,
                sealed_at=datetime.now(UTC),
                key_id=self.key.id,
                floor=floor,
                **fields,
            )
            written.append(await self._insert(conn, seal, entries))

        end = max(upto, start)
        for scope, entries in scoped or ([("", b"")] if new_floor else []):  # a seal per scope
            count, digest = len(entries) // ENTRY_BYTES, hashlib.sha256(entries).digest()
            await link(entries, from_tx=start, upto_tx=end, row_count=count,
                       rows_digest=digest, scope=scope)  # fmt: skip
        end = end if written else start  # a cut covers no transactions: it follows the head
        for cut in await pending_cuts(conn, end):  # retention's, after this round's rows
            body = cut.body()
            await link(b"", from_tx=end, upto_tx=end, row_count=cut.rows, kind="cut",
                       rows_digest=hashlib.sha256(body).digest(), scope=cut.partition,
                       body=body)  # fmt: skip
        return written, end

    async def _insert(self, conn: psycopg.AsyncConnection[Any], seal: Seal, entries: bytes) -> Seal:
        """Sign ``seal`` and append it to the chain."""
        seal = self.key.sign(seal)
        f = seal.floor
        await conn.execute(
            _INSERT,
            (
                seal.seq, seal.from_tx, seal.upto_tx, seal.row_count, seal.rows_digest,
                seal.prev_hash, seal.sealed_at, seal.key_id, seal.signature, seal.hash, entries,
                seal.version, seal.kind, seal.scope, f and f.epoch, f and f.first, f and f.seq,
                seal.body,
            ),
        )  # fmt: skip
        return seal

    def _why_not(self, seal: Seal, upto: int) -> str | None:
        """Why ``seal`` is no head to extend, or None: a trusted key signed it, and it claims no
        transaction that cannot have ended yet."""
        if why := self.trusted.check(seal):
            return why
        if seal.upto_tx > upto:
            return f"it claims transactions up to {seal.upto_tx}, beyond the horizon {upto}"
        return None

    def _chain(self, why: str | None) -> None:
        """Say once when sealing stops, and when it works again."""
        if why and why != self._broken:
            log.error("sealing stopped: %s (remove that seal as the owner: README, Integrity)", why)
        elif why is None and self._broken:
            log.info("the seal chain can be extended again")
        self._broken = why
        metrics.SEAL_CHAIN_OK.set(0 if why else 1)

    async def _name_holder(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The session whose transaction holds the horizon back, as far as this login may see
        (another database's sessions on a shared server included)."""
        row = await (await conn.execute(_HOLDER)).fetchone()
        metrics.HORIZON_HOLDER.clear()
        if row is None:
            return
        pid, user, database, application, age = row
        metrics.HORIZON_HOLDER.labels(str(pid), user, database, application).set(age or 0.0)
        log.warning(
            "sealing and the feed are held back by pid %s (user %s, database %s, application %r),"
            " in a transaction for %.0f s",
            pid, user, database, application, age or 0.0,
        )  # fmt: skip
