"""Completeness accounting: which incarnation of the stream a broker sequence number belongs to.

JetStream numbers every event it acknowledges (``stream_seq``). A stream that is deleted and
created again starts at 1, and nothing in a message says which incarnation it came from, so each
incarnation of the durable gets an *epoch* in ``audit_epochs``, keyed by the durable's creation
time (deleting the stream deletes its durable; ``audit-setup`` creates both). Rows, dead-letter
and duplicate records carry their epoch; every seal carries the ack floor the sealing consumer
last read (``seals.Floor``). ``audit-verify`` then checks that every sequence from the epoch's
``first_seq`` up to the floor is a row, a dead-letter record or a duplicate record — a trigger
that dropped rows, a fresh row deleted, a purge of unstored events: each leaves sequences the
broker acknowledged and nothing accounts for, and each is named.

``first_seq`` is the durable's ack floor + 1 when the epoch was registered: 1 for a stream made
by this version's ``audit-setup``; for an installation upgraded to it, accounting starts there.
"""

from dataclasses import dataclass
from datetime import datetime

import psycopg
from nats.js.api import ConsumerInfo

from audit_events.naming import StreamNames

_REGISTER = (
    "INSERT INTO audit_epochs (stream, durable, durable_created, first_seq)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (stream, durable, durable_created) DO NOTHING"
)
_FIND = (
    "SELECT epoch, first_seq FROM audit_epochs"
    " WHERE stream = %s AND durable = %s AND durable_created = %s"
)


@dataclass(frozen=True)
class Epoch:
    """An incarnation of the durable, as registered."""

    id: int
    first_seq: int
    created: datetime  # the durable's creation time: what identifies it


def ack_floor(info: ConsumerInfo) -> int:
    """The highest stream sequence at and below which the durable acknowledged everything."""
    return (info.ack_floor.stream_seq or 0) if info.ack_floor else 0


async def register_epoch(url: str, names: StreamNames, info: ConsumerInfo) -> Epoch:
    """The epoch of the durable ``info`` describes, registered if it is new (idempotent: every
    consumer and ``audit-setup`` may call it)."""
    key = (names.stream, names.durable, info.created)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as c:
        await c.execute(_REGISTER, (*key, ack_floor(info) + 1))
        found = await (await c.execute(_FIND, key)).fetchone()
    assert found is not None  # inserted, or there already
    return Epoch(found[0], found[1], info.created)
