"""The commit horizon: which rows no still-running transaction can join any more.

Rows commit out of order: two consumers (or two connections of one) may commit batch B before
batch A although A started first. Every row therefore records the id of the transaction that
wrote it (``tx_id``, a 64-bit ``xid8`` set by the database, never by the writer), and
``pg_snapshot_xmin(pg_current_snapshot())`` is the oldest transaction still running: every
transaction with a smaller id has finished, so the set of rows with ``tx_id`` below that horizon
is final — nothing can be added to it later. Sealing covers ``[previous horizon, horizon)`` each
time; a gap-free feed hands out rows in ``(tx_id, id)`` order up to it.

Read the horizon and the rows below it in one REPEATABLE READ transaction, so both come from the
same snapshot. A transaction left open (say, an idle session holding an xid) holds the horizon
back: sealing waits for it, the sealing-lag metric shows it, nothing is skipped.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the API has no database driver; only the processes that read rows call this
    import psycopg

HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


async def horizon(conn: "psycopg.AsyncConnection[Any]") -> int:
    """The current horizon (call inside a REPEATABLE READ transaction)."""
    cur = await conn.execute(HORIZON)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])
