"""Which events the partitions can take (``migrations/versions/0006_partitions.py``), and
keeping partitions ahead of the clock.

An event whose ``occurred_at`` lies before the oldest open partition (removed or being removed
by retention) or further ahead of this consumer's clock than ``AUDIT_MAX_CLOCK_SKEW_SECONDS``
is *refused*: dead-lettered with the reason, its batch neighbours stored. Anything else that
finds no partition (the current day's was never created) is an outage, not the event's fault:
the batch is retried, unacked, and the sealer's loop creates the partition it lacks.

Why a refusal loses nothing: the event is not acked before it is in the dead-letter stream
and recorded in ``audit_dead_letters`` (its sequence stays accounted for); an operator can
create partitions for that range (``audit-retention partitions``) and replay it.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from audit_consumer import metrics
from audit_events import COLUMNS, Row
from audit_events.model import utc_text

log = logging.getLogger("audit.partitions")

_AT = COLUMNS.index("occurred_at")
_EXTEND = "SELECT oldest, newest FROM audit_partitions_extend(%s, %s)"
_UNHELD = (  # a legal hold keeps its partitions on purpose: not a retention job behind
    "SELECT min(p.lo) FROM audit_partitions p WHERE NOT EXISTS"
    " (SELECT FROM audit_active_holds h WHERE h.lo < p.hi AND h.hi > p.lo)"
)


@dataclass
class Bounds:
    """The partitions as the consumer last saw them; refreshed by :meth:`extend`."""

    skew: timedelta = timedelta(minutes=5)
    ahead: timedelta = timedelta(days=7)
    step: timedelta = timedelta(days=1)
    oldest: datetime | None = None  # the oldest open partition's start
    newest: datetime | None = None  # the newest partition's end

    def refusal(self, occurred_at: datetime, now: datetime) -> str | None:
        """Why no partition may take an event of ``occurred_at``, or ``None``."""
        if self.oldest is not None and occurred_at < self.oldest:
            return (
                f"occurred_at {utc_text(occurred_at)} is older than the oldest retained"
                f" partition, which starts {utc_text(self.oldest)}"
            )
        if occurred_at > now + self.skew:
            return (
                f"occurred_at {utc_text(occurred_at)} is more than"
                f" {int(self.skew.total_seconds())}s ahead of the consumer's clock"
            )
        return None

    def split(self, rows: Sequence[Row]) -> tuple[list[int], list[tuple[int, str]]]:
        """The indexes of the rows to write, and the refused ones with why."""
        now = datetime.now(UTC)
        kept: list[int] = []
        refused: list[tuple[int, str]] = []
        for i, row in enumerate(rows):
            if why := self.refusal(row[_AT], now):
                refused.append((i, why))
            else:
                kept.append(i)
        return kept, refused

    async def extend(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Create the partitions missing up to ``now + ahead`` (as the owner, through the one
        function the writer may call) and read the bounds again."""
        row = await (await conn.execute(_EXTEND, (self.ahead, self.step))).fetchone()
        if row is None:
            return
        self.oldest, self.newest = row
        if self.newest is not None:
            metrics.PARTITION_RUNWAY.set((self.newest - datetime.now(UTC)).total_seconds())
        if self.oldest is not None:
            metrics.PARTITION_OLDEST.set(self.oldest.timestamp())
        unheld = await (await conn.execute(_UNHELD)).fetchone()
        if unheld and unheld[0] is not None:
            metrics.PARTITION_UNHELD.set(unheld[0].timestamp())


def no_partition(exc: psycopg.Error) -> bool:
    """PostgreSQL found no partition for a row (SQLSTATE 23514, like a CHECK): an outage unless
    :meth:`Bounds.refusal` says the row is out of range, so never a reason to dead-letter."""
    return (exc.diag.message_primary or "").startswith("no partition of relation")
