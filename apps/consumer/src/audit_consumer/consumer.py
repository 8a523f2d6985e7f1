"""The consumer loop: fetch a batch from the durable, store it, then ack it.

Order of operations per batch, and why no acknowledged event is lost or doubled:

1. decode every message; one that is not a valid event is dead-lettered (below);
2. write the valid ones in one transaction and COMMIT (``writer.py``: rows already stored are
   skipped by the primary key); a row PostgreSQL rejects is isolated and dead-lettered, its
   neighbours are stored;
3. publish each dead letter to ``AUDIT_DLQ`` and wait for JetStream's ack (``Nats-Msg-Id`` =
   ``<stream>-<seq>``, so a redelivered poison message is dead-lettered once);
4. only then ack the batch. A crash anywhere before 4 means redelivery after ``ack_wait``,
   and the primary key makes the second write a no-op.

If PostgreSQL is unavailable the batch stays in hand, unacked: the loop stops fetching, backs
off with jitter, reconnects and retries the same rows, telling JetStream the messages are still
in progress so they are not handed to another worker meanwhile. Nothing is dead-lettered for an
outage, and the durable has no redelivery limit.
"""

import asyncio
import collections
import contextlib
import logging
import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from audit_consumer import metrics
from audit_consumer.puller import Puller
from audit_consumer.settings import Settings
from audit_consumer.writer import BatchWriter, WriteResult
from audit_events import InvalidEvent, decode, row, tracing

log = logging.getLogger("audit.consumer")

TRACER = trace.get_tracer("audit_consumer")
REASON_HEADER = "Audit-Dlq-Reason"
HEADER_LIMIT = 512


@dataclass
class Stats:
    """Counters the health endpoint reports and the tests read."""

    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0


@dataclass
class Batch:
    """One fetch, decoded: rows to store (``valid[i]`` carries ``rows[i]``) and dead letters."""

    msgs: list[Msg]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    valid: list[Msg] = field(default_factory=list)
    dead: list[tuple[Msg, str, str]] = field(default_factory=list)  # (msg, kind, reason)
    redelivered: int = 0  # valid ones JetStream delivered before (metric only)


