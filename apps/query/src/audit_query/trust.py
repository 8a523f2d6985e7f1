"""What the chain tells readers: what ``sealed: true`` means, and what retention removed.

``sealed: true``: the row is covered by a seal whose signature checks with the
seals' public keys (``AUDIT_SEAL_PUBLIC_KEYS``) — not merely by the newest row of
``audit_seals``, which the writer login could forge (a fake seal claiming every transaction to
come would otherwise mark every row sealed).

The head is read with every answer (one row); its signature is checked once per new head.
Without keys the service trusts the newest seal as it is, and says so at start.
"""

import logging
from typing import Any

import psycopg

from audit_events.cuts import Cut
from audit_events.seals import LOOK_BACK, NEWEST_SEALS, SEAL_COLUMNS, SealKeys, seal_of

log = logging.getLogger("audit.query.trust")

_NEWEST_CUT = "SELECT max(seq) FROM audit_seals WHERE kind = 'cut'"
_CUTS = f"SELECT {SEAL_COLUMNS} FROM audit_seals WHERE kind = 'cut' ORDER BY seq"  # noqa: S608
_RETAINED_FROM = "SELECT min(lo) FROM audit_partitions"


class SealTrust:
    """The transaction id below which rows are covered by a seal that checks."""

    def __init__(self, keys: SealKeys | None) -> None:
        self.keys = keys
        self._head: tuple[Any, ...] | None = None
        self._upto = 0
        self._cuts: tuple[int | None, list[tuple[int, Cut]]] = (None, [])
        if keys is None:
            log.warning("AUDIT_SEAL_PUBLIC_KEYS not set: 'sealed' trusts audit_seals unchecked")

    async def sealed_upto(self, conn: psycopg.AsyncConnection[Any]) -> int:
        head = await (await conn.execute(NEWEST_SEALS, (1,))).fetchone()
        if head is None:
            return 0
        if head != self._head:
            self._head, self._upto = head, await self._checked_upto(conn, head)
        return self._upto

    async def _checked_upto(self, conn: psycopg.AsyncConnection[Any], head: Any) -> int:
        if self.keys is None:
            return int(seal_of(head).upto_tx)
        rows = await (await conn.execute(NEWEST_SEALS, (LOOK_BACK,))).fetchall()
        for row in rows:
            seal = seal_of(row)
            if self.keys.check(seal) is None:
                return int(seal.upto_tx)
            log.error("seal #%d does not check; rows it claims are not reported sealed", seal.seq)
        return 0

    async def cuts(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, Cut]]:
        """Retention's cuts whose seals check, ``(seal number, cut)``, oldest first (read again
        only when a new one appears; a forged one is ignored, and ``audit-verify`` names it)."""
        newest = (await (await conn.execute(_NEWEST_CUT)).fetchone() or [None])[0]
        if newest != self._cuts[0]:
            found = []
            for row in await (await conn.execute(_CUTS)).fetchall():
                seal = seal_of(row)
                if self.keys is None or self.keys.check(seal) is None:
                    try:
                        found.append((seal.seq, Cut.parse(seal.body)))
                    except ValueError as exc:  # audit-verify names it; readers go on
                        log.error("seal #%d: %s", seal.seq, exc)
            self._cuts = (newest, found)
        return self._cuts[1]

    async def retained_from(self, conn: psycopg.AsyncConnection[Any]) -> Any:
        """The start of the oldest partition still there, once retention removed any (else
        ``None``: nothing was ever removed)."""
        if not await self.cuts(conn):
            return None
        return (await (await conn.execute(_RETAINED_FROM)).fetchone() or [None])[0]
