"""Trim ``AUDIT`` below the durable's ack floor: what a work queue removes one tombstone at a
time, removed by one purge.

A work queue removes each acked message on its own, and under ``sync_interval: always`` each
removal is a synced write: NATS's CPU per event, and so the drain rate, is several times what
one purge per second costs (the figures: ``docs/performance.md``, "The trimmed stream").

Why nothing unstored is removed: the ack floor is the stream sequence at and below which every
message of the durable was acked, and a message is acked only after its row is committed (or its
dead letter stored). The floor never moves back, so a stale reading only trims less; several
consumers trimming at once purge the same prefix again, which changes nothing. A message above
the floor, acked or not, stays until the floor passes it.
"""

import logging

from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext
from nats.js.errors import ServerError

from audit_consumer import metrics

log = logging.getLogger("audit.consumer")

PURGE_NOT_PERMITTED = 10110  # the stream denies purges: a work queue of an earlier version


class Trimmer:
    """Purges ``stream`` below the floor of each :class:`ConsumerInfo` it is given."""

    def __init__(self, js: JetStreamContext, stream: str) -> None:
        self.js, self.stream = js, stream
        self.below = 1  # everything below this sequence is known to be gone
        self._said: set[str] = set()  # each kind of failure is logged once, not every second

    async def trim(self, info: ConsumerInfo) -> None:
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if floor is None or floor + 1 <= self.below:
            return
        ok = False
        try:
            await self.js.purge_stream(self.stream, seq=floor + 1)
            self.below, ok = floor + 1, True
        except ServerError as exc:
            if ok := exc.err_code == PURGE_NOT_PERMITTED:
                self._once("work queue", "%s is a work queue: its acks remove events", logging.INFO)
            else:
                self._once(str(exc.err_code), f"could not trim %s: {exc.description}")
        except Exception as exc:  # e.g. a NATS without this identity's purge permission
            self._once(type(exc).__name__, f"could not trim %s ({exc!r}); retrying each second")
        metrics.TRIM_OK.set(ok)

    def _once(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        if kind not in self._said:
            self._said.add(kind)
            log.log(level, message, self.stream)