class Consumer:
    """One worker on the shared durable. Any number of these run side by side."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.nc: NATS | None = None
        # One connection per batch PostgreSQL may be storing at once (AUDIT_DB_CONNECTIONS).
        self.writers: list[BatchWriter | None] = [None] * settings.db_connections
        self.db_ok = False
        self.last_progress = time.monotonic()
        self._prefetched: list[Msg] = []  # fetched ahead, waiting for the batch in hand
        self._waiting: list[Msg] = []  # decoded, waiting for the batch in PostgreSQL
        self._puller: Puller | None = None  # its buffer: delivered ahead of the next fetch
        self._stopping = asyncio.Event()
        metrics.DB_UP.set_function(lambda: float(self.db_ok))
        metrics.NATS_UP.set_function(lambda: float(self.nats_connected))

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return (SIGTERM/SIGINT)."""
        if not self._stopping.is_set():
            log.info("stopping: finishing the batch in hand")
        self._stopping.set()

    async def stop_requested(self) -> None:
        """Returns once :meth:`stop` was called."""
        await self._stopping.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def nats_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def run(self) -> None:
        """Connect (waiting for NATS as long as it takes), then consume until stopped."""
        self.nc = await self._connect_nats()
        if self.nc is None:
            return
        js = self.nc.jetstream()
        names = self.settings.names
        sub = Puller(self.nc, names.stream, names.durable)
        self._puller = sub
        await sub.start()
        log.info("consuming %s/%s", names.stream, names.durable)
        await self._connect_db()
        # Pipelining: PostgreSQL stores batches N-1 and N (one connection each) while this
        # loop decodes batch N+1 and NATS delivers N+2. Each batch is acked only after its own
        # commit, in whatever order the commits finish, so this changes throughput, not
        # guarantees.
        pending = asyncio.create_task(self._fetch(sub))
        storing: collections.deque[asyncio.Task[None]] = collections.deque()
        slot = 0
        lag = asyncio.create_task(self._poll_lag(js))
        try:
            while True:
                msgs = await pending
                self._prefetched = []
                if msgs is None:  # connection closed for good
                    break
                stop = self.stopping  # the batch in hand is finished, no new fetch starts
                if not stop:
                    pending = asyncio.create_task(self._fetch(sub))
                if msgs:
                    batch = self.prepare(msgs)
                    self._waiting = msgs
                    if len(storing) == len(self.writers):  # wait for the slot to be free
                        await storing.popleft()
                    self._waiting = []
                    storing.append(asyncio.create_task(self.store(js, batch, slot)))
                    slot = (slot + 1) % len(self.writers)
                elif self.writers[0] is None:  # idle: reconnect the DB if it was lost
                    await self._connect_db()
                if stop:
                    break
            while storing:
                await storing.popleft()
            await self._finish_in_flight(js, sub)
        finally:
            lag.cancel()
            for task in (pending, *storing):  # only when cancelled: unacked means redelivered
                if not task.done():
                    task.cancel()
            await self._close(sub)

    async def _poll_lag(self, js: JetStreamContext, every: float = 5.0) -> None:
        """Keep ``audit_consumer_lag_messages`` current: what KEDA sees, from any worker."""
        names = self.settings.names
        while True:
            try:
                info = await js.consumer_info(names.stream, names.durable)
                metrics.LAG.set(info.num_pending + info.num_ack_pending)
            except Exception as exc:
                log.debug("lag poll failed: %s", exc)
            await asyncio.sleep(every)

    async def _fetch(self, sub: Puller) -> list[Msg] | None:
        """One batch; ``[]`` when idle or NATS is away (the loop stays alive), ``None`` once
        the connection is closed."""
        self.last_progress = time.monotonic()
        try:
            msgs = await sub.fetch(self.settings.batch_size, self.settings.fetch_wait_seconds)
        except ConnectionClosedError:
            return None
        except Exception as exc:  # e.g. disconnected while NATS restarts
            log.warning("fetch failed: %s", exc)
            await self._sleep(1.0)
            return []
        self._prefetched = msgs
        return msgs

    async def _finish_in_flight(self, js: JetStreamContext, sub: Puller) -> None:
        """Store what the last pull request delivers after the loop's final fetch.

        A pull request stays open on the server until it expires, so messages can land in our
        inbox after we stopped fetching; left alone they would wait ``ack_wait`` for redelivery.
        """
        await self.handle(js, await sub.drain())

    async def _connect_nats(self) -> NATS | None:
        delay = 0.2
        while not self.stopping:
            try:
                return await nats.connect(
                    self.settings.nats_url,
                    name="audit-consumer",
                    max_reconnect_attempts=-1,  # reconnect forever
                    reconnect_time_wait=1,
                    connect_timeout=5,
                    error_cb=_log_nats_error,
                )
            except Exception as exc:
                log.warning("NATS not reachable (%s); retrying", exc)
                await self._sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_seconds)
        return None

    async def _connect_db(self) -> None:
        """Connect a writer now, so readiness is true before the first batch arrives."""
        try:
            self.writers[0] = await BatchWriter.connect(self.settings.consumer_database_url)
            self.db_ok = True
        except (psycopg.Error, OSError) as exc:
            self.db_ok = False
            log.warning("PostgreSQL not reachable: %s", _one_line(exc))

    async def _close(self, sub: Puller) -> None:
        """Stop the pull subscription, make sure every ack reached the server, disconnect.

        (``nc.drain()`` is not needed: every ack was published before this point.)"""
        if self.nc is not None and not self.nc.is_closed:
            try:
                await sub.stop()
                await self.nc.flush(timeout=5)  # PING/PONG: the server has every ack before it
            except Exception as exc:
                log.warning("could not flush acks (%s); unacked ones will be redelivered", exc)
            await self.nc.close()
        for slot, writer in enumerate(self.writers):
            if writer is not None:
                await writer.close()
                self.writers[slot] = None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one batch -----------------------------------------------------------------------

    async def handle(self, js: JetStreamContext, msgs: list[Msg]) -> None:
        """Store, dead-letter and ack one fetched batch (the order is the guarantee)."""
        if msgs:
            await self.store(js, self.prepare(msgs))

    def prepare(self, msgs: list[Msg]) -> Batch:
        """Decode a batch: rows for the valid events, a reason for each invalid one."""
        batch = Batch(msgs)
        for msg in msgs:
            try:
                event = decode(msg.data)
            except InvalidEvent as exc:
                batch.dead.append((msg, "invalid", exc.reason))
                continue
            stream_seq, delivered = _delivery(msg)
            batch.rows.append(row(event, stream_seq))
            batch.valid.append(msg)
            batch.redelivered += delivered > 1
        return batch

    async def store(self, js: JetStreamContext, batch: Batch, slot: int = 0) -> None:
        """Write the rows and COMMIT, dead-letter what cannot be stored, then ack everything."""
        msgs, valid, dead = batch.msgs, batch.valid, batch.dead
        metrics.BATCH_SIZE.observe(len(msgs))
        metrics.REDELIVERIES.inc(batch.redelivered)
        spans = _consume_spans(valid)
        try:
            with _batch_span(spans, len(msgs)):
                result = await self._write_until_stored(batch.rows, msgs, slot)
                if result is None:  # stopping while PostgreSQL is down: hand the batch back
                    for msg in msgs:
                        await msg.nak()
                    return
                # Committed: count now, before the acks make it visible to anyone watching.
                self.stats.stored += result.inserted
                self.stats.duplicates += result.duplicates
                metrics.MESSAGES.labels("stored").inc(result.inserted)
                metrics.MESSAGES.labels("duplicate").inc(result.duplicates)
                dead += [(valid[i], "rejected", reason) for i, reason in result.rejected]
                for msg, kind, reason in dead:
                    await self._dead_letter(js, msg, kind, reason)
                for msg in msgs:
                    await msg.ack()
        except Exception as exc:
            # Rows are committed but not acked: redelivery will find them already stored.
            log.warning("could not dead-letter/ack the batch (%s); it will be redelivered", exc)
            return
        finally:
            for span in spans:
                span.end()
        self.stats.batches += 1

    async def _write_until_stored(
        self, rows: list[tuple[Any, ...]], msgs: list[Msg], slot: int
    ) -> WriteResult | None:
        """Write ``rows``, retrying through any PostgreSQL outage. ``None`` if asked to stop."""
        if not rows:
            return WriteResult()
        delay = 0.1
        while True:
            try:
                writer = self.writers[slot]
                if writer is None:
                    writer = await BatchWriter.connect(self.settings.consumer_database_url)
                    self.writers[slot] = writer
                with metrics.WRITE_SECONDS.time():
                    result = await writer.write(rows)
                metrics.LAST_WRITE.set_to_current_time()
                if not self.db_ok:
                    log.info("PostgreSQL writes ok")
                self.db_ok = True
                return result
            except (psycopg.Error, OSError) as exc:
                self.db_ok = False
                log.warning("write failed, retrying in ~%.1fs: %s", delay, _one_line(exc))
                if (writer := self.writers[slot]) is not None:
                    self.writers[slot] = None
                    await writer.close()
            if self.stopping:
                return None
            self.last_progress = time.monotonic()  # waiting on PostgreSQL is not being stuck
            # Keep every message in hand ours while we wait (in_progress resets ack_wait).
            held = self._puller.buffered if self._puller is not None else []
            for msg in msgs + self._waiting + self._prefetched + held:
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("in_progress failed: %s", exc)
            await self._sleep(random.uniform(0, delay))  # full jitter
            delay = min(delay * 2, self.settings.backoff_max_seconds)

    async def _dead_letter(self, js: JetStreamContext, msg: Msg, kind: str, reason: str) -> None:
        """Publish the original bytes to the DLQ with why, and wait for JetStream's ack."""
        meta = msg.metadata
        headers = dict(msg.headers or {})
        headers.update(
            {
                REASON_HEADER: _header_safe(reason),
                "Audit-Dlq-Kind": kind,
                "Audit-Dlq-Subject": msg.subject,
                "Audit-Dlq-Stream-Seq": str(meta.sequence.stream),
                "Nats-Msg-Id": f"{meta.stream}-{meta.sequence.stream}",
            }
        )
        names = self.settings.names
        ack = await js.publish(
            names.dlq_subject(kind), msg.data, stream=names.dlq_stream, headers=headers
        )
        if not ack.duplicate:  # a redelivered poison message is dead-lettered (and counted) once
            self.stats.dead_lettered += 1
            metrics.MESSAGES.labels("dead_lettered").inc()
        log.warning("dead-lettered seq %s: %s", meta.sequence.stream, reason)


