"""Batch pulls from the durable, delivered to a subscription callback.

nats-py's ``PullSubscription.fetch()`` awaits every message separately (a task and a timeout
each), which costs more than everything else the consumer does per event. Here one pull request
is open at a time, its messages land in a buffer from the subscription's callback, and
:meth:`Puller.fetch` returns as soon as the batch is full, the request ended, or — after the
first message — no other arrived for ``linger`` seconds (low latency at low traffic).
Nothing about acking changes: the caller acks each message after its commit.

:attr:`Puller.held` is every message delivered to this worker and not yet settled (acked or
nak'ed) by the caller, wherever it is: in the buffer, decoded, waiting for a connection, or
being written. During a PostgreSQL outage the consumer keeps all of them its own with
``in_progress``, so none is redelivered to another worker meanwhile.
"""

import asyncio
import json
import time
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class Source(Protocol):
    """What the loop needs of its pull subscription (:class:`Puller`; fakes in unit tests)."""

    held: dict[str, Msg]

    async def fetch(self, batch: int, wait: float) -> list[Msg]: ...
    async def drain(self) -> list[Msg]: ...
    def release(self, msgs: list[Msg]) -> None: ...


HEARTBEAT = "100"  # other statuses (404 no messages, 408 expired, 409 limits) end a request


class Puller:
    """One worker's pull requests on ``stream``/``durable``."""

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._buffer: list[Msg] = []
        self._open = 0  # messages the open request may still deliver
        self._deadline = 0.0  # when the open request expires, by our clock
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None
        self.held: dict[str, Msg] = {}  # by reply subject (one per delivery), until released

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    @property
    def request_open(self) -> bool:
        """A pull request may still deliver (it can outlive a NATS restart only until expiry)."""
        return self._open > 0 and time.monotonic() < self._deadline

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._buffer.append(msg)
            self.held[msg.reply] = msg
            self._open -= 1
        elif status != HEARTBEAT:
            self._open = 0
        self._arrived.set()

    async def _wait(self, seconds: float) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), max(seconds, 0.0))
        except TimeoutError:
            return False
        return True

    async def fetch(self, batch: int, wait: float, linger: float = 0.002) -> list[Msg]:
        """Up to ``batch`` messages; ``[]`` if none arrived within ``wait`` seconds.

        When a full batch is returned, the next pull request is already sent, so the broker
        delivers batch N+1 while the caller stores batch N (see :attr:`buffered`)."""
        if not self._buffer and not self.request_open:
            await self._request(batch, wait)
        while not self._buffer and self.request_open:
            await self._wait(self._deadline - time.monotonic())
        while self._buffer and len(self._buffer) < batch and self.request_open:
            if not await self._wait(linger):
                break
        taken, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if len(taken) == batch and len(self._buffer) < batch and not self.request_open:
            await self._request(batch, wait)  # busy: ask for the next batch right away
        return taken

    async def _request(self, batch: int, wait: float) -> None:
        self._open, self._deadline = batch, time.monotonic() + wait
        request = {"batch": batch, "expires": int(wait * 1e9)}
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self.inbox)

    def release(self, msgs: list[Msg]) -> None:
        """The caller settled ``msgs`` (acked, nak'ed, or gave up on them): no longer held."""
        for msg in msgs:
            self.held.pop(msg.reply, None)

    async def drain(self) -> list[Msg]:
        """After the last fetch: wait for the open request to end, return what it delivered."""
        while self.request_open:
            await self._wait(self._deadline - time.monotonic())
        taken, self._buffer = self._buffer, []
        return taken


def delivery(msg: Msg) -> tuple[int, int]:
    """(stream sequence, times delivered), read from the ack subject without building nats-py's
    full ``Msg.metadata`` (a datetime and three objects per message, on the hottest path).
    Subject layouts (ADR-15): ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.…`` (9 tokens),
    or with ``<domain>.<account hash>`` after ``$JS.ACK`` (11 or more)."""
    tokens = (msg.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[4])
        if len(tokens) >= 11:
            return int(tokens[7]), int(tokens[6])
    meta = msg.metadata  # raises for anything else, as it would have before
    return meta.sequence.stream, meta.num_delivered
