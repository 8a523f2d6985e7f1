"""What ``sealed: true`` means: the row is covered by a seal whose signature checks with the
seals' public keys (``AUDIT_SEAL_PUBLIC_KEYS``) — not merely by the newest row of
``audit_seals``, which the writer login could forge (a fake seal claiming every transaction to
come would otherwise mark every row sealed).

The head is read with every answer (one row); its signature is checked once per new head.
Without keys the service trusts the newest seal as it is, and says so at start.
"""

import logging
from typing import Any

import psycopg

from audit_events.seals import LOOK_BACK, NEWEST_SEALS, SealKeys, seal_of

log = logging.getLogger("audit.query.trust")


class SealTrust:
    """The transaction id below which rows are covered by a seal that checks."""

    def __init__(self, keys: SealKeys | None) -> None:
        self.keys = keys
        self._head: tuple[Any, ...] | None = None
        self._upto = 0
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