def _consume_spans(msgs: list[Msg]) -> list[Span]:
    """One CONSUMER span per message, child of the publish span its headers carry, so each
    event's trace runs from the HTTP request to its row (only when tracing is on)."""
    if not tracing.enabled():
        return []
    return [
        TRACER.start_span(
            "consume audit event",
            context=tracing.extract(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.message.id": (msg.headers or {}).get("Nats-Msg-Id", ""),
                "messaging.nats.stream_sequence": msg.metadata.sequence.stream,
            },
        )
        for msg in msgs
    ]


def _batch_span(spans: list[Span], size: int) -> AbstractContextManager[Span]:
    """The batch write: a child of the first message's span, linked to all the others (a span
    has one parent; links keep every event's trace one click from its INSERT)."""
    parent = trace.set_span_in_context(spans[0]) if spans else None
    links = [Link(s.get_span_context()) for s in spans[1:]]
    return TRACER.start_as_current_span(
        "store audit batch", context=parent, links=links,
        attributes={"messaging.batch.message_count": size},
    )  # fmt: skip


def _delivery(msg: Msg) -> tuple[int, int]:
    """(stream sequence, times delivered), read from the ack subject without building nats-py's
    full ``Msg.metadata`` (a datetime and three objects per message, 6 % of the consumer's CPU).
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


def _header_safe(text: str) -> str:
    return " ".join(text.split())[:HEADER_LIMIT]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


async def _log_nats_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc)
